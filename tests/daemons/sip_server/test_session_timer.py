"""Session timers (RFC 4028) through the node (docs/node.md, "Session timers"),
on the wire with SIPp on both sides: 422 with Min-SE for a Session-Expires
below sip-min-se; the caller's 2xx names the interval and the caller as
refresher with Require: timer; the node asks the callee for its own interval;
a refresh re-INVITE is answered with the session renewed on both legs.

The expiry itself takes at least 58 s by the RFC (Min-SE 90 s), too long for a
real clock: test_session_timer_expiry.py runs the node in this process and
moves its clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemons.cluster.config import load_cluster
from daemons.runtime.config import ConfigError
from tests.daemons.sip_server import prack_lab as lab_module
from tests.daemons.sip_server.conftest import SCENARIOS
from tests.daemons.sip_server.prack_lab import (
    PrackLab,
    cluster_text,
    header,
    received_responses,
)
from tests.support.processes import Sipp

prack_lab = lab_module.prack_lab  # the fixture

pytestmark = pytest.mark.timeout(60)


async def refreshed_call(lab: PrackLab, phone_scenario: str) -> tuple[Sipp, Sipp]:
    """A call from a caller with a 120 s session (uac_session_timer.xml: one refresh
    re-INVITE, then BYE) to the phone running ``phone_scenario``; both ran to the
    end successfully. The caller's and the phone's SIPp runs."""
    phone = lab.phone(phone_scenario)
    caller = lab.caller(SCENARIOS / "uac_session_timer.xml", "-set", "hangup", "1",
                        "-set", "expires", "120")
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors(), phone.errors())
    phone_stats = await asyncio.to_thread(phone.stats, 10)
    assert phone_stats.get("SuccessfulCall(C)") == "1", (phone_stats, phone.errors())
    return caller, phone


async def test_too_small_gets_422_and_refresher_negotiated_on_each_leg(prack_lab: Any) -> None:
    lab = await prack_lab("sip-min-se = 100\nsip-session-expires = 600")
    small = lab.caller(SCENARIOS / "uac_session_too_small.xml")
    await asyncio.to_thread(small.stats, 20)
    refused = received_responses(small, 422)
    # once: the caller's ACK (the INVITE's Via, RFC 3261 §17.1.1.3) ended its resending
    assert len(refused) == 1, small.messages()[-3000:]
    assert header(refused[0], "Min-SE") == ["100"], refused

    caller, phone = await refreshed_call(lab, "uas_session_timer.xml")

    answered = received_responses(caller, 200)
    # the caller refreshes its 120 s session (above Min-SE 100, below the node's 600)
    assert header(answered[0], "Session-Expires") == ["120;refresher=uac"], answered[0]
    assert "timer" in header(answered[0], "Require")
    assert header(answered[1], "Session-Expires") == ["120;refresher=uac"], answered[1]
    # the callee was asked for the node's own interval, with 100rel and timer supported
    invites = phone.received_messages("INVITE")
    assert len(invites) == 2, invites  # the call, and the caller's refresh relayed
    assert header(invites[0], "Session-Expires") == ["600"], invites[0]
    assert header(invites[0], "Supported") == ["100rel, timer"], invites[0]
    assert lab.metrics("sipcluster_session_refreshes_total") == {
        '{by="party",outcome="ok"}': 1.0}
    assert lab.metrics("sipcluster_sip_requests_refused_total").get(
        '{method="INVITE",status="422"}') == 1.0


async def test_session_timers_off(prack_lab: Any) -> None:
    lab = await prack_lab("sip-session-expires = 0")
    phone = lab.phone("uas_session_timer.xml")
    small = lab.caller(SCENARIOS / "uac_session_too_small.xml")
    await asyncio.to_thread(small.stats, 20)
    # no 422: the node takes no part in session timers; the call goes through
    assert not received_responses(small, 422)
    invites = phone.received_messages("INVITE")
    assert invites and not header(invites[0], "Session-Expires"), invites
    assert header(invites[0], "Supported") == ["100rel"], invites[0]


@pytest.mark.parametrize(("option", "expected"), [
    ("sip-min-se = 60", "sip-min-se"),
    ("sip-session-expires = 30", "at least 90 seconds"),
])
def test_bad_session_timer_options_are_refused(tmp_path: Path, option: str,
                                               expected: str) -> None:
    path = tmp_path / "cluster.toml"
    ports = dict.fromkeys(("sip", "default", "http", "tc", "tchttp", "phone", "target"), 5060)
    path.write_text(cluster_text(ports, option))
    with pytest.raises(ConfigError, match=expected):
        load_cluster(path)


async def test_callee_422_is_retried_with_its_min_se(prack_lab: Any) -> None:
    """RFC 4028 §8.2: the callee's 422 with Min-SE: 1800 gets the INVITE again (same
    Call-ID and From tag, next CSeq) with Session-Expires and Min-SE 1800; the caller
    sees only the 200. The node's later re-INVITEs on that leg keep the Min-SE."""
    lab = await prack_lab("sip-session-expires = 600")
    caller, phone = await refreshed_call(lab, "uas_session_min_se.xml")

    assert not received_responses(caller, 422), caller.messages()[-3000:]
    assert received_responses(caller, 200)
    first, retry, relayed = phone.received_messages("INVITE")
    assert header(first, "Session-Expires") == ["600"] and not header(first, "Min-SE"), first
    assert header(retry, "Session-Expires") == ["1800"], retry
    assert header(retry, "Min-SE") == ["1800"], retry
    for name in ("Call-ID", "From", "To"):
        assert header(retry, name) == header(first, name), (name, first, retry)
    assert header(first, "CSeq") == ["1 INVITE"] and header(retry, "CSeq") == ["2 INVITE"]
    assert retry.splitlines()[0] == first.splitlines()[0]  # the same Request-URI
    # the caller's refresh reaches the callee with the leg's interval, refresher (the
    # node) and the Min-SE the callee asked for
    assert header(relayed, "Session-Expires") == ["1800;refresher=uac"], relayed
    assert header(relayed, "Min-SE") == ["1800"], relayed
    retries = lab.procs["SIPS_A"].events("session_interval_too_small_retry")
    assert [e["min_se"] for e in retries] == [1800], retries


