"""Session expiry and the node's own refreshes (RFC 4028 §10) with the node's
clock moved: RFC 4028 allows no session shorter than 90 s, so the node runs
in this process on an event loop whose clock the test moves forward, while
its peers are real SIPp processes on 127.0.245.x.

* a caller that refreshed once and then stops gets BYE (and so does the
  callee) when its session expires: 90 - 32 = 58 s after the last refresh;
* a caller that asks the node to refresh (refresher=uas) gets an UPDATE at
  half the interval and its call goes on;
* a blind transfer (REFER) 46 s into the call: the node's re-INVITE to the
  party that stays carries that leg's Session-Expires and Min-SE and its 2xx
  restarts the leg's session, so the call outlives the old expiry (58 s) and
  ends at the new one (46 + 58 s) when that party never refreshes; the
  target's leg gets the timer its 2xx asked for and the node's UPDATE at half
  its interval;
* a caller's UPDATE is relayed with the callee's leg's Session-Expires and
  Min-SE; the callee's 2xx without Session-Expires turns that leg's timer off
  (no refresh of it later), and the node's own refresh answered that way turns
  the caller's off."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.daemons.sip_server import prack_lab as lab_module
from tests.daemons.sip_server.conftest import SCENARIOS
from tests.daemons.sip_server.prack_lab import (
    CALLEE_DN,
    TARGET_DN,
    MovedClock,
    PrackLab,
    header,
    received_responses,
    until,
)

node = lab_module.node  # the fixture

pytestmark = pytest.mark.timeout(60)

#: the caller's leg on /status/calls (the caller scenarios' From user)
CALLER_NUMBER = "+15550100"


async def metrics(lab: PrackLab, name: str) -> dict[str, float]:
    return await asyncio.to_thread(lab.metrics, name)


async def test_caller_that_stops_refreshing_gets_bye(node: tuple[PrackLab, MovedClock]) -> None:
    lab, clock = node
    phone = lab.phone("uas_session_timer.xml")
    caller = lab.caller(SCENARIOS / "uac_session_timer.xml", "-set", "hangup", "0",
                        "-set", "expires", "90")
    stats = asyncio.create_task(asyncio.to_thread(caller.stats, 40))
    # the call is up and the caller's refresh re-INVITE was answered
    await until(lambda: lab.metrics("sipcluster_session_refreshes_total"))
    await clock.advance(50)  # 50 s after the refresh: not expired yet (58 s)
    await asyncio.sleep(0.5)
    assert not phone.received_messages("BYE") and not caller.received_messages("BYE")
    await clock.advance(10)
    result = await stats
    assert result.get("SuccessfulCall(C)") == "1", (result, caller.errors())
    assert len(caller.received_messages("BYE")) >= 1
    await until(lambda: phone.received_messages("BYE"))
    assert await metrics(lab, "sipcluster_sessions_expired_total") == {"": 1.0}


async def test_node_refreshes_when_the_caller_asks_it_to(
        node: tuple[PrackLab, MovedClock]) -> None:
    lab, clock = node
    phone = lab.phone("uas_session_timer.xml")
    caller = lab.caller(SCENARIOS / "uac_session_node_refreshes.xml")
    stats = asyncio.create_task(asyncio.to_thread(caller.stats, 40))
    await until(lambda: phone.received_messages("ACK"))
    await clock.advance(46)  # past half of the 90 s interval
    result = await stats
    assert result.get("SuccessfulCall(C)") == "1", (result, caller.errors())
    updates = caller.received_messages("UPDATE")
    assert len(updates) == 1, updates
    assert header(updates[0], "Session-Expires") == ["90;refresher=uac"], updates[0]
    refreshes = await metrics(lab, "sipcluster_session_refreshes_total")
    assert refreshes.get('{by="node",outcome="ok"}') == 1.0, refreshes
    assert (await metrics(lab, "sipcluster_sessions_expired_total")).get("", 0.0) == 0.0


def leg_timers(lab: PrackLab) -> dict[str, dict[str, Any] | None]:
    """The session timer of each live leg of the node's one call, by number."""
    calls = lab.status_calls()
    assert len(calls) == 1, calls
    return {leg["number"]: leg["session_timer"] for leg in calls[0]["legs"]
            if leg["state"] != "released"}


