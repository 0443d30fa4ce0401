"""What the director does with a call (docs/director.md, "Routing"; guides:
"Routing Principles", "Agent Reservation in SIP Cluster").

A call reaches a routing point of a node: the node's ``EventRouteRequest``
puts it in the strategy's virtual queue. Whenever a call arrives or an agent
becomes available, :meth:`Router.dispatch` walks the waiting calls (highest
priority, then oldest) and picks an agent for each it can serve; then, for
each pair, **reserve before route**: ``RequestReserveAgent`` at the
t-controllers (the agent's owner decides), and only with
``EventAgentReserved`` in hand ``RequestRouteCall`` on the node. A refusal
sends the call back to the queue, that agent excluded for it; a node that no
longer knows the call (caller gone, ``router-timeout`` passed and
``default-dn`` took it) ends it.

An agent stays held while a reservation at its owner keeps it from our other
calls: after a conflict (another router won it: held for that reservation's
Timeout when its ``EventAgentReserved`` came, else ``HOLD_TIMEOUT``; the call
may have the agent once the hold ends), after a reservation request that got
no answer (the owner may have granted it), and after a granted reservation
whose route failed (the owner keeps it for that call until its Timeout). A
request for it meanwhile would only be refused with a conflict, and every
other waiting call would ask in turn.

The router holds no sockets: :class:`Links` are the T-Library requests the
service sends for it, so that the same code runs against real daemons and in
a benchmark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from daemons.director.queue import AgentPool, QueuedCall, VirtualQueue
from daemons.director.sites import MonitoredSite, SiteBoard, SiteReport, site_report
from daemons.director.strategy import DirectorConfig
from protocols.tlib.errors import ErrorCode

__all__ = ["CALL_START", "Links", "Router"]

#: Call events after which an agent's DN is on the call.
CALL_START = frozenset({"EventRinging", "EventDialing", "EventEstablished", "EventHeld",
                        "EventRetrieved", "EventPartyChanged"})
#: Seconds an agent stays held for a routed call that never rang on its DN, or
#: reserved at its owner for how long we do not know (a conflict, no answer).
HOLD_TIMEOUT = 8.0


#: ``AttributeTimeout`` is whole seconds, rounded: the reservation may last this much more.
TIMEOUT_ROUNDING = 0.5


def _seconds(timeout: Any) -> float:
    """How long a reservation whose ``AttributeTimeout`` says ``timeout`` may
    still hold the agent (``HOLD_TIMEOUT`` when absent or not positive)."""
    if isinstance(timeout, int) and timeout > 0:
        return timeout + TIMEOUT_ROUNDING
    return HOLD_TIMEOUT


class Links(Protocol):
    """The requests the router needs sent (the service's T-Library clients)."""

    async def reserve(self, dn: str, agent_id: str, conn_id: str,
                      priority: int) -> Mapping[str, Any]: ...
    async def route(self, node: str, routing_point: str, conn_id: str,
                    dn: str) -> Mapping[str, Any]: ...
    async def apply_treatment(self, node: str, routing_point: str, conn_id: str,
                              treatment: str, parms: Mapping[str, str]) -> Mapping[str, Any]: ...


class Router:
    """Virtual queues, the agent pool and the reserve-then-route flow."""

    def __init__(self, config: DirectorConfig, links: Links, *, log: Any,
                 metrics: Any = None, clock: Any = None,
                 node_sites: Mapping[str, str] | None = None,
                 router_timeouts: Mapping[str, float] | None = None,
                 report: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.config = config
        #: sip-server name -> its router-timeout: a call queued longer is the node's again
        self.router_timeouts = dict(router_timeouts or {})
        #: EventQueued / EventDiverted / EventAbandoned of the virtual queues, for
        #: the reporting clients (docs/director.md, "Reporting")
        self.report = report
        #: sip-server name -> geo-location: the site of an agent whose DN it owns
        self.node_sites = dict(node_sites or {})
        self.links = links
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.clock = clock if clock is not None else self.loop.time
        self.pool = AgentPool(config.skills)
        self.queues = {queue: VirtualQueue(s) for queue, s in config.strategies.items()}
        self._queue_of_rp = {rp: self.queues[s.queue]
                             for rp, s in config.by_routing_point.items()}
        #: the monitored servers' reports (Director Server), if it monitors any
        self.sites = SiteBoard({m.name: m.route_to for m in config.monitored_servers.values()},
                               config.site_stale_after) if config.monitored_servers else None
        self._call_queue: dict[str, VirtualQueue] = {}
        #: EventRouteRequests that came while this director's route of the call was
        #: in flight: the call waits on its routing point again once that route is done
        self._route_again: dict[str, tuple[str, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._overflow_timer: asyncio.TimerHandle | None = None
        self._holds: dict[str, asyncio.TimerHandle] = {}
        #: DN -> loop time until which another router's reservation holds it, heard
        #: while a request of ours for it was in flight (the conflict's hold)
        self._reserved_elsewhere: dict[str, float] = {}
        self._dispatch_pending = False
        #: decision times (seconds) of the last dispatches, for the status page
        self.decisions: list[float] = []
        self.outcomes = metrics.tally("director_calls", "Calls the director handled, by "
                                      "virtual queue and outcome", ("queue", "outcome")) \
            if metrics is not None else None
        self.reservations = metrics.tally("director_reservations", "RequestReserveAgent "
                                          "answers, by outcome", ("outcome",)) \
            if metrics is not None else None
        self.errors = metrics.tally("director_request_errors", "EventError answers to the "
                                    "director's requests, by request and code",
                                    ("request", "code")) if metrics is not None else None
        self.dropped = metrics.tally("director_events_dropped", "Events the director could "
                                     "not use, by event and reason",
                                     ("event", "reason")) if metrics is not None else None

    # -- strategies changed (the director store) ---------------------------------------
    def apply_config(self, config: DirectorConfig) -> None:
        """Other strategies and skills: queues kept (with their calls) or added;
        a queue no longer configured must have no call waiting (the API checks)."""
        self.config = config
        for name, strategy in config.strategies.items():
            queue = self.queues.get(name)
            if queue is None:
                self.queues[name] = VirtualQueue(strategy)
            else:
                queue.strategy = strategy
        for name in [q for q in self.queues if q not in config.strategies]:
            queue = self.queues.pop(name)
            for conn_id in list(queue.calls):
                self._end(queue, conn_id, "default-routed")
        self._queue_of_rp = {rp: self.queues[s.queue]
                             for rp, s in config.by_routing_point.items()}
        self.pool.set_skills(config.skills)
        self.dispatch_soon()

    # -- monitored servers ----------------------------------------------------------------
    def site_report(self, now: float | None = None) -> SiteReport:
        """This director's report as a monitored server (sites.py)."""
        return site_report(self.config.site or "", self.pool, self.queues.values(),
                           self.clock() if now is None else now)

    def on_site_report(self, name: str, report: SiteReport) -> None:
        """A monitored server reported: its availability counts from now."""
        assert self.sites is not None
        self.sites.reported(name, report, self.clock())
        self.dispatch_soon()

    # -- events from the nodes ----------------------------------------------------------
    def on_route_request(self, node: str, event: Mapping[str, Any]) -> None:
        rp, conn_id = event.get("AttributeThisDN"), event.get("AttributeConnID")
        if not isinstance(rp, str) or not isinstance(conn_id, str):
            self._drop("EventRouteRequest", "no-dn-or-connid", node=node)
            return
        queue = self._queue_of_rp.get(rp)
        if queue is None:
            self._drop("EventRouteRequest", "not-a-routing-point-of-a-strategy", node=node, rp=rp)
            return
        if conn_id in self._call_queue:
            queued = self._call_queue[conn_id].calls.get(conn_id)
            if queued is not None and queued.busy:
                # the node asks again before the answer to this director's route is in
                # (the agent refused the call at once: busy): queued again once it is
                self._route_again[conn_id] = (node, dict(event))
                self.log.info("route_request_while_routing", conn_id=conn_id, node=node)
                return
            self._drop("EventRouteRequest", "already-queued", node=node, conn_id=conn_id)
            return
        extensions = event.get("AttributeExtensions") or {}
        geo = extensions.get("geo-location") if isinstance(extensions, Mapping) else None
        call = queue.add(conn_id, rp, node, self.clock(),
                         user_data=event.get("AttributeUserData") or {},
                         geo_location=geo if isinstance(geo, str) else None)
        self._call_queue[conn_id] = queue
        self._report("EventQueued", queue, call, OtherDN=rp)
        self.log.info("call_queued", conn_id=conn_id, rp=rp, queue=queue.strategy.queue,
                      node=node, priority=call.priority, geo_location=call.geo_location)
        self._count(queue, "queued")
        self.dispatch()
        if queue.strategy.treatment and not call.busy and conn_id in queue.calls:
            # no agent for it now: the caller hears the queue's treatment while it waits
            self._spawn(self._treat(queue, call))

    def on_route_used(self, event: Mapping[str, Any]) -> None:
        """The node routed the call without this director: ``router-timeout`` ->
        ``default-dn``, or another routing client answered first."""
        conn_id = event.get("AttributeConnID")
        queue = self._call_queue.get(conn_id) if isinstance(conn_id, str) else None
        if queue is None or not isinstance(conn_id, str):
            return
        call = queue.calls.get(conn_id)
        if call is None or call.busy:
            return  # ours: the route in flight ends it
        reason = event.get("AttributeReason") or {}
        default = isinstance(reason, Mapping) and reason.get("route") == "default"
        to = event.get("AttributeOtherDN")
        self._report("EventDiverted", queue, call, **({"OtherDN": to} if isinstance(to, str)
                                                      else {}))
        self._end(queue, conn_id, "default-routed" if default else "routed-elsewhere")
        self.log.warning("call_default_routed" if default else "call_routed_elsewhere",
                         conn_id=conn_id, queue=queue.strategy.queue,
                         to=event.get("AttributeOtherDN"))

    def on_abandoned(self, event: Mapping[str, Any]) -> None:
        """The caller hung up while the call waited on the routing point."""
        conn_id = event.get("AttributeConnID")
        queue = self._call_queue.get(conn_id) if isinstance(conn_id, str) else None
        if queue is None or not isinstance(conn_id, str):
            return
        call = queue.calls.get(conn_id)
        if call is not None:
            self._report("EventAbandoned", queue, call)
        self._end(queue, conn_id, "abandoned")
        self.log.info("call_abandoned", conn_id=conn_id, queue=queue.strategy.queue)

    def node_lost(self, node: str) -> None:
        """A node's link is gone: its calls route by themselves (``default-dn``)."""
        for queue in self.queues.values():
            for call in [c for c in queue.calls.values() if c.node == node and not c.busy]:
                self._end(queue, call.conn_id, "default-routed")

    # -- events from the t-controllers --------------------------------------------------
    def on_agent_event(self, name: str, event: Mapping[str, Any]) -> None:
        dn = event.get("AttributeThisDN")
        if not isinstance(dn, str):
            return
        agent_id = event.get("AttributeAgentID")
        agent_id = agent_id if isinstance(agent_id, str) else None
        now = self.clock()
        reasons = event.get("AttributeReason") or {}
        site = reasons.get("site") if isinstance(reasons, Mapping) else None
        if name == "EventAgentLogin" and agent_id is not None:
            self.pool.login(dn, agent_id, now)
        elif name == "EventAgentReady":
            self.pool.ready(dn, agent_id, True, now, site if isinstance(site, str) else None)
            self.dispatch()
        elif name == "EventAgentNotReady":
            self.pool.ready(dn, agent_id, False, now)
        elif name == "EventAgentLogout":
            self.pool.logout(dn)

    def on_registered(self, event: Mapping[str, Any]) -> None:
        """The DN's state when the director registered it (EventRegistered)."""
        dn, agent_id = event.get("AttributeThisDN"), event.get("AttributeAgentID")
        ext = event.get("AttributeExtensions") or {}
        if not isinstance(dn, str) or not isinstance(ext, Mapping):
            return
        if not isinstance(agent_id, str) or ext.get("dn-state") != "in-service":
            self.pool.logout(dn)
            return
        now = self.clock()
        site = ext.get("site")
        if not isinstance(site, str):
            owner = ext.get("owner")
            site = self.node_sites.get(owner) if isinstance(owner, str) else None
        self.pool.login(dn, agent_id, now)
        self.pool.ready(dn, agent_id, ext.get("agent-state") == "Ready", now, site)
        if ext.get("on-call"):
            self.pool.call_started(dn, "?", now)
        self.dispatch()

    def on_call_event(self, name: str, event: Mapping[str, Any]) -> None:
        dn, conn_id = event.get("AttributeThisDN"), event.get("AttributeConnID")
        if not isinstance(dn, str) or not isinstance(conn_id, str) \
                or dn not in self.pool.agents:
            return
        now = self.clock()
        if name in CALL_START:
            self.pool.call_started(dn, conn_id, now)
            self._cancel_hold_timer(dn)
            self._reserved_elsewhere.pop(dn, None)  # a call consumed that reservation
        elif name in ("EventReleased", "EventDiverted"):
            self.pool.call_ended(dn, conn_id, now)
            if "?" in self.pool.agents[dn].calls:
                self.pool.call_ended(dn, "?", now)
            # after the events that came with it (wrap-up's EventAgentNotReady)
            self.dispatch_soon()

    def on_reserved_elsewhere(self, event: Mapping[str, Any]) -> None:
        """Another router reserved an agent (the owner's ``EventAgentReserved``
        to the DN's clients): it is offered no call of ours until that call
        reaches it or the reservation's Timeout passes. Heard while we hold the
        agent, it is kept for the conflict our request in flight gets."""
        dn = event.get("AttributeThisDN")
        if not isinstance(dn, str):
            return
        record = self.pool.agents.get(dn)
        if record is None:
            return
        hold = _seconds(event.get("AttributeTimeout"))
        if record.held:
            # held by us: a request of ours in flight is refused with a conflict
            # (our own grants come as answers, never here); its hold lasts this long
            self._reserved_elsewhere[dn] = self.loop.time() + hold
            return
        self._hold(dn, hold)

    def t_controller_lost(self) -> None:
        """The agent view is gone with the link: nothing is routed on stale state."""
        for dn in list(self.pool.agents):
            self.pool.logout(dn)

    # -- distribution -------------------------------------------------------------------
    def dispatch_soon(self) -> None:
        """Dispatch once the events already received are taken in."""
        if not self._dispatch_pending:
            self._dispatch_pending = True
            self.loop.call_soon(self._deferred_dispatch)

    def _deferred_dispatch(self) -> None:
        self._dispatch_pending = False
        self.dispatch()

    def dispatch(self) -> None:
        """Match waiting calls with available agents (module doc)."""
        now = self.clock()
        started = time.perf_counter()
        next_overflow: float | None = None
        for queue in self.queues.values():
            for call in queue.waiting():
                limit = self.router_timeouts.get(call.node)
                if limit is not None and call.waited(now) > limit + 1.0:
                    # the node gave up waiting (router-timeout): not ours any more
                    self._end(queue, call.conn_id, "default-routed")
                    continue
                if queue.strategy.spread == "monitored-sites":
                    site = self.sites.pick(queue.strategy.skill, now, call.excluded) \
                        if self.sites is not None else None
                    if site is not None:
                        call.busy = True
                        self.sites.sent(site)  # type: ignore[union-attr]
                        self._spawn(self._route_to_site(queue, call, site))
                    continue
                overflow = queue.overflow(call, now)
                agent = self.pool.pick(queue.strategy, call.geo_location, overflow=overflow,
                                       exclude=call.excluded)
                if agent is None:
                    if not overflow:
                        due = call.arrived + queue.strategy.overflow_after
                        next_overflow = due if next_overflow is None else min(next_overflow, due)
                    continue
                call.busy = True
                self._cancel_hold_timer(agent.dn)  # available: a timer left is stale
                self.pool.hold(agent.dn, now)
                self._spawn(self._reserve_and_route(queue, call, agent.dn, agent.agent_id))
        self.decisions.append(time.perf_counter() - started)
        if len(self.decisions) > 1000:
            del self.decisions[:500]
        if self._overflow_timer is not None:
            self._overflow_timer.cancel()
            self._overflow_timer = None
        if next_overflow is not None:
            self._overflow_timer = self.loop.call_later(max(0.0, next_overflow - now) + 0.01,
                                                        self.dispatch)

    async def _reserve_and_route(self, queue: VirtualQueue, call: QueuedCall, dn: str,
                                 agent_id: str) -> None:
        conn_id = call.conn_id
        priority = queue.strategy.reservation_priority
        if priority is None:
            priority = self.config.reservation_priority
        try:
            answer = await self.links.reserve(dn, agent_id, conn_id, priority)
        except (ConnectionError, TimeoutError, OSError) as exc:
            answer = {"message": "EventError", "AttributeErrorCode": int(ErrorCode.INTERNAL_ERROR),
                      "AttributeErrorMessage": f"no t-controller: {exc}"}
            # no answer: the owner may have granted it all the same
            self._refused(queue, call, dn, "RequestReserveAgent", answer, hold=HOLD_TIMEOUT)
            return
        if answer.get("message") != "EventAgentReserved":
            hold = None
            if answer.get("AttributeErrorCode") == ErrorCode.AGENT_RESERVATION_CONFLICT:
                until = self._reserved_elsewhere.pop(dn, None)
                hold = until - self.loop.time() if until is not None else HOLD_TIMEOUT
            self._refused(queue, call, dn, "RequestReserveAgent", answer, hold=hold)
            return
        self._tally(self.reservations, "granted")
        # the owner keeps the agent for this call that long, whatever the route does
        reserved_for = _seconds(answer.get("AttributeTimeout"))
        try:
            routed = await self.links.route(call.node, call.routing_point, conn_id, dn)
        except (ConnectionError, TimeoutError, OSError) as exc:
            routed = {"message": "EventError", "AttributeErrorCode": int(ErrorCode.INTERNAL_ERROR),
                      "AttributeErrorMessage": f"node {call.node} unreachable: {exc}"}
        if routed.get("message") == "EventRouteUsed":
            self._report("EventDiverted", queue, call, OtherDN=dn, AgentID=agent_id)
            self._routed(queue, call)
            self.log.info("call_routed", conn_id=conn_id, queue=queue.strategy.queue, to=dn,
                          agent_id=agent_id, waited=round(call.waited(self.clock()), 3))
            record = self.pool.agents.get(dn)
            if record is not None and record.held:
                # held until the call rings on the DN (the t-controller reports it)
                self._hold(dn, HOLD_TIMEOUT)
            return
        self._refused(queue, call, dn, "RequestRouteCall", routed, hold=reserved_for)

    async def _route_to_site(self, queue: VirtualQueue, call: QueuedCall,
                             site: MonitoredSite) -> None:
        """A call for a monitored server's site: routed to the DN that reaches it;
        the site's own director picks the agent."""
        try:
            routed = await self.links.route(call.node, call.routing_point, call.conn_id,
                                            site.route_to)
        except (ConnectionError, TimeoutError, OSError) as exc:
            routed = {"message": "EventError", "AttributeErrorCode": int(ErrorCode.INTERNAL_ERROR),
                      "AttributeErrorMessage": f"node {call.node} unreachable: {exc}"}
        if routed.get("message") == "EventRouteUsed":
            self._report("EventDiverted", queue, call, OtherDN=site.route_to,
                         Reason={"monitored-server": site.name})
            self._routed(queue, call)
            self.log.info("call_routed_to_site", conn_id=call.conn_id,
                          queue=queue.strategy.queue, monitored_server=site.name,
                          to=site.route_to, waited=round(call.waited(self.clock()), 3))
            return
        code = routed.get("AttributeErrorCode")
        if self.errors is not None:
            self.errors.labels("RequestRouteCall", str(code)).inc()
        self.log.info("director_request_refused", request="RequestRouteCall",
                      conn_id=call.conn_id, monitored_server=site.name, dn=site.route_to,
                      code=code, reason=routed.get("AttributeErrorMessage"))
        if code == ErrorCode.UNKNOWN_CONNID:
            self._report("EventAbandoned", queue, call)
            self._end(queue, call.conn_id, "abandoned")
            return
        if call.conn_id in queue.calls:
            call.busy = False
            call.excluded.add(f"site:{site.name}")
            self.dispatch_soon()

    async def _treat(self, queue: VirtualQueue, call: QueuedCall) -> None:
        """RequestApplyTreatment for a call that waits (docs/director.md, "Treatments");
        a refusal is logged and counted, the call waits all the same."""
        strategy = queue.strategy
        try:
            answer = await self.links.apply_treatment(call.node, call.routing_point,
                                                      call.conn_id, strategy.treatment,
                                                      strategy.treatment_parms)
        except (ConnectionError, TimeoutError, OSError) as exc:
            answer = {"message": "EventError", "AttributeErrorCode": int(ErrorCode.INTERNAL_ERROR),
                      "AttributeErrorMessage": f"node {call.node} unreachable: {exc}"}
        if answer.get("message") == "EventTreatmentApplied":
            self._count(queue, "treated")
            self.log.info("call_treatment_applied", conn_id=call.conn_id,
                          queue=strategy.queue, treatment=strategy.treatment)
            return
        code = answer.get("AttributeErrorCode")
        if self.errors is not None:
            self.errors.labels("RequestApplyTreatment", str(code)).inc()
        self.log.info("director_request_refused", request="RequestApplyTreatment",
                      conn_id=call.conn_id, code=code,
                      reason=answer.get("AttributeErrorMessage"))

    def _routed(self, queue: VirtualQueue, call: QueuedCall) -> None:
        again = self._route_again.pop(call.conn_id, None)
        if call.waited(self.clock()) <= self.config.service_level_target:
            queue.stats["routed-in-target"] += 1
        self._end(queue, call.conn_id, "routed")
        if again is not None:
            self.on_route_request(*again)

    def _refused(self, queue: VirtualQueue, call: QueuedCall, dn: str, request: str,
                 answer: Mapping[str, Any], *, hold: float | None = None) -> None:
        """A request for ``call`` refused or unanswered: the agent is released, or
        held ``hold`` seconds while a reservation at its owner keeps it (module
        doc); the call waits again, without that agent unless it was a conflict."""
        self._route_again.pop(call.conn_id, None)  # not routed: the call still waits here
        code = answer.get("AttributeErrorCode")
        text = answer.get("AttributeErrorMessage")
        conflict = request == "RequestReserveAgent" \
            and code == ErrorCode.AGENT_RESERVATION_CONFLICT
        if hold is not None and hold > 0:
            self._hold(dn, hold)
        else:
            self._cancel_hold_timer(dn)
            self.pool.release(dn, self.clock())
        if self.errors is not None:
            self.errors.labels(request, str(code)).inc()
        if request == "RequestReserveAgent":
            self._tally(self.reservations, "conflict" if conflict else "refused")
            if conflict:
                queue.stats["conflicts"] += 1
        self.log.info("director_request_refused", request=request, conn_id=call.conn_id,
                      dn=dn, code=code, reason=text,
                      held=round(hold, 3) if hold is not None and hold > 0 else None)
        if request == "RequestRouteCall" and code == ErrorCode.UNKNOWN_CONNID:
            # the node no longer holds the call on the routing point
            self._report("EventAbandoned", queue, call)
            self._end(queue, call.conn_id, "abandoned")
            return
        if code == ErrorCode.AGENT_NOT_AVAILABLE:
            # the owner knows better (wrap-up, legal guard): not Ready until it says so
            self.pool.ready(dn, None, False, self.clock())
        if call.conn_id in queue.calls:
            call.busy = False
            if code != ErrorCode.AGENT_NOT_AVAILABLE and not conflict:
                call.excluded.add(dn)
            self.dispatch_soon()

    def _hold(self, dn: str, seconds: float) -> None:
        """Hold the agent ``seconds`` (the director's own timer: no request for it)."""
        self.pool.hold(dn, self.clock())
        self._cancel_hold_timer(dn)
        self._holds[dn] = self.loop.call_later(seconds, self._hold_expired, dn)

    def _cancel_hold_timer(self, dn: str) -> None:
        handle = self._holds.pop(dn, None)
        if handle is not None:
            handle.cancel()

    def _hold_expired(self, dn: str) -> None:
        self._holds.pop(dn, None)
        self.pool.release(dn, self.clock())
        self.dispatch()

    def _end(self, queue: VirtualQueue, conn_id: str, outcome: str) -> None:
        queue.remove(conn_id, outcome)
        self._call_queue.pop(conn_id, None)
        self._route_again.pop(conn_id, None)
        self._count(queue, outcome)

    def _report(self, name: str, queue: VirtualQueue, call: QueuedCall, **attrs: Any) -> None:
        if self.report is None:
            return
        event: dict[str, Any] = {"AttributeThisDN": queue.strategy.queue,
                                 "AttributeThisQueue": queue.strategy.queue,
                                 "AttributeConnID": call.conn_id}
        if call.user_data:
            event["AttributeUserData"] = dict(call.user_data)
        event.update({f"Attribute{k}": v for k, v in attrs.items()})
        self.report(name, event)

    def _drop(self, event: str, reason: str, **context: Any) -> None:
        if self.dropped is not None:
            self.dropped.labels(event, reason).inc()
        self.log.warning("director_event_dropped", tlib_event=event, reason=reason, **context)

    def _count(self, queue: VirtualQueue, outcome: str) -> None:
        if self.outcomes is not None:
            self.outcomes.labels(queue.strategy.queue, outcome).inc()

    @staticmethod
    def _tally(counter: Any, outcome: str) -> None:
        if counter is not None:
            counter.labels(outcome).inc()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._overflow_timer is not None:
            self._overflow_timer.cancel()
        for handle in self._holds.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- wallboard ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = self.clock()
        decisions = sorted(self.decisions)
        p99 = decisions[int(len(decisions) * 0.99)] if decisions else 0.0
        status: dict[str, Any] = {
            "queues": {name: {**q.status(now), "service-level": q.service_level()}
                       for name, q in self.queues.items()},
            "agents": self.pool.by_site(),
            "decision-p99-ms": round(p99 * 1000, 3),
        }
        if self.config.site:
            status["site"] = self.config.site
        if self.sites is not None:
            status.update(self.sites.status(now))
        return status
