"""What the lab tells people and scripts: lab.json and the lines ``lab start``
and ``lab status`` print carry every listener, the geo DNS daemon's HTTP port
included, and name the applications of the cluster file the lab leaves out
because this build has no command for their kind.

The lab here runs on 127.0.78.x (dc1) and 127.0.79.x (dc2), clear of the
default lab's addresses and of the other tests' labs."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemons.cli import command_names
from daemons.cluster.config import AppKind, load_cluster
from daemons.lab.topology import LAB_DNS_HTTP_PORT, LAB_DNS_PORT, lab_description

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "etc" / "cluster.toml"
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
DC1, DC2 = "127.0.78.", "127.0.79."


def _lab(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIPCLUSTER, "lab", *args, "--dir", str(directory)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def _moved_cluster(path: Path) -> Path:
    path.write_text(EXAMPLE.read_text().replace("127.0.1.", DC1).replace("127.0.2.", DC2))
    return path


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        return resp.status, resp.read().decode()


def test_lab_json_gives_the_dns_http_port(tmp_path: Path) -> None:
    cfg = load_cluster(_moved_cluster(tmp_path / "cluster.toml"))
    desc = lab_description(cfg, running=set(), dns=(f"{DC1}53", LAB_DNS_PORT))
    assert desc["dns"] == {"host": f"{DC1}53", "port": LAB_DNS_PORT,
                           "http_port": LAB_DNS_HTTP_PORT}
    assert lab_description(cfg, running=set(), dns=None)["dns"] is None


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A running lab and what ``lab start`` printed."""
    tmp = tmp_path_factory.mktemp("lab-guide")
    directory = tmp / "run"
    result = _lab(directory, "start", "--config", str(_moved_cluster(tmp / "cluster.toml")))
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield directory, result.stdout
    finally:
        _lab(directory, "stop")


def test_dns_http_listener_in_lab_json_and_in_the_guide(started: tuple[Path, str]) -> None:
    directory, printed = started
    dns = json.loads((directory / "lab.json").read_text())["dns"]
    assert dns == {"host": f"{DC1}53", "port": LAB_DNS_PORT, "http_port": LAB_DNS_HTTP_PORT}
    # the address lab.json gives is the geo DNS daemon's management listener
    status, body = _get(f"http://{dns['host']}:{dns['http_port']}/healthz")
    assert status == 200 and json.loads(body)["application"] == "GeoDNS"
    status, body = _get(f"http://{dns['host']}:{dns['http_port']}/status/views")
    assert status == 200 and {v["name"] for v in json.loads(body)} >= {"dc1", "dc2"}
    assert (f"  geo DNS GeoDNS  DNS {DC1}53:{LAB_DNS_PORT}  HTTP {DC1}53:{LAB_DNS_HTTP_PORT}"
            in printed.splitlines()), printed


def test_applications_left_out_are_named(started: tuple[Path, str]) -> None:
    """Feature-servers are in the cluster file; while this build has no
    `sipcluster feature-server`, start and status say so, and status does not
    count them as unhealthy."""
    directory, printed = started
    cfg = load_cluster(directory / "cluster.toml")
    built = command_names()
    status = _lab(directory, "status")
    assert status.returncode == 0, status.stdout
    lines = status.stdout.splitlines()
    for app in cfg.applications.values():
        if app.kind.value in built:
            assert f"{app.name:<16} healthy" in lines, app.name
        else:
            reason = f"not started: this build has no `sipcluster {app.kind.value}`"
            assert f"{app.name:<16} {reason}" in lines, status.stdout
            assert f"  {app.name} ({app.kind.value}) {reason}" in printed.splitlines(), printed
    assert any(a.kind is AppKind.FEATURE_SERVER for a in cfg.applications.values())


def test_tls_port_and_ca_in_lab_json_and_in_the_guide(started: tuple[Path, str]) -> None:
    """Every proxy listens for SIP over TLS on its sip-tls-port with a certificate
    from the lab CA for the names a phone dials (the SIP domain, the SRV FQDN, the
    proxy's zone name and address); lab.json and the printed guide give the port
    and the CA file, and a TLS client that trusts only that CA is served."""
    directory, printed = started
    desc = json.loads((directory / "lab.json").read_text())
    ca = desc["certificates"]["ca"]
    assert Path(ca).is_file() and Path(ca).parent == directory / "certs"
    assert f"trusting the lab CA {ca} (baresip: sip_cafile; linphonec: root_ca)" in printed
    assert "outbound proxy sip:spx-srv.cluster.lab;transport=tls" in printed
    for geo, centre in desc["data_centres"].items():
        for i, proxy in enumerate(centre["proxies"], start=1):
            assert proxy["tls_port"] == 5061
            line = (f"    proxy {proxy['name']:<12} SIP {proxy['host']}:{proxy['sip_port']}"
                    f"  TLS {proxy['host']}:5061")
            assert line in printed.splitlines(), printed
            names = desc["certificates"]["proxies"][proxy["name"]]["names"]
            assert names == ["cluster.lab", "spx-srv.cluster.lab",
                             f"spx{i}-{geo}.cluster.lab", proxy["host"]]
            for name in names:  # RFC 5922 §7.2: the name the phone dialled
                context = ssl.create_default_context(cafile=ca)
                with socket.create_connection((proxy["host"], 5061), timeout=5) as raw, \
                        context.wrap_socket(raw, server_hostname=name) as tls:
                    tls.sendall(b"OPTIONS sip:cluster.lab SIP/2.0\r\n"
                                b"Via: SIP/2.0/TLS 127.0.78.200:5061;branch=z9hG4bKlabtls\r\n"
                                b"Max-Forwards: 70\r\nFrom: <sip:t@cluster.lab>;tag=1\r\n"
                                b"To: <sip:cluster.lab>\r\nCall-ID: lab-tls@test\r\n"
                                b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
                    assert tls.recv(4096).startswith(b"SIP/2.0 200 "), name