async def test_blind_transfer_restarts_the_session_of_the_party_that_stays(
        node: tuple[PrackLab, MovedClock]) -> None:
    lab, clock = node
    keep = lab.phone("uas_session_keep.xml")  # refreshes itself: refresher=uas
    target = lab.target("uas_session_target.xml")  # the node refreshes: refresher=uac
    caller = lab.caller(SCENARIOS / "uac_session_refer.xml", "-set", "target", TARGET_DN)
    stats = asyncio.create_task(asyncio.to_thread(caller.stats, 40))
    await until(lambda: keep.received_messages("ACK"))
    started = await asyncio.to_thread(leg_timers, lab)
    assert started[CALLEE_DN] == {"interval": 90, "refresher": "party", "refresh_in": None,
                                  "expires_in": pytest.approx(58, abs=3)}, started
    # 46 s on: the node refreshes the caller's leg, whose UPDATE answered lets the
    # caller transfer; the leg of 1001 is 12 s from its expiry then
    await clock.advance(46)
    await until(lambda: len(keep.received_messages("ACK")) >= 2)
    reinvite = keep.received_messages("INVITE")[1]
    assert header(reinvite, "Session-Expires") == ["90;refresher=uas"], reinvite
    assert header(reinvite, "Min-SE") == ["90"], reinvite
    assert "timer" in ", ".join(header(reinvite, "Supported")), reinvite
    await until(lambda: caller.proc.poll() is not None)  # the transferor left
    timers = await asyncio.to_thread(leg_timers, lab)
    assert set(timers) == {CALLEE_DN, TARGET_DN}, timers
    assert timers[CALLEE_DN]["expires_in"] == pytest.approx(58, abs=3), timers
    assert timers[TARGET_DN] == {"interval": 90, "refresher": "node",
                                 "refresh_in": pytest.approx(45, abs=3),
                                 "expires_in": pytest.approx(58, abs=3)}, timers

    await clock.advance(30)  # 76 s into the call: past the old expiry (58 s)
    await asyncio.sleep(0.5)
    assert not keep.received_messages("BYE") and not target.received_messages("BYE")
    assert (await metrics(lab, "sipcluster_sessions_expired_total")).get("", 0.0) == 0.0

    await clock.advance(16)  # 92 s: the target's refresh is due (46 + 45 s)
    await until(lambda: target.received_messages("UPDATE"))
    update = target.received_messages("UPDATE")[0]
    assert header(update, "Session-Expires") == ["90;refresher=uac"], update
    assert not keep.received_messages("BYE")

    await clock.advance(14)  # 106 s: 1001 never refreshed since the transfer (46 + 58 s)
    await until(lambda: keep.received_messages("BYE") and target.received_messages("BYE"))
    assert await metrics(lab, "sipcluster_sessions_expired_total") == {"": 1.0}
    result = await stats
    assert result.get("SuccessfulCall(C)") == "1", (result, caller.errors())
    for phone in (keep, target):
        phone_stats = await asyncio.to_thread(phone.stats, 10)
        assert phone_stats.get("SuccessfulCall(C)") == "1", (phone_stats, phone.errors())


