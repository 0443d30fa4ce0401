"""tshark decodes what our stack sends: no malformed packets, no expert errors,
and every message of a call (both directions, UDP and TCP) is seen as SIP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import START_TIMEOUT

pytestmark = pytest.mark.interop


def _capture(tshark: str, port: int, pcap: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [tshark, "-i", "lo", "-f", f"udp port {port} or tcp port {port}", "-w", str(pcap),
         "-a", "duration:60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "Capturing on" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"tshark could not capture on lo: {seen.strip()}")


def test_our_messages_decode_cleanly(require_tool: Any, responder: Any, sipp_run: Any,
                                     scenarios: Path, tmp_path: Path, repo_root: Path) -> None:
    tshark = require_tool("tshark")
    sipp = require_tool("sipp")
    r = responder("--tcp", "--user", "1001:s3cret", "--auth-algorithms", "MD5")
    pcap = tmp_path / "sip.pcap"
    capture = _capture(tshark, r.port, pcap)
    try:
        for scenario, mode, extra in [
            ("invite_bye.xml", "u1", ["-m", "2"]),
            ("invite_bye.xml", "t1", ["-m", "2"]),
            ("register_auth.xml", "u1", ["-s", "1001", "-au", "1001", "-ap", "s3cret", "-m", "1"]),
        ]:
            args = [f"127.0.0.1:{r.port}", "-sf", str(scenarios / scenario), "-t", mode,
                    "-i", "127.0.0.1", "-p", "0", *extra]
            result = sipp_run(sipp, args, tmp_path / f"{scenario}-{mode}", timeout=10)
            assert result.returncode == 0, result.errors
        # our own UAC over TCP: requests built by the endpoint, not by SIPp
        uac = subprocess.run(
            [sys.executable, "-m", "daemons.cli", "sip", "options",
             f"sip:1001@127.0.0.1:{r.port};transport=tcp"],
            cwd=repo_root, capture_output=True, text=True, timeout=20)
        assert uac.returncode == 0, uac.stdout + uac.stderr
        time.sleep(0.5)  # let the last packets reach the capture
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=10)
    decode = ["-d", f"udp.port=={r.port},sip", "-d", f"tcp.port=={r.port},sip"]
    bad = subprocess.run(
        [tshark, "-r", str(pcap), *decode, "-Y", "_ws.malformed || _ws.expert.severity == error"],
        capture_output=True, text=True, timeout=30)
    assert bad.returncode == 0, bad.stderr
    assert bad.stdout.strip() == ""
    fields = subprocess.run(
        [tshark, "-r", str(pcap), *decode, "-Y", f"sip && ip.src == 127.0.0.1 && "
         f"(udp.srcport == {r.port} || tcp.srcport == {r.port} || tcp.dstport == {r.port})",
         "-T", "fields", "-e", "frame.protocols", "-e", "sip.Status-Line",
         "-e", "sip.Request-Line", "-e", "sip.CSeq.method"],
        capture_output=True, text=True, timeout=30)
    assert fields.returncode == 0, fields.stderr
    rows = [line.split("\t") for line in fields.stdout.splitlines()]
    ours = [(proto, status) for proto, status, _, _ in rows if status]
    status_lines = {status for _, status in ours}
    assert {"SIP/2.0 180 Ringing", "SIP/2.0 200 OK", "SIP/2.0 401 Unauthorized"} <= status_lines
    assert any(":udp:sip" in proto for proto, _ in ours)
    assert any(":tcp:sip" in proto for proto, _ in ours)
    requests = [request for _, _, request, _ in rows if request]
    assert any(line.startswith("OPTIONS sip:1001@127.0.0.1") for line in requests)
