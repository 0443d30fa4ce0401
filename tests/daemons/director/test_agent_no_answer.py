"""Agent no-answer supervision through real SIP (guide: "No-Answer
Supervision"; docs/t-controller.md, "Agent no-answer"): a routed call rings
``agent-no-answer-timeout`` at an agent who does not answer (a SIPp phone that
only rings), or an agent's phone answers busy; the agent's owner applies
``agent-no-answer-action`` / ``set-notready-on-busy`` and the call goes back
to its routing point, where the director gives it to the next agent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.daemons.director.conftest import DC  # type: ignore[import-not-found]

pytestmark = pytest.mark.timeout(90)


async def _one_call_two_agents(director_lab: Any, tserver: str,
                               scenario: str) -> tuple[Any, Any, Any]:
    lab = await director_lab(router_timeout=15, tserver=tserver)
    silent = lab.agent_phone("1001", calls=1, scenario=scenario)
    answering = lab.agent_phone("1002", calls=1)
    desks = await lab.login_agents(["1001", "1002"])  # 1001 first: the longest idle
    director = await lab.director()
    await lab.until("agent view", lambda: director.events("t_controller_linked"))
    await asyncio.sleep(1.0)
    caller = lab.callers("A", calls=1, rate=1)
    stats = await asyncio.to_thread(caller.stats, 40)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    assert [r["to"] for r in director.events("call_routed")] == ["1001", "1002"]
    assert (await asyncio.to_thread(answering.stats, 10)).get("SuccessfulCall(C)") == "1"
    silent.proc.kill()
    return lab, desks["A"], director


async def test_agent_who_does_not_answer_goes_not_ready_and_the_call_goes_on(
        director_lab: Any) -> None:
    lab, desk, _ = await _one_call_two_agents(
        director_lab,     'agent-no-answer-timeout = 1\nagent-no-answer-action = "notready"',
        "node_uas_ring.xml")
    released = [e for e in desk.events if e["message"] == "EventReleased"
                and e.get("AttributeThisDN") == "1001"]
    assert released and released[0]["AttributeReason"] == {
        "cause": "agent-no-answer", "no-answer-action": "notready"}
    ringing = next(e for e in desk.events if e["message"] == "EventRinging"
                   and e.get("AttributeThisDN") == "1001")
    # agent-no-answer-timeout (1 s), not extn-no-answer-timeout (5 s)
    assert 0.8 <= released[0]["at"] - ringing["at"] < 4
    not_ready = [e for e in desk.events if e["message"] == "EventAgentNotReady"
                 and e.get("AttributeThisDN") == "1001"]
    assert not_ready and not_ready[-1]["AttributeReason"] == {"cause": "agent-no-answer"}
    assert not_ready[-1]["AttributeAgentWorkMode"] == "AuxWork"
    assert [e for e in lab.procs["SIPS_A"].events("agent_no_answer") if e["dn"] == "1001"]


async def test_agent_no_answer_action_logout(director_lab: Any) -> None:
    _, desk, _ = await _one_call_two_agents(
        director_lab, 'agent-no-answer-timeout = 1\nagent-no-answer-action = "logout"',
        "node_uas_ring.xml")
    logout = [e for e in desk.events if e["message"] == "EventAgentLogout"
              and e.get("AttributeThisDN") == "1001"]
    assert logout and logout[0]["AttributeReason"] == {"cause": "agent-no-answer"}


async def test_busy_agent_is_set_not_ready_on_busy(director_lab: Any) -> None:
    _, desk, _ = await _one_call_two_agents(
        director_lab, "set-notready-on-busy = true", "node_uas_busy.xml")
    not_ready = [e for e in desk.events if e["message"] == "EventAgentNotReady"
                 and e.get("AttributeThisDN") == "1001"]
    assert not_ready and not_ready[-1]["AttributeReason"] == {"cause": "agent-busy"}


async def test_after_routing_timeout_ends_the_ringing_without_blaming_the_agent(
        director_lab: Any) -> None:
    _, desk, _ = await _one_call_two_agents(
        director_lab, "agent-no-answer-timeout = 10\nafter-routing-timeout = 1",
        "node_uas_ring.xml")
    released = next(e for e in desk.events if e["message"] == "EventReleased"
                    and e.get("AttributeThisDN") == "1001")
    assert released["AttributeReason"] == {"cause": "after-routing-timeout",
                                           "no-answer-action": "none"}
    ringing = next(e for e in desk.events if e["message"] == "EventRinging"
                   and e.get("AttributeThisDN") == "1001")
    assert 0.8 <= released["at"] - ringing["at"] < 4  # after-routing-timeout, not 10 s
    assert not [e for e in desk.events if e["message"] in ("EventAgentNotReady",
                                                           "EventAgentLogout")
                and e.get("AttributeThisDN") == "1001"]  # still Ready


async def test_no_answer_extensions_of_the_route_request(director_lab: Any) -> None:
    """A router's NO_ANSWER_TIMEOUT / NO_ANSWER_OVERFLOW / NO_ANSWER_ACTION win
    over the options (agent-no-answer-timeout 10 s, action notready)."""
    lab = await director_lab(router_timeout=15, tserver="agent-no-answer-timeout = 10")
    silent = lab.agent_phone("1001", calls=1, scenario="node_uas_ring.xml")
    answering = lab.agent_phone("1002", calls=1)
    desk = (await lab.login_agents(["1001", "1002"]))["A"]
    router = await TLibClient.connect(DC["dc1"] + "11", lab.ports["default_A"], "URS", "legacy",
                                      local_addr=(DC["dc1"] + "94", 0))
    events: list[dict[str, Any]] = []
    router.add_listener(lambda e: events.append(dict(e)))
    try:
        await router.request("RequestRegisterAddress", AttributeThisDN="5000")
        caller = lab.callers("A", calls=1, rate=1)
        await lab.until("EventRouteRequest", lambda: any(
            e["message"] == "EventRouteRequest" for e in events))
        request = next(e for e in events if e["message"] == "EventRouteRequest")
        routed = await router.request(
            "RequestRouteCall", AttributeThisDN="5000", AttributeConnID=request["AttributeConnID"],
            AttributeOtherDN="1001", AttributeExtensions={
                "NO_ANSWER_TIMEOUT": 1, "NO_ANSWER_OVERFLOW": "1002",
                "NO_ANSWER_ACTION": "logout"})
        assert routed["message"] == "EventRouteUsed"
        stats = await asyncio.to_thread(caller.stats, 30)
        assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
        assert (await asyncio.to_thread(answering.stats, 10)).get("SuccessfulCall(C)") == "1"
        released = next(e for e in desk.events if e["message"] == "EventReleased"
                        and e.get("AttributeThisDN") == "1001")
        assert released["AttributeReason"] == {"cause": "agent-no-answer",
                                               "no-answer-action": "logout"}
        ringing = next(e for e in desk.events if e["message"] == "EventRinging"
                       and e.get("AttributeThisDN") == "1001")
        assert 0.8 <= released["at"] - ringing["at"] < 4  # NO_ANSWER_TIMEOUT, not 10 s
        logout = [e for e in desk.events if e["message"] == "EventAgentLogout"
                  and e.get("AttributeThisDN") == "1001"]
        assert logout and logout[0]["AttributeReason"] == {"cause": "agent-no-answer"}
        # the overflow DN took the call straight away: no second route request
        assert len([e for e in events if e["message"] == "EventRouteRequest"]) == 1
    finally:
        await router.close()
        silent.proc.kill()