async def test_relayed_update_carries_the_callee_legs_timer_and_its_2xx_stops_it(
        node: tuple[PrackLab, MovedClock]) -> None:
    """RFC 4028 §7.1, §8: the caller's UPDATE reaches the callee with the callee's
    leg's Session-Expires (the node refreshes it: refresher=uac) and Min-SE, not the
    caller's; the callee's 2xx without Session-Expires turns that leg's timer off
    (§7.2, §7.4): the node no longer refreshes it, while the caller's leg runs on."""
    lab, clock = node
    phone = lab.phone("uas_session_update.xml")
    caller = lab.caller(SCENARIOS / "uac_session_update.xml")
    stats = asyncio.create_task(asyncio.to_thread(caller.stats, 40))
    await until(lambda: len(received_responses(caller, 200)) >= 2)  # the UPDATE's 200
    updates = phone.received_messages("UPDATE")
    assert len(updates) == 1, updates
    assert header(updates[0], "Session-Expires") == ["90;refresher=uac"], updates[0]
    assert header(updates[0], "Min-SE") == ["90"], updates[0]
    assert "timer" in ", ".join(header(updates[0], "Supported")), updates[0]
    answered = received_responses(caller, 200)[1]
    assert header(answered, "Session-Expires") == ["90;refresher=uac"], answered
    timers = await asyncio.to_thread(leg_timers, lab)
    assert timers == {CALLER_NUMBER: {"interval": 90, "refresher": "party",
                                      "refresh_in": None,
                                      "expires_in": pytest.approx(58, abs=3)},
                      CALLEE_DN: None}, timers

    await clock.advance(46)  # past the callee's refresh time had its timer run on (45 s)
    await asyncio.sleep(0.5)
    assert len(phone.received_messages("UPDATE")) == 1, phone.messages()[-3000:]
    assert len(phone.received_messages("INVITE")) == 1, phone.messages()[-3000:]
    assert not phone.received_messages("BYE")

    await clock.advance(14)  # 60 s: the caller never refreshed since its UPDATE
    result = await stats
    assert result.get("SuccessfulCall(C)") == "1", (result, caller.errors())
    await until(lambda: phone.received_messages("BYE"))
    phone_stats = await asyncio.to_thread(phone.stats, 10)
    assert phone_stats.get("SuccessfulCall(C)") == "1", (phone_stats, phone.errors())
    assert await metrics(lab, "sipcluster_sessions_expired_total") == {"": 1.0}
    relayed = await metrics(lab, "sipcluster_sip_relayed_total")
    assert relayed == {'{method="UPDATE",status="200"}': 1.0}, relayed


async def test_refresh_answered_without_session_expires_stops_the_legs_timer(
        node: tuple[PrackLab, MovedClock]) -> None:
    """RFC 4028 §7.4: the caller answers the node's refresh UPDATE without
    Session-Expires: its leg has no session timer from then on; the callee's leg,
    whose party refreshes and never does, expires and ends the call."""
    lab, clock = node
    phone = lab.phone("uas_session_party_refreshes.xml")
    caller = lab.caller(SCENARIOS / "uac_session_refresh_declined.xml")
    stats = asyncio.create_task(asyncio.to_thread(caller.stats, 40))
    await until(lambda: phone.received_messages("ACK"))
    await clock.advance(46)  # past half of the caller's 90 s: the node's UPDATE
    await until(lambda: lab.metrics("sipcluster_session_refreshes_total").get(
        '{by="node",outcome="ok"}'))
    updates = caller.received_messages("UPDATE")
    assert len(updates) == 1, updates
    assert header(updates[0], "Session-Expires") == ["90;refresher=uac"], updates[0]
    timers = await asyncio.to_thread(leg_timers, lab)
    assert timers == {CALLER_NUMBER: None,
                      CALLEE_DN: {"interval": 90, "refresher": "party", "refresh_in": None,
                                  "expires_in": pytest.approx(12, abs=3)}}, timers

    await clock.advance(14)  # 60 s: the callee's session expired
    result = await stats
    assert result.get("SuccessfulCall(C)") == "1", (result, caller.errors())
    assert len(caller.received_messages("UPDATE")) == 1
    await until(lambda: phone.received_messages("BYE"))
    phone_stats = await asyncio.to_thread(phone.stats, 10)
    assert phone_stats.get("SuccessfulCall(C)") == "1", (phone_stats, phone.errors())
    assert await metrics(lab, "sipcluster_sessions_expired_total") == {"": 1.0}