async def test_callee_422_twice_with_the_same_min_se_fails_the_call(prack_lab: Any) -> None:
    """One retry per distinct Min-SE (RFC 4028 §7.4): a callee that refuses the retry
    too ends the call attempt; the caller gets the 422 with the callee's Min-SE."""
    lab = await prack_lab("sip-session-expires = 600")
    phone = lab.phone("uas_session_min_se_always.xml")
    small = lab.caller(SCENARIOS / "uac_session_refused.xml")
    await asyncio.to_thread(small.stats, 20)
    await asyncio.to_thread(phone.stats, 10)
    invites = phone.received_messages("INVITE")
    assert len(invites) == 2, invites
    assert header(invites[1], "Session-Expires") == ["1800"], invites[1]
    refused = received_responses(small, 422)
    assert len(refused) == 1, small.messages()[-3000:]  # ACKed: not resent
    assert header(refused[0], "Min-SE") == ["1800"], refused


@pytest.mark.parametrize(("tserver", "callee_min_se", "retried", "expected"), [
    # the callee's Min-SE is above the node's interval: each request retried with it
    # once (§7.4), and its 422 to the retry passed back with the callee's value
    ("sip-session-expires = 600", "1800", True, "1800"),
    # the callee's Min-SE is below the node's own minimum: no retry, the node's value
    ("sip-min-se = 1900\nsip-session-expires = 1900", "1000", False, "1900"),
], ids=["callee_min_se", "node_min_se"])
async def test_callee_422_to_a_relayed_refresh_reaches_the_caller_with_min_se(
        prack_lab: Any, tserver: str, callee_min_se: str, retried: bool,
        expected: str) -> None:
    """RFC 4028 §6, §8.1: a callee's 422 to the caller's re-INVITE and UPDATE relayed by
    the node, that stands after the node's retry, reaches the caller with a Min-SE: the
    larger of the callee's and the node's ``sip-min-se``. The UPDATE after the
    re-INVITE's 422 asks the callee for that leg's Min-SE at once (§7.3)."""
    lab = await prack_lab(tserver)
    phone = lab.phone("uas_session_refresh_too_small.xml", "-set", "min_se", callee_min_se,
                      "-set", "retry", "1" if retried else "0")
    caller = lab.caller(SCENARIOS / "uac_session_refresh_too_small.xml",
                        "-set", "expires", "1900")
    stats = await asyncio.to_thread(caller.stats, 30)
    # the scenario's checks: each 422 carried a Min-SE
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors(), phone.errors())
    phone_stats = await asyncio.to_thread(phone.stats, 10)
    assert phone_stats.get("SuccessfulCall(C)") == "1", (phone_stats, phone.errors())

    refused = received_responses(caller, 422)
    assert [header(r, "CSeq") for r in refused] == [["2 INVITE"], ["3 UPDATE"]], refused
    assert [header(r, "Min-SE") for r in refused] == [[expected], [expected]], refused
    # what the callee was asked: the leg's interval, then (retried) the callee's Min-SE;
    # the UPDATE, once, the larger of the two (the leg's floor after the 422)
    reinvites = phone.received_messages("INVITE")[1:]
    updates = phone.received_messages("UPDATE")
    interval = tserver.rsplit("= ", 1)[1]
    asked = [interval, callee_min_se] if retried else [interval]
    assert [header(m, "Session-Expires") for m in reinvites] == [
        [f"{value};refresher=uas"] for value in asked], reinvites
    assert [header(m, "Session-Expires") for m in updates] == [
        [f"{asked[-1]};refresher=uas"]], updates
    relayed = lab.metrics("sipcluster_sip_relayed_total")
    assert relayed == {'{method="UPDATE",status="422"}': 1.0}, relayed


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
async def test_min_se_of_a_callee_422_that_stands_is_kept_for_the_next_refresh(
        prack_lab: Any, method: str) -> None:
    """RFC 4028 §7.3, §8.2: the Min-SE of the callee's 422 to a relayed re-INVITE or
    UPDATE is that leg's floor from then on, though the 422 stood (the node's retry
    refused too): the caller's next refresh reaches the callee at once with
    Session-Expires and Min-SE 1800, not with the leg's old 600 (the callee's
    scenario checks it, and answers 200)."""
    lab = await prack_lab("sip-session-expires = 600")
    phone = lab.phone("uas_session_min_se_kept.xml", "-set", "method", method)
    caller = lab.caller(SCENARIOS / "uac_session_refresh_min_se.xml",
                        "-set", "expires", "600", "-set", "method", method)
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors(), phone.errors())
    phone_stats = await asyncio.to_thread(phone.stats, 10)
    assert phone_stats.get("SuccessfulCall(C)") == "1", (phone_stats, phone.errors())

    refused = received_responses(caller, 422)
    assert [header(r, "Min-SE") for r in refused] == [["1800"]], refused
    relayed = phone.received_messages(method)[1 if method == "INVITE" else 0:]
    assert [(header(m, "Session-Expires"), header(m, "Min-SE")) for m in relayed] == [
        (["600;refresher=uas"], ["90"]),  # the caller's refresh: 422
        (["1800;refresher=uas"], ["1800"]),  # the node's retry: 422 again
        (["1800;refresher=uas"], ["1800"]),  # the caller's next refresh: 200
    ], relayed
    assert [header(r, "CSeq") for r in received_responses(caller, 200)][-2:] == [
        [f"3 {method}"], ["4 BYE"]]
