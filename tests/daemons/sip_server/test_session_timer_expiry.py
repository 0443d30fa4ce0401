"""Session expiry and the node's own refreshes (RFC 4028 §10) with the node's
clock moved: RFC 4028 allows no session shorter than 90 s, so the node runs
in this process on an event loop whose clock the test moves forward, while
its peers are real SIPp processes on 127.0.245.x.

* a caller that refreshed once and then stops gets BYE (and so does the
  callee) when its session expires: 90 - 32 = 58 s after the last refresh;
* a caller that asks the node to refresh (refresher=uas) gets an UPDATE at
  half the interval and its call goes on."""

from __future__ import annotations

import asyncio

import pytest

from tests.daemons.sip_server import prack_lab as lab_module
from tests.daemons.sip_server.conftest import SCENARIOS
from tests.daemons.sip_server.prack_lab import MovedClock, PrackLab, header, until

node = lab_module.node  # the fixture

pytestmark = pytest.mark.timeout(60)


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
