"""After-call work options on real processes (guide: "Emulated Agents",
application level; docs/configuration.md): ``legal-guard-time`` keeps an
agent out of routing after a call it took through SIP; ``timed-acw-in-idle``
and ``acw-in-idle-force-ready`` time the after-call work an agent asks for
while idle. Unit checks with a fake clock first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemons.t_controller.agent import AgentOptions, AgentState, AgentTable, AgentWorkMode

pytestmark = pytest.mark.timeout(90)


def ready_agent(**options: Any) -> AgentTable:
    table = AgentTable(AgentOptions(**options), site="dc1")
    table.login("1001", "a1001", 0.0, work_mode=AgentWorkMode.AUTO_IN)
    return table


def test_legal_guard_follows_wrap_up_for_answered_calls_only() -> None:
    t = ready_agent(wrap_up_time=2.0, legal_guard_time=3.0)
    t.call_established("1001", "c1", 1.0)
    (acw,) = t.call_released("1001", "c1", 10.0)
    assert acw.work_mode is AgentWorkMode.AFTER_CALL_WORK
    assert acw.reasons == {"legal-guard-time": 3}
    assert t.next_timer() == 15.0 and not t.is_available("1001")
    assert t.handle_timer(14.9) == []
    (ready,) = t.handle_timer(15.0)
    assert ready.name == "EventAgentReady" and t.is_available("1001")
    t.call_established("1001", "c2", 20.0)  # rang, never answered: no guard
    assert t.call_released("1001", "c2", 21.0, wrap_up_time=0.0) == []


def test_timed_acw_in_idle_then_ready_or_back() -> None:
    t = ready_agent(wrap_up_time=4.0, timed_acw_in_idle=True)
    (ev,) = t.not_ready("1001", 1.0, work_mode=AgentWorkMode.AFTER_CALL_WORK)
    assert "ManualSetACWPeriod" not in ev.reasons
    assert t.state("1001") is AgentState.AFTER_CALL_WORK and t.next_timer() == 5.0
    (ready,) = t.handle_timer(5.0)
    assert ready.name == "EventAgentReady"
    back = ready_agent(wrap_up_time=4.0, timed_acw_in_idle=True, acw_in_idle_force_ready=False)
    back.not_ready("1001", 0.0, work_mode=AgentWorkMode.AUX_WORK)
    back.not_ready("1001", 1.0, work_mode=AgentWorkMode.AFTER_CALL_WORK)
    (ev,) = back.handle_timer(5.0)
    assert ev.name == "EventAgentNotReady" and back.state("1001") is AgentState.NOT_READY
    untimed = ready_agent(wrap_up_time=4.0)  # timed-acw-in-idle = false: until asked
    (ev,) = untimed.not_ready("1001", 1.0, work_mode=AgentWorkMode.AFTER_CALL_WORK)
    assert ev.reasons == {"ManualSetACWPeriod": 1} and untimed.next_timer() is None


async def test_legal_guard_time_keeps_the_agent_out_of_routing(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=15, tserver="legal-guard-time = 2")
    phone = lab.agent_phone("1001", calls=2)
    desk = (await lab.login_agents(["1001"]))["A"]
    director = await lab.director()
    await lab.until("agent view", lambda: director.events("t_controller_linked"))
    await asyncio.sleep(1.0)
    callers = lab.callers("A", calls=2, rate=2)
    stats = await asyncio.to_thread(callers.stats, 40)
    assert stats.get("SuccessfulCall(C)") == "2", (stats, callers.errors())
    mine = [e for e in desk.events if e.get("AttributeThisDN") == "1001"]
    guard = next(e for e in mine if e["message"] == "EventAgentNotReady")
    assert guard["AttributeAgentWorkMode"] == "AfterCallWork"
    assert guard["AttributeReason"] == {"legal-guard-time": 2}
    ready = next(e for e in mine if e["message"] == "EventAgentReady" and e["at"] > guard["at"])
    assert 1.8 <= ready["at"] - guard["at"] < 4
    rings = [e for e in mine if e["message"] == "EventRinging"]
    assert len(rings) == 2 and rings[1]["at"] >= ready["at"]  # the second call waited
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "2"


@pytest.mark.parametrize(("force_ready", "ends_in"), [
    ("true", "EventAgentReady"), ("false", "EventAgentNotReady")])
async def test_timed_acw_in_idle(director_lab: Any, force_ready: str, ends_in: str) -> None:
    lab = await director_lab(tserver=f"wrap-up-time = 1\ntimed-acw-in-idle = true\n"
                                     f"acw-in-idle-force-ready = {force_ready}")
    desk = (await lab.login_agents(["1001"]))["A"]
    await desk.request("RequestAgentNotReady", AttributeThisDN="1001",
                       AttributeAgentWorkMode="AuxWork")
    acw = await desk.request("RequestAgentNotReady", AttributeThisDN="1001",
                             AttributeAgentWorkMode="AfterCallWork")
    assert acw["message"] == "EventAgentNotReady"
    assert "ManualSetACWPeriod" not in (acw.get("AttributeReason") or {})
    await lab.until("the end of after-call work", lambda: any(
        e["message"] == ends_in and e.get("AttributeReferenceID") is None
        and e.get("AttributeThisDN") == "1001" and e["at"] > 0 for e in desk.events[-1:]), 5)
    last = desk.events[-1]
    assert last["message"] == ends_in
