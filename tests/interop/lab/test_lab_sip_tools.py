"""The operators' SIP tools find the lab's proxies by name, through the lab's
geo-aware DNS, as the README shows: ``sipcluster sip options
sip:spx-srv.<domain> --dns HOST:PORT``, ``--lab`` or the ``lab-run/lab.json``
of the current directory; the tool's own address (``--bind``) picks the data
centre whose proxies answer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

LAB_SUBNETS = {"127.0.1.": "127.0.51.", "127.0.2.": "127.0.52."}
# fewer daemons to start: the tools need the proxies and one node per data centre
LAB_DROP = ("SIPS_dc1_2", "TC_dc1_2", "SIPS_dc2_2", "TC_dc2_2")

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]
#: the tool's debug log line with the RFC 3263 targets, in the order it tries them
_TARGETS = re.compile(r"sip_targets\b.*\btargets=\['(?:UDP|TCP):([^']+)'")


def sip_options(lab: Any, *args: str, cwd: Path = ROOT) -> tuple[str, str]:
    """Run ``sipcluster sip options sip:spx-srv.<domain> ARGS``; its status line and
    the proxy that answered (the first target of its debug log, no fail-over)."""
    result = subprocess.run(
        [sys.executable, "-m", "daemons.cli", "sip", "options", f"sip:{lab.srv_fqdn}",
         "--log-level", "debug", *args],
        # this checkout's code, whatever directory the tool runs in
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    status = result.stdout.splitlines()[0]
    first = _TARGETS.findall(output)
    assert len(first) == 1 and "sip_target_failover" not in output, output
    return status, first[0]


def proxy_addresses(lab: Any, geo: str) -> set[str]:
    return {f"{p['host']}:{p['sip_port']}" for p in lab.proxies(geo)}


def test_options_by_name_through_the_lab_dns(lab: Any) -> None:
    """``--dns`` names the lab's DNS server: the NAPTR/SRV records of the SRV
    FQDN lead to a proxy, which answers 200. From 127.0.0.1 (in no data centre)
    the DNS gives its default view, DC1's."""
    dns = f"{lab.dns[0]}:{lab.dns[1]}"
    status, peer = sip_options(lab, "--dns", dns)
    assert status.startswith("200 OK"), status
    assert peer in proxy_addresses(lab, "dc1")


def test_bound_in_dc2_the_dc2_proxies_answer(lab: Any) -> None:
    """The tool's DNS queries leave from ``--bind``: bound in DC2 it gets DC2's
    view (DC2's proxies at the better SRV priority), whichever server it asks."""
    dns = f"{lab.dns[0]}:{lab.dns[1]}"
    status, peer = sip_options(lab, "--dns", dns, "--bind", lab.prefix("dc2") + "150")
    assert status.startswith("200 OK"), status
    assert peer in proxy_addresses(lab, "dc2")


def test_lab_json_gives_the_dns_server(lab: Any, tmp_path: Path) -> None:
    """Without ``--dns``: ``--lab DIR/lab.json``, and by default ``lab-run/lab.json``
    in the directory the tool runs in (where ``sipcluster lab start`` put it)."""
    status, peer = sip_options(lab, "--lab", str(lab.directory / "lab.json"))
    assert status.startswith("200 OK"), status
    assert peer in proxy_addresses(lab, "dc1")

    (tmp_path / "lab-run").symlink_to(lab.directory, target_is_directory=True)
    status, peer = sip_options(lab, "--transport", "udp", cwd=tmp_path)
    assert status.startswith("200 OK"), status
    assert peer in proxy_addresses(lab, "dc1")


def test_call_by_name_rings_1002_once_registered(
    lab: Any, baresip_phone: Callable[..., Any]
) -> None:
    """The README's ``sip call sip:1002@<domain> --dns ... --user 1001``: 480
    while no phone is registered as 1002; with one (answering by itself) the
    call is answered and hung up."""
    dns = f"{lab.dns[0]}:{lab.dns[1]}"
    argv = [sys.executable, "-m", "daemons.cli", "sip", "call", f"sip:1002@{lab.domain}",
            "--dns", dns, "--user", "1001", "--password", lab.password("1001"),
            "--duration", "0.5"]
    before = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert before.returncode == 1, before
    assert before.stdout.splitlines() == ["480 Temporarily Unavailable"], before

    baresip_phone("1002", "dc1")
    after = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert after.returncode == 0, after
    assert after.stdout.splitlines()[-2:] == ["200 OK", "BYE: 200 OK"], after
