"""A SIP stack written by others calling our responder over TLS (RFC 3261 §26.2, RFC 5630).

SIPp 3.6.1 as packaged by Debian is built without OpenSSL (``sipp -t l1``
exits with "To use a TLS transport you must compile SIPp with OpenSSL"), and
sipsak 0.9.8.1 mangles 5-digit ports in its Request-URI, so the TLS peer here
is baresip 1.0 (libre's OpenSSL transport): INVITE, ACK and BYE over one TLS
connection to ``sipcluster sip responder --tls-listen``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import trustme

pytestmark = pytest.mark.interop

BARESIP_MODULES = Path("/usr/lib/baresip/modules")


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate for 127.0.0.1, its key) as PEM files."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    ca.cert_pem.write_to_path(str(paths[0]))
    leaf.cert_chain_pems[0].write_to_path(str(paths[1]))
    leaf.private_key_pem.write_to_path(str(paths[2]))
    return paths


@pytest.mark.timeout(40)
def test_baresip_call_over_tls(responder: Any, free_port: Any, require_tool: Any,
                               pki: tuple[Path, Path, Path], tmp_path: Path) -> None:
    baresip = require_tool("baresip")
    ca, cert, key = pki
    tls_port = free_port("127.0.0.1")
    r = responder("--tls-listen", f"127.0.0.1:{tls_port}", "--cert", str(cert),
                  "--key", str(key))
    home = tmp_path / "baresip"
    home.mkdir()
    (home / "config").write_text(f"""\
poll_method		epoll
sip_listen		127.0.0.1:0
sip_cafile		{ca}
audio_player		aubridge,tls-play
audio_source		aubridge,tls-src
audio_alert		aubridge,tls-alert
rtp_ports		20000-29999
net_interface		127.0.0.1
module_path		{BARESIP_MODULES}
module			g711.so
module			aubridge.so
module_app		account.so
module_app		menu.so
""")
    (home / "accounts").write_text("<sip:tls-caller@127.0.0.1>;regint=0\n")
    # baresip 1.0 does not complete "sips:" URIs; ;transport=tls selects TLS
    uri = f"sip:1001@127.0.0.1:{tls_port};transport=tls"
    # -e types the command at start-up; -t 2 hangs up (BYE) and quits after 2 s
    done = subprocess.run([baresip, "-f", str(home), "-e", f"/dial {uri}", "-t", "2"],
                          cwd=home, capture_output=True, text=True, timeout=25)
    output = done.stdout + done.stderr
    assert "Call established" in output, output[-3000:]
    received = [e for e in r.log_events() if e.get("event") == "sip_request_received"]
    assert [e["method"] for e in received] == ["INVITE", "ACK", "BYE"], output[-2000:]
    assert {e["transport"] for e in received} == {"TLS"}
    assert len({e["peer"] for e in received}) == 1  # one connection for the call
    ended = [e for e in r.log_events() if e.get("event") == "sip_call_ended"]
    assert [e["outcome"] for e in ended] == ["completed"]
