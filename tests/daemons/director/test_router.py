"""The router's reserve-then-route flow against the agents' owner
(docs/director.md, "Routing", steps 4-6): the owner's answers come from the
t-controller's own reservation table (daemons/t_controller/reservation.py),
so a conflict is the one the owner really makes. An agent a reservation at
its owner still keeps is offered none of the director's calls until the
hold ends (one conflict, not one per waiting call), and the call goes to
another agent meanwhile. No sockets: the router holds none (its Links are
the service's T-Library requests); time is the event loop's, and every wait
has a generous deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from daemons.director import router as router_module
from daemons.director.router import Router
from daemons.director.strategy import DirectorConfig, Strategy
from daemons.t_controller.reservation import (
    Refused,
    ReservationGranted,
    ReservationRequest,
    ReservationTable,
)
from protocols.tlib.errors import ErrorCode

pytestmark = pytest.mark.timeout(60)

AGENTS = {"1001": "a1001", "1002": "a1002"}  # 1001 idle the longest: picked first
#: seconds the owner keeps a reservation that names no Timeout
OWNER_TIMEOUT = 2.0


class Log:
    """The router's log lines, by event name."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    warning = error = info

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for event, kw in self.lines if event == name]


class Owner:
    """The agents' owner t-controller and the node in one, as the router's
    Links: RequestReserveAgent goes to the owner's reservation table;
    RequestRouteCall answers EventRouteUsed (or what ``route_answer`` says)
    and the call then rings on the agent's DN, which uses the reservation up."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_call: dict[str, set[str]] = {dn: set() for dn in AGENTS}
        self.offered = dict.fromkeys(AGENTS, 0)
        self.table = ReservationTable(self._check, self.offered.__getitem__,
                                      collection_time=0, default_timeout=OWNER_TIMEOUT)
        self.router: Router | None = None
        #: (dn, conn_id, loop time) of each RequestReserveAgent and its answer
        self.reserves: list[tuple[str, str, float, str]] = []
        self.routes: list[tuple[str, str]] = []
        #: (dn, conn_id) -> the node's answer to that RequestRouteCall, not EventRouteUsed
        self.route_answer: dict[tuple[str, str], Mapping[str, Any]] = {}
        #: conn_id -> awaited before the node answers its RequestRouteCall
        self.route_gate: dict[str, asyncio.Event] = {}
        #: conn_ids whose call rings on the agent before the route's answer comes
        self.ring_first: set[str] = set()
        #: before answering the director: EventAgentReserved of another router's
        #: reservation, published to the DN's clients (the director among them)
        self.publish_first = False

    def _check(self, dn: str, agent_id: str | None) -> tuple[ErrorCode, str] | None:
        if self.on_call[dn]:
            return ErrorCode.AGENT_NOT_AVAILABLE, f"Agent on DN {dn} is on a call"
        return None

    def reserve_for_other_router(self, dn: str, timeout: float) -> None:
        """Another router (URS) reserves the agent: the director has not heard yet."""
        (out,) = self.table.request(ReservationRequest(dn, "URS#1", conn_id="c-urs",
                                                       priority=9, timeout=timeout),
                                    self.loop.time())
        assert isinstance(out, ReservationGranted)

    async def reserve(self, dn: str, agent_id: str, conn_id: str,
                      priority: int) -> Mapping[str, Any]:
        now = self.loop.time()
        (out,) = self.table.request(ReservationRequest(dn, "Director1", agent_id=agent_id,
                                                       conn_id=conn_id, priority=priority),
                                    now)
        if isinstance(out, Refused):
            self.reserves.append((dn, conn_id, now, "refused"))
            held = self.table.reservation(dn, now)
            if self.publish_first and held is not None and self.router is not None:
                self.router.on_reserved_elsewhere({
                    "AttributeThisDN": dn, "AttributeConnID": held.conn_id,
                    "AttributeTimeout": max(1, round(held.expires - now)),
                    "AttributeExtensions": {"holder": held.holder}})
            return {"message": "EventError", "AttributeErrorCode": int(out.code),
                    "AttributeErrorMessage": out.text}
        self.reserves.append((dn, conn_id, now, "granted"))
        return {"message": "EventAgentReserved", "AttributeThisDN": dn,
                "AttributeAgentID": agent_id, "AttributeConnID": conn_id,
                "AttributeTimeout": max(1, round(out.reservation.expires - now))}

    async def route(self, node: str, routing_point: str, conn_id: str,
                    dn: str) -> Mapping[str, Any]:
        self.routes.append((dn, conn_id))
        if (dn, conn_id) in self.route_answer:
            return self.route_answer[dn, conn_id]
        gate = self.route_gate.get(conn_id)
        if gate is not None:
            await gate.wait()
        if conn_id in self.ring_first:
            self.ring(dn, conn_id)
        else:
            self.loop.call_soon(self.ring, dn, conn_id)
        return {"message": "EventRouteUsed", "AttributeThisDN": routing_point,
                "AttributeConnID": conn_id, "AttributeOtherDN": dn}

    async def apply_treatment(self, node: str, routing_point: str, conn_id: str,
                              treatment: str, parms: Mapping[str, str]) -> Mapping[str, Any]:
        raise AssertionError("the strategy has no treatment")

    def ring(self, dn: str, conn_id: str) -> None:
        self.on_call[dn].add(conn_id)
        self.offered[dn] += 1
        assert self.router is not None
        self.router.on_call_event("EventRinging", {"AttributeThisDN": dn,
                                                   "AttributeConnID": conn_id})

    def release(self, dn: str, conn_id: str) -> None:
        self.on_call[dn].discard(conn_id)
        assert self.router is not None
        self.router.on_call_event("EventReleased", {"AttributeThisDN": dn,
                                                    "AttributeConnID": conn_id})

    def granted(self, dn: str, conn_id: str) -> list[float]:
        return [at for d, c, at, answer in self.reserves
                if (d, c, answer) == (dn, conn_id, "granted")]

    def asked(self, dn: str) -> list[tuple[str, float]]:
        return [(c, at) for d, c, at, _ in self.reserves if d == dn]


async def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


async def start(owner: Owner) -> tuple[Router, Log]:
    strategy = Strategy("8000", ("5000",), skill="sales", site_preference=False)
    config = DirectorConfig("Director1", 1, {"a1001": {"sales": 5}, "a1002": {"sales": 3}},
                            {"8000": strategy}, {"5000": strategy})
    log = Log()
    router = Router(config, owner, log=log)
    owner.router = router
    for dn, agent_id in AGENTS.items():
        router.on_agent_event("EventAgentLogin", {"AttributeThisDN": dn,
                                                  "AttributeAgentID": agent_id})
        router.on_agent_event("EventAgentReady", {"AttributeThisDN": dn,
                                                  "AttributeAgentID": agent_id})
        await asyncio.sleep(0.01)  # distinct idle times, in this order
    return router, log


def call(router: Router, conn_id: str) -> None:
    router.on_route_request("SIPS_A", {"AttributeThisDN": "5000", "AttributeConnID": conn_id})


def routed(log: Log) -> dict[str, str]:
    return {line["conn_id"]: line["to"] for line in log.events("call_routed")}


@pytest.mark.parametrize("heard", [False, True], ids=["unheard", "winner-heard"])
async def test_a_conflict_holds_the_agent_and_the_call_goes_to_another(
        monkeypatch: pytest.MonkeyPatch, heard: bool) -> None:
    # unheard: the winner's EventAgentReserved crossed our request, the hold is
    # HOLD_TIMEOUT; heard (before the conflict, as the owner sends them): its
    # Timeout (2 s, whole seconds: and the rounding's half second)
    hold = 2.0 + router_module.TIMEOUT_ROUNDING
    monkeypatch.setattr(router_module, "HOLD_TIMEOUT", 60.0 if heard else hold)
    owner = Owner()
    owner.publish_first = heard
    router, log = await start(owner)
    try:
        owner.reserve_for_other_router("1001", timeout=2.0)
        call(router, "c1")
        await wait_for("c1 routed", lambda: "c1" in routed(log))
        assert routed(log)["c1"] == "1002"  # after one conflict on 1001
        ((conn, refused_at),) = owner.asked("1001")
        assert conn == "c1" and owner.table.counts["conflict"] == 1
        # calls that wait meanwhile (1002 is on c1) do not ask for 1001 while it is held
        for conn_id in ("c2", "c3", "c4"):
            call(router, conn_id)
        await wait_for("c2 routed to 1001 once the hold ended",
                       lambda: routed(log).get("c2") == "1001")
        (c2_at,) = owner.granted("1001", "c2")
        assert c2_at >= refused_at + hold - 0.05
        # one conflict in all: c2, c3 and c4 waited for the hold, none was refused
        assert owner.table.counts["conflict"] == 1
        assert [c for c, _ in owner.asked("1001")] == ["c1", "c2"]
        assert len(log.events("director_request_refused")) == 1
        assert router.queues["8000"].stats["conflicts"] == 1
    finally:
        await router.close()


async def test_a_refused_route_keeps_the_agent_for_the_owners_reservation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the node refuses the route of a call the owner reserved 1001 for (as a node
    # that has not heard of the reservation yet does): the owner keeps 1001 for c1
    # until the reservation's Timeout, so no other call of ours may have it before
    monkeypatch.setattr(router_module, "HOLD_TIMEOUT", 60.0)
    owner = Owner()
    owner.route_answer["1001", "c1"] = {
        "message": "EventError", "AttributeErrorCode": int(ErrorCode.AGENT_RESERVATION_CONFLICT),
        "AttributeErrorMessage": "Agent reservation conflict: the agent of DN 1001 is "
                                 "reserved for TC_A/Director1"}
    router, log = await start(owner)
    try:
        call(router, "c1")
        await wait_for("c1 routed", lambda: "c1" in routed(log))
        assert routed(log)["c1"] == "1002"  # 1001 excluded for it once its route failed
        (granted_at,) = owner.granted("1001", "c1")
        for conn_id in ("c2", "c3"):
            call(router, conn_id)
        await wait_for("c2 routed to 1001", lambda: routed(log).get("c2") == "1001")
        (c2_at,) = owner.granted("1001", "c2")
        assert c2_at >= granted_at + OWNER_TIMEOUT - 0.05
        assert owner.table.counts["conflict"] == 0
        assert [c for c, _ in owner.asked("1001")] == ["c1", "c2"]
    finally:
        await router.close()


async def test_a_hold_timer_of_a_call_gone_by_keeps_off_the_next_reservation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # c1 rang on 1001 before the node's EventRouteUsed reached the director: the
    # hold that answer would start has nothing to wait for, and must not end the
    # hold of the next call routed to 1001 while its route is on its way
    monkeypatch.setattr(router_module, "HOLD_TIMEOUT", 0.3)
    owner = Owner()
    owner.ring_first.add("c1")
    owner.route_gate["c2"] = asyncio.Event()
    router, log = await start(owner)
    try:
        router.on_agent_event("EventAgentNotReady", {"AttributeThisDN": "1002",
                                                     "AttributeAgentID": "a1002"})
        call(router, "c1")
        await wait_for("c1 routed", lambda: routed(log).get("c1") == "1001")
        owner.release("1001", "c1")
        call(router, "c2")
        await wait_for("c2's route sent", lambda: ("1001", "c2") in owner.routes)
        call(router, "c3")  # no agent: 1001 is held for c2, 1002 is not Ready
        await asyncio.sleep(3 * 0.3)  # past any hold timer c1's route could have left
        await asyncio.sleep(0.05)  # and what it would have started
        assert [c for c, _ in owner.asked("1001")] == ["c1", "c2"]
        assert owner.table.counts["conflict"] == 0
        owner.route_gate["c2"].set()
        await wait_for("c2 routed", lambda: routed(log).get("c2") == "1001")
        assert "c3" in router.queues["8000"].calls
    finally:
        await router.close()


async def test_a_route_request_during_the_route_queues_the_call_again() -> None:
    """The agent turns the routed call away at once (busy) and the node's new
    EventRouteRequest comes before the answer to the director's route: the call
    is queued again once that answer is in, and routed again (it was dropped as
    "already queued" and then forgotten, left to the router-timeout)."""
    owner = Owner()
    router, log = await start(owner)
    try:
        gate = owner.route_gate["c1"] = asyncio.Event()
        call(router, "c1")
        await wait_for("c1 routed to 1001", lambda: ("1001", "c1") in owner.routes)
        call(router, "c1")  # the node asks again while the route is in flight
        assert log.events("route_request_while_routing") == [{"conn_id": "c1",
                                                               "node": "SIPS_A"}]
        owner.release("1001", "c1")
        gate.set()
        await wait_for("c1 routed again", lambda: len(
            [c for _, c in owner.routes if c == "c1"]) == 2)
        assert [line["conn_id"] for line in log.events("call_queued")] == ["c1", "c1"]
        assert log.events("director_event_dropped") == []
    finally:
        await router.close()
