"""Our UAC (``sipcluster sip call`` on SipEndpoint) against SIPp's UAS
(the built-in ``uas`` scenario without its final timewait)."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import START_TIMEOUT

pytestmark = pytest.mark.interop

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def listening(host: str, port: int, transport: str) -> bool:
    """Whether a socket listens on ``host:port`` over TCP, or is bound there over UDP
    (read from /proc: no packet is sent, which SIPp would take for a call's). Other
    suites' daemons listen on the same port numbers at other loopback addresses, so
    the address counts too."""
    wanted = f"{socket.htonl(int(ipaddress.IPv4Address(host))):08X}:{port:04X}"
    table = Path("/proc/net/tcp" if transport == "tcp" else "/proc/net/udp")
    state = "0A" if transport == "tcp" else "07"  # LISTEN; a bound UDP socket is CLOSE
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == state and fields[1] in (wanted, f"00000000:{port:04X}"):
            return True
    return False


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_call_to_sipp_uas(sipp: str, free_port: Any, tmp_path: Path, repo_root: Path,
                          transport: str) -> None:
    port = free_port("127.0.0.1")
    stat = tmp_path / "stat.csv"
    mode = "u1" if transport == "udp" else "t1"
    uas = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "uas_answer.xml"), "-i", "127.0.0.1", "-p", str(port),
         "-t", mode, "-m", "1",
         "-nostdin", "-timeout", "15s", "-timeout_error", "-trace_err",
         "-error_file", str(tmp_path / "errors.log"), "-trace_stat", "-stf", str(stat)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Dial only once SIPp listens: under a loaded CI host SIPp's start can take
        # longer than the INVITE's retransmissions last (Timer B, 32 s).
        deadline = time.monotonic() + START_TIMEOUT
        while not (ready := listening("127.0.0.1", port, transport)) \
                and uas.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not ready:
            uas.kill()
            _, sipp_err = uas.communicate()
            pytest.fail(f"SIPp did not listen on {transport} port {port} in {START_TIMEOUT:.0f} s "
                        f"(exit {uas.returncode}): {sipp_err}")
        uri = f"sip:service@127.0.0.1:{port};transport={transport}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemons.cli", "sip", "call", uri, "--duration", "0.3",
             "--log-level", "debug"],
            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            # Timer B (32 s) ends an unanswered INVITE by itself; this only guards a hang
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            uas.kill()
            _, sipp_err = uas.communicate()
            pytest.fail(f"the call did not end within 60 s:\n{out}{err[-6000:]}\n"
                        f"SIPp exit {uas.returncode}: {sipp_err}")
        call = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        code = uas.wait(timeout=15)
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait()
    sipp_err = uas.stderr.read() if uas.stderr else ""
    assert call.returncode == 0, (call.stdout + call.stderr
                                  + f"\nSIPp exit {uas.returncode}: {sipp_err}")
    assert call.stdout.splitlines()[-1] == "BYE: 200 OK"
    assert "200 OK" in call.stdout.splitlines()
    errors = (tmp_path / "errors.log").read_text() if (tmp_path / "errors.log").exists() else ""
    assert code == 0, errors
    row = stat.read_text().splitlines()[-1].split(";")
    header = stat.read_text().splitlines()[0].split(";")
    stats = dict(zip(header, row, strict=False))
    assert (stats["SuccessfulCall(C)"], stats["FailedCall(C)"]) == ("1", "0")
