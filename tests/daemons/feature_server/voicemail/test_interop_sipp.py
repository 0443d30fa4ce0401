"""SIPp plays the RFC 4733 DTMF pcaps Debian's sip-tester ships into a
retrieval call: every key is detected exactly once, in order."""

from __future__ import annotations

import asyncio
import glob
import os
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.daemons.feature_server.voicemail.conftest import Factory

HERE = Path(__file__).parent


def pcap_dir() -> str:
    for pattern in ("/usr/share/sip-tester", "/usr/share/doc/sip-tester*",
                    "/usr/share/sipp*", "/usr/local/share/sipp*"):
        for directory in glob.glob(pattern):
            if os.path.exists(os.path.join(directory, "dtmf_2833_pound.pcap")):
                return directory
    pytest.skip("the dtmf_2833_*.pcap files of sip-tester are not installed")


async def test_sipp_dtmf_pcaps_each_digit_once(make_voicemail: Factory, tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    scenario = tmp_path / "dtmf_2833.xml"
    scenario.write_text((HERE / "sipp" / "dtmf_2833.xml").read_text().replace(
        "PCAP_DIR", pcap_dir()))
    vm = await make_voicemail()
    proc = await asyncio.create_subprocess_exec(
        sipp, "-sf", str(scenario), "-s", "1002", "-i", "127.0.110.50", "-p", "0",
        "-mi", "127.0.110.50", "-mp", "36600", "-m", "1", "-timeout", "20s",
        "-timeout_error", "-trace_err", "-error_file", str(tmp_path / "err.log"),
        f"{vm.destination.host}:{vm.destination.port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    seen: list[str] = []
    attempts: list[int] = []
    while proc.returncode is None:
        for call in vm.service.ua.calls.values():
            if not seen or call.menu.entered != seen[-1]:
                seen.append(call.menu.entered)
            attempts.append(call.menu.attempts)
        try:
            await asyncio.wait_for(proc.wait(), 0.05)
        except TimeoutError:
            pass
    _, err = await proc.communicate()
    errors = (tmp_path / "err.log").read_text() if (tmp_path / "err.log").exists() else ""
    assert proc.returncode == 0, err.decode() + errors
    # the PIN buffer grew one key at a time through every key, none twice
    assert "0123456789*" in seen
    assert [s for s in seen if s] == ["0123456789*"[:n] for n in range(1, 12)]
    assert attempts[-1] == 2                         # '#' checked the (wrong) PIN once
    assert vm.service.digit_counter.labels("rfc4733").value == 12
    assert vm.service.rtp_dropped.labels("unexpected_source").value == 0
