"""The agent state machine: every state and transition, timers on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daemons.cluster.config import TServerOptions
from daemons.t_controller.agent import (
    TRANSITIONS,
    AgentError,
    AgentOptions,
    AgentState,
    AgentTable,
    AgentWorkMode,
    EventAgentLogin,
    EventAgentLogout,
    EventAgentNotReady,
    EventAgentReady,
    Trigger,
)
from protocols.tlib.errors import ErrorCode

DN = "1001"
AGENT = "7001"


def table(**options: object) -> AgentTable:
    return AgentTable(AgentOptions(**options), site="dc1")  # type: ignore[arg-type]


def put_in(state: AgentState, t: AgentTable, now: float = 0.0) -> None:
    """Drive the agent of DN into ``state`` through the public API."""
    if state is AgentState.LOGGED_OUT:
        return
    t.login(DN, AGENT, now)
    if state is AgentState.NOT_READY:
        return
    t.ready(DN, now)
    if state is AgentState.READY:
        return
    t.call_established(DN, "c1", now)
    t.call_released(DN, "c1", now, wrap_up_time=10)
    assert t.state(DN) is AgentState.AFTER_CALL_WORK


REQUESTS: dict[Trigger, Callable[[AgentTable], object]] = {
    Trigger.LOGIN: lambda t: t.login(DN, "7002", 1.0),
    Trigger.READY: lambda t: t.ready(DN, 1.0),
    Trigger.NOT_READY: lambda t: t.not_ready(DN, 1.0, work_mode=AgentWorkMode.AUX_WORK),
    Trigger.LOGOUT: lambda t: t.logout(DN, 1.0),
}


@pytest.mark.parametrize("state", list(AgentState))
@pytest.mark.parametrize("trigger", list(REQUESTS))
def test_request_transition_table(state: AgentState, trigger: Trigger) -> None:
    t = table()
    put_in(state, t)
    target = TRANSITIONS.get((state, trigger))
    if target is None:
        with pytest.raises(AgentError) as info:
            REQUESTS[trigger](t)
        expected = (
            ErrorCode.AGENT_NOT_LOGGED_IN
            if state is AgentState.LOGGED_OUT
            else ErrorCode.AGENT_ALREADY_LOGGED_IN
        )
        assert info.value.code is expected
        assert info.value.text
        assert t.state(DN) is state  # nothing changed
    else:
        REQUESTS[trigger](t)
        assert t.state(DN) is target


def test_table_shape() -> None:
    targets = set(TRANSITIONS.values())
    assert targets == set(AgentState)
    assert all(
        target is AgentState.LOGGED_OUT
        for (_, trig), target in TRANSITIONS.items()
        if trig is Trigger.LOGOUT
    )
    assert not any(
        src is AgentState.LOGGED_OUT and trig is not Trigger.LOGIN for (src, trig) in TRANSITIONS
    )


def test_login_events_and_emulated_login_state() -> None:
    t = table()
    events = t.login(DN, AGENT, 0.0, client="desk-1")
    assert [type(e) for e in events] == [EventAgentLogin, EventAgentNotReady]
    assert events[0].to_map() == {
        "message": "EventAgentLogin",
        "AttributeThisDN": DN,
        "AttributeAgentID": AGENT,
        "AttributeAgentWorkMode": 0,
    }
    view = t.agent(DN)
    assert view is not None and view.client == "desk-1" and view.state is AgentState.NOT_READY
    assert t.dn_of(AGENT) == DN

    t2 = table(emulated_login_state="ready")
    events = t2.login(DN, AGENT, 0.0)
    assert [type(e) for e in events] == [EventAgentLogin, EventAgentReady]
    assert t2.state(DN) is AgentState.READY

    t3 = table()
    t3.login(DN, AGENT, 0.0, work_mode=AgentWorkMode.AUTO_IN)
    assert t3.state(DN) is AgentState.READY


def test_ready_carries_site_and_not_ready_reason() -> None:
    t = table()
    t.login(DN, AGENT, 0.0)
    (ready,) = t.ready(DN, 1.0)
    assert ready.to_map()["AttributeReasons"] == {"site": "dc1"}
    (nr,) = t.not_ready(DN, 2.0, work_mode=AgentWorkMode.AUX_WORK, reasons={"ReasonCode": "12"})
    m = nr.to_map()
    assert m["message"] == "EventAgentNotReady"
    assert m["AttributeAgentWorkMode"] == 4
    assert m["AttributeReasons"] == {"ReasonCode": "12"}
    assert t.agent(DN).reasons == {"ReasonCode": "12"}  # type: ignore[union-attr]


def test_login_errors() -> None:
    t = table()
    t.login(DN, AGENT, 0.0)
    with pytest.raises(AgentError) as info:
        t.login("1002", AGENT, 0.0)  # same agent elsewhere
    assert info.value.code is ErrorCode.AGENT_ALREADY_LOGGED_IN
    assert "1001" in info.value.text
    with pytest.raises(AgentError) as info:
        t.login(DN, "7002", 0.0)  # another agent on the DN
    assert info.value.code is ErrorCode.AGENT_ALREADY_LOGGED_IN

    t.call_established("1002", "c9", 0.0)
    with pytest.raises(AgentError) as info:
        t.login("1002", "7002", 0.0)
    assert info.value.code is ErrorCode.INVALID_CALL_STATE

    restricted = AgentTable(
        AgentOptions(), agent_dns={"1001"}, check_password=lambda a, p: p == "pw"
    )
    with pytest.raises(AgentError) as info:
        restricted.login("5000", AGENT, 0.0, password="pw")
    assert info.value.code is ErrorCode.UNKNOWN_DN
    with pytest.raises(AgentError) as info:
        restricted.login("1001", AGENT, 0.0, password="bad")
    assert info.value.code is ErrorCode.INVALID_PASSWORD
    restricted.login("1001", AGENT, 0.0, password="pw")
    with pytest.raises(AgentError) as info:
        t.login("1003", "", 0.0)
    assert info.value.code is ErrorCode.UNKNOWN_AGENT


def test_availability_follows_calls() -> None:
    t = table()
    t.login(DN, AGENT, 0.0)
    assert not t.is_available(DN)
    t.ready(DN, 0.0)
    assert t.is_available(DN)
    assert t.call_established(DN, "c1", 1.0) == []
    assert t.on_call(DN) and not t.is_available(DN) and t.is_busy(DN)
    t.call_established(DN, "c2", 2.0)  # consultation
    assert t.call_released(DN, "c1", 3.0) == []  # still on c2
    assert t.on_call(DN)
    assert t.call_released(DN, "c2", 4.0) == []  # wrap-up-time 0: straight back
    assert t.is_available(DN)
    assert t.call_released(DN, "unknown", 5.0) == []


def test_calls_on_a_lost_node_are_dropped_without_events() -> None:
    """Guide, "TC-layer between DC1 and DC2 fails", Agent 2 step 7: the calls
    of a node this t-controller lost no longer count; no release, no ACW."""
    t = table(wrap_up_time=30.0, auto_logout_timeout=1.0)
    put_in(AgentState.READY, t)
    t.call_established(DN, "far", 1.0)  # on the lost node
    t.call_established(DN, "near", 2.0)  # on this node
    t.call_established("1002", "far2", 2.0)  # no agent on that DN
    assert t.next_timer() is None  # on a call: no inactivity logout
    assert t.drop_calls({"far", "far2", "unknown"}, 100.0) == [DN, "1002"]
    assert t.calls(DN) == frozenset({"near"}) and not t.on_call("1002")
    assert t.state(DN) is AgentState.READY and t.on_call(DN)
    assert t.drop_calls(["near"], 200.0) == [DN]
    assert not t.on_call(DN) and t.is_available(DN)
    assert t.state(DN) is AgentState.READY  # the call is not over: no after-call work
    assert t.next_timer() == 260.0  # inactivity counts again from the drop
    # the release that may come later is of a call the table no longer knows
    assert t.call_released(DN, "near", 300.0) == []
    assert t.drop_calls([], 300.0) == []
    # a DN whose only call was dropped lets an agent log in (no call reported)
    t.logout(DN, 300.0)
    t.call_established(DN, "far3", 301.0)
    with pytest.raises(AgentError):
        t.login(DN, AGENT, 302.0)
    t.drop_calls({"far3"}, 303.0)
    assert isinstance(t.login(DN, AGENT, 304.0)[0], EventAgentLogin)


def test_wrap_up_timer_with_fake_clock() -> None:
    t = table(wrap_up_time=30.0)
    t.login(DN, AGENT, 0.0)
    t.ready(DN, 0.0)
    t.call_established(DN, "c1", 10.0)
    assert t.next_timer() is None
    (acw,) = t.call_released(DN, "c1", 100.0)
    assert isinstance(acw, EventAgentNotReady)
    assert acw.work_mode is AgentWorkMode.AFTER_CALL_WORK
    assert t.state(DN) is AgentState.AFTER_CALL_WORK and t.is_busy(DN)
    assert not t.is_available(DN)
    assert t.next_timer() == 130.0
    assert t.handle_timer(129.9) == []
    (ready,) = t.handle_timer(130.0)
    assert isinstance(ready, EventAgentReady)
    assert t.state(DN) is AgentState.READY and t.is_available(DN)
    assert t.next_timer() is None


def test_wrap_up_override_and_early_end() -> None:
    t = table(wrap_up_time=30.0)
    put_in(AgentState.READY, t)
    t.call_established(DN, "c1", 0.0)
    t.call_released(DN, "c1", 0.0, wrap_up_time=5)  # AttributeExtensions wrap-up-time
    assert t.next_timer() == 5.0
    t.ready(DN, 2.0)  # agent ends ACW early
    assert t.state(DN) is AgentState.READY and t.next_timer() is None


def test_no_acw_when_not_ready() -> None:
    t = table(wrap_up_time=30.0)
    put_in(AgentState.NOT_READY, t)
    t.call_established(DN, "c1", 0.0)
    assert t.call_released(DN, "c1", 1.0) == []
    assert t.state(DN) is AgentState.NOT_READY


def test_manual_acw_is_marked_and_untimed() -> None:
    t = table(wrap_up_time=30.0)
    put_in(AgentState.READY, t)
    (ev,) = t.not_ready(DN, 0.0, work_mode=AgentWorkMode.AFTER_CALL_WORK)
    assert ev.reasons == {"ManualSetACWPeriod": 1}
    assert t.state(DN) is AgentState.NOT_READY and t.next_timer() is None
    assert t.snapshot(DN) is None  # not restorable (guide limitation)


def test_logout_on_a_call_keeps_the_call() -> None:
    t = table()
    put_in(AgentState.READY, t)
    t.call_established(DN, "c1", 0.0)
    (ev,) = t.logout(DN, 1.0)
    assert isinstance(ev, EventAgentLogout) and ev.reasons == {}
    assert t.state(DN) is AgentState.LOGGED_OUT
    assert t.on_call(DN)
    assert t.dn_of(AGENT) is None


def test_logout_on_disconnect() -> None:
    t = table(logout_on_disconnect=True)
    t.login(DN, AGENT, 0.0, client="gws-1")
    t.login("1002", "7002", 0.0, client="gws-2")
    (ev,) = t.client_disconnected("gws-1", 5.0)
    assert isinstance(ev, EventAgentLogout)
    assert ev.reasons == {"cause": "logout-on-disconnect"}
    assert t.logged_in() == ["1002"]
    off = table(logout_on_disconnect=False)
    off.login(DN, AGENT, 0.0, client="gws-1")
    assert off.client_disconnected("gws-1", 5.0) == []
    assert off.state(DN) is AgentState.NOT_READY


def test_logout_on_out_of_service() -> None:
    t = table()
    put_in(AgentState.READY, t)
    (ev,) = t.dn_out_of_service(DN, 1.0)
    assert ev.reasons == {"cause": "logout-on-out-of-service"}
    off = table(logout_on_out_of_service=False)
    put_in(AgentState.READY, off)
    assert off.dn_out_of_service(DN, 1.0) == []


def test_auto_logout_timeout_minutes() -> None:
    t = table(auto_logout_timeout=2.0)  # minutes
    t.login(DN, AGENT, 0.0)
    assert t.next_timer() == 120.0
    t.not_ready(DN, 60.0, work_mode=AgentWorkMode.AUX_WORK)  # activity
    assert t.next_timer() == 180.0
    assert t.handle_timer(179.0) == []
    (ev,) = t.handle_timer(180.0)
    assert isinstance(ev, EventAgentLogout)
    assert ev.reasons == {"cause": "auto-logout-timeout"}
    assert t.state(DN) is AgentState.LOGGED_OUT


def test_auto_logout_skips_calls_and_ready_when_configured() -> None:
    t = table(auto_logout_timeout=1.0, auto_logout_ready=False)
    put_in(AgentState.READY, t)
    assert t.next_timer() is None  # Ready agents stay
    t.not_ready(DN, 0.0)
    t.call_established(DN, "c1", 10.0)
    assert t.next_timer() is None  # on a call
    assert t.handle_timer(1000.0) == []
    t.call_released(DN, "c1", 1000.0)
    assert t.next_timer() == 1060.0


def test_snapshot_and_restore() -> None:
    old = table()
    put_in(AgentState.NOT_READY, old)
    old.not_ready(DN, 0.0, work_mode=AgentWorkMode.AUX_WORK, reasons={"ReasonCode": "7"})
    events, snap = old.hand_over(DN, 1.0, restore=True)
    assert [e.reasons for e in events] == [{"cause": "ownership-moved"}]
    assert snap is not None and snap.state is AgentState.NOT_READY
    assert snap.to_map()["AttributeReasons"] == {"ReasonCode": "7"}
    assert old.state(DN) is AgentState.LOGGED_OUT

    new = AgentTable(AgentOptions(), site="dc2")
    restored = new.restore(snap, 2.0)
    assert [type(e) for e in restored] == [EventAgentLogin, EventAgentNotReady]
    assert restored[1].reasons == {"ReasonCode": "7"}
    assert new.state(DN) is AgentState.NOT_READY and new.dn_of(AGENT) == DN

    ready_old = table(wrap_up_time=10.0)
    put_in(AgentState.AFTER_CALL_WORK, ready_old)
    snap2 = ready_old.snapshot(DN)
    assert snap2 is not None and snap2.state is AgentState.READY
    new2 = AgentTable(AgentOptions(emulated_login_state="ready"), site="dc2")
    evs = new2.restore(snap2, 0.0)
    assert [type(e) for e in evs] == [EventAgentLogin, EventAgentReady]
    assert evs[1].reasons == {"site": "dc2"}

    _, none = table().hand_over(DN, 0.0, restore=True)
    assert none is None
    t = table()
    put_in(AgentState.READY, t)
    _, not_kept = t.hand_over(DN, 0.0, restore=False)
    assert not_kept is None


def test_options_from_tserver() -> None:
    opts = AgentOptions.from_tserver(
        TServerOptions(wrap_up_time=15, logout_on_disconnect=True, auto_logout_timeout=3)
    )
    assert opts.wrap_up_time == 15.0
    assert opts.logout_on_disconnect is True
    assert opts.auto_logout_timeout == 3.0


def test_timers_of_many_agents_in_deadline_order() -> None:
    numbers = [str(300000 + i) for i in range(500)]
    t = AgentTable(AgentOptions(auto_logout_timeout=1.0))  # one minute
    for i, dn in enumerate(numbers):
        t.login(dn, f"a{dn}", float(i))  # agent i logs out at 60 + i
    assert t.next_timer() == 60.0
    t.not_ready(numbers[0], 100.0)  # activity: agent 0 now at 160
    assert t.next_timer() == 61.0
    out = t.handle_timer(62.5)
    assert [e.this_dn for e in out] == numbers[1:3]
    assert all(isinstance(e, EventAgentLogout) for e in out)
    assert t.next_timer() == 63.0
    t.call_established(numbers[3], "c1", 62.9)  # on a call: no inactivity logout
    assert t.next_timer() == 64.0
    out = t.handle_timer(1000.0)
    assert numbers[3] not in [e.this_dn for e in out] and len(out) == 497
    assert t.logged_in() == [numbers[3]] and t.next_timer() is None
    t.call_released(numbers[3], "c1", 1000.0)
    assert t.next_timer() == 1060.0
