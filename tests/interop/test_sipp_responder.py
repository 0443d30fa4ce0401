"""SIPp (a UAC written by others) against our responder: OPTIONS, REGISTER with
digest, INVITE/ACK/BYE, CANCEL, and retransmissions under packet loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.interop

TRANSPORTS = [pytest.param("u1", id="udp"), pytest.param("t1", id="tcp")]


@pytest.fixture
def run(sipp: str, sipp_run: Any, tmp_path: Path) -> Any:
    def go(responder: Any, scenario: Path, mode: str, *extra: str, timeout: float = 15.0) -> Any:
        args = [f"127.0.0.1:{responder.port}", "-sf", str(scenario), "-t", mode,
                "-i", "127.0.0.1", "-p", "0", *extra]
        return sipp_run(sipp, args, tmp_path / scenario.stem, timeout=timeout)

    return go


@pytest.mark.parametrize("mode", TRANSPORTS)
def test_options(run: Any, responder: Any, scenarios: Path, mode: str) -> None:
    r = responder("--tcp")
    result = run(r, scenarios / "options.xml", mode, "-m", "3")
    assert result.returncode == 0, result.errors + result.output
    assert (result.successful, result.failed) == (3, 0)


@pytest.mark.parametrize("mode", TRANSPORTS)
def test_register_with_digest(run: Any, responder: Any, scenarios: Path,
                              mode: str) -> None:
    # SIPp 3.6 computes MD5 digests only, so the responder offers MD5.
    r = responder("--tcp", "--user", "1001:s3cret", "--auth-algorithms", "MD5")
    result = run(r, scenarios / "register_auth.xml", mode,
                   "-s", "1001", "-au", "1001", "-ap", "s3cret", "-m", "2")
    assert result.returncode == 0, result.errors + result.output
    assert (result.successful, result.failed) == (2, 0)
    registered = [e for e in r.log_events() if e.get("event") == "sip_registered"]
    assert len(registered) == 2 and registered[0]["aor"] == "1001@127.0.0.1"


@pytest.mark.parametrize("user,password", [("1001", "wrong"), ("9999", "s3cret")],
                         ids=["bad-password", "unknown-user"])
def test_register_refused_alike(run: Any, responder: Any, scenarios: Path,
                                user: str, password: str) -> None:
    r = responder("--user", "1001:s3cret", "--auth-algorithms", "MD5")
    result = run(r, scenarios / "register_bad_password.xml", "u1",
                   "-s", user, "-au", user, "-ap", password, "-m", "1")
    assert result.returncode == 0, result.errors + result.output
    assert result.successful == 1
    assert not [e for e in r.log_events() if e.get("event") == "sip_registered"]


@pytest.mark.parametrize("mode", TRANSPORTS)
def test_invite_ack_bye(run: Any, responder: Any, scenarios: Path,
                        mode: str) -> None:
    r = responder("--tcp")
    result = run(r, scenarios / "invite_bye.xml", mode,
                   "-m", "5", "-r", "10", "-l", "5")
    assert result.returncode == 0, result.errors + result.output
    assert (result.successful, result.failed) == (5, 0)
    ended = [e for e in r.log_events() if e.get("event") == "sip_call_ended"]
    assert [e["outcome"] for e in ended] == ["completed"] * 5


@pytest.mark.parametrize("mode", TRANSPORTS)
def test_cancel(run: Any, responder: Any, scenarios: Path, mode: str) -> None:
    r = responder("--tcp", "--answer-after", "30")
    result = run(r, scenarios / "cancel.xml", mode, "-m", "3", "-r", "10")
    assert result.returncode == 0, result.errors + result.output
    assert (result.successful, result.failed) == (3, 0)
    ended = [e for e in r.log_events() if e.get("event") == "sip_call_ended"]
    assert [e["outcome"] for e in ended] == ["cancelled"] * 3


def test_retransmissions_with_packet_loss(run: Any, responder: Any, scenarios: Path) -> None:
    """10 % of SIPp's packets are lost both ways; timers A/E/G and 2xx resends recover."""
    r = responder()
    result = run(r, scenarios / "invite_bye.xml", "u1",
                 "-m", "20", "-r", "20", "-l", "10", "-lost", "10", timeout=18)
    assert result.returncode == 0, result.errors + result.output
    assert (result.successful, result.failed) == (20, 0)
