"""The T-Controller of one cluster node: DN service state, DN ownership,
agent state and the fan-out of events to its clients (guide: "T-Controller",
"T-Controller DN Ownership", "Agent Availability for Routing"; docs/node.md).

The controller owns the state of the t-controller: the sans-I/O tables
(:class:`~daemons.t_controller.agent.AgentTable`,
:class:`~daemons.t_controller.ownership.OwnershipTable`), what the node link
said about each DN, the calls of its node, and who gets the events -- the
clients of TCport and of the Smart Proxy port
(:mod:`daemons.t_controller.clients`) and the peer t-controllers
(:mod:`daemons.t_controller.peers`). It turns the tables' outputs into events
for all of them, and keeps one loop timer for the tables' deadlines.

It is the sink of the **node link** to its sip-server
(:mod:`daemons.t_controller.node_link`): ``EventDNBackInService`` /
``EventDNOutOfService`` feed SIP-based ownership, call events feed agent
activity (on a call; after-call work for ``wrap-up-time`` once the last call
is released) and are relayed, answers to forwarded requests go back to the
desktop that asked. What the clients ask (:mod:`daemons.t_controller.requests`)
and what the peers send (:mod:`daemons.t_controller.mesh`) comes in through
its methods; the port handlers (:mod:`daemons.t_controller.tcport`,
:mod:`daemons.t_controller.smart_proxy`) and the mesh get the controller at
construction, the controller knows none of them.

The module is longer than the others (about 850 lines) on purpose: it is the
one place where the outputs of the agent, ownership and reservation tables
become events for desktops, peers and the Smart Proxy, so that an event's
fan-out rules are read in one file; the tables, the ports, the mesh and the
request handlers it drives live in their own modules.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from daemons.cluster.config import AppKind, ClusterConfig, OwnershipKind
from daemons.runtime.driver import TimerSlot
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics
from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.agent import (
    AgentEvent,
    AgentOptions,
    AgentSnapshot,
    AgentState,
    AgentTable,
    AgentWorkMode,
    EventAgentLogin,
    EventAgentNotReady,
)
from daemons.t_controller.agent_events import agent_event_attributes, agent_view_attributes
from daemons.t_controller.clients import SmartProxyClients, TCPortClients, event_is_valid
from daemons.t_controller.node_link import ForwardedRequest
from daemons.t_controller.ownership import (
    ClaimIgnored,
    DnServiceEvent,
    ForwardClaim,
    MovePending,
    OwnershipDecision,
    OwnershipGranted,
    OwnershipMoved,
    OwnershipOutput,
    OwnershipReleased,
    OwnershipTable,
    PeerLost,
)
from daemons.t_controller.peers import MeshOptions, PeerTable
from protocols.tlib.errors import ErrorCode
from protocols.tlib.framing import TMap
from protocols.tlib.mesh import DnGranted, DnMoved, DnReleased, MovedAgent

__all__ = ["CALL_EVENTS", "Answer", "DnService", "NodeCall", "TController", "decision_of",
           "wall_offset"]

#: Call events the sip-server sends on the node link (docs/node.md).
CALL_EVENTS = frozenset({
    "EventRinging", "EventDialing", "EventEstablished", "EventReleased", "EventHeld",
    "EventRetrieved", "EventPartyChanged", "EventQueued", "EventDiverted", "EventRouteUsed",
    "EventAttachedDataChanged", "EventRouteRequest",
})  # fmt: skip
#: Call events after which the DN is on the call.
_ON_CALL = frozenset({"EventRinging", "EventDialing", "EventEstablished", "EventHeld",
                      "EventRetrieved", "EventPartyChanged"})
#: ``agent-state`` values of a peer's DN that its agent's mirror here takes.
_ANNOUNCED_AGENT_STATES = frozenset({"Ready", "NotReady", "AfterCallWork"})
#: Calls of this node on agent DNs remembered for a peer owner's repeat (oldest dropped first).
MAX_NODE_CALLS = 100_000
#: Attributes of a received event that belong to the link, not to the event.
_LINK_ATTRIBUTES = frozenset({"message", "AttributeReferenceID", "AttributeEventSequenceNumber",
                              "AttributeTimeinSecs", "AttributeTimeinuSecs"})

#: The node link reports registrations and their removal, not refreshes: the
#: sip-server is the authority on expiry, so ownership learnt from it does not
#: lapse on its own (docs/node.md, "DN service state").
NODE_AUTHORITATIVE_EXPIRES = 10 * 365 * 86400.0

#: Seconds after the link comes back within which the sip-server repeats an
#: ``EventDNBackInService`` for each registered DN; a DN this node owned that
#: is not repeated by then lost its registration meanwhile.
DEFAULT_RESYNC_GRACE = 2.0

#: (connection, desktop ReferenceID) the first event of a batch answers.
Answer = tuple[TLibConnection, int]


def wall_offset() -> float:
    """Unix time minus the loop clock: the mesh carries times as Unix seconds."""
    return time.time() - time.monotonic()


@dataclass(slots=True)
class DnService:
    """What the node link said about a SIP DN's registration."""

    contact: str | None = None
    expires: int | None = None
    since: float = 0.0


@dataclass(slots=True)
class NodeCall:
    """A call of this node's sip-server on an agent DN, as its last call
    event left it: what the DN's owner on another node is told again when
    the link to it comes back (it forgot the call when it lost this node;
    guide: "TC-layer between DC1 and DC2 fails", step 4 of Agent 1: "call
    control comes back if TC-layer is recovered")."""

    dn: str
    conn_id: str
    name: str  # the last call event (EventRinging, EventEstablished, EventHeld ...)
    attributes: TMap
    answered: bool = False  # EventEstablished was seen: its release starts after-call work


class TController:
    """State and policy of one t-controller; I/O is the caller's."""

    def __init__(
        self,
        config: ClusterConfig,
        name: str,
        *,
        metrics: Metrics,
        clock: Callable[[], float] | None = None,
        resync_grace: float = DEFAULT_RESYNC_GRACE,
        mesh_options: MeshOptions | None = None,
    ) -> None:
        me = config.application(name, AppKind.T_CONTROLLER)
        self.config = config
        self.name = name
        self.app = me
        self.sip_server = config.sip_server_for(name)
        self.node = self.sip_server.name
        self.site = self.sip_server.geo_location
        self.loop = asyncio.get_running_loop()
        self.clock = clock if clock is not None else self.loop.time
        self.resync_grace = resync_grace
        self.log = get_logger("t_controller", application=name, node=self.node,
                              geo_location=self.site)
        options = AgentOptions.from_tserver(config.tserver_for(name))
        self.agents = AgentTable(
            options,
            site=self.site,
            agent_dns=frozenset(d.number for d in config.agent_dns()),
            check_password=_agent_password_check(config),
        )
        self.ownership = OwnershipTable.from_config(config, self.node, self.agents)
        self.kinds: dict[str, OwnershipKind] = dict(self.ownership.kinds)
        self.dn_services: dict[str, DnService] = {}
        self.metrics = metrics
        #: who gets the events: TCport's clients, the Smart Proxy port's (when
        #: the application has one), the peer t-controllers
        self.tcport_clients = TCPortClients()
        self.smart_proxy_clients = (SmartProxyClients() if me.port("smart-proxy-port")
                                    is not None else None)
        self.peers = PeerTable(
            config, self.node, self.ownership,
            options=mesh_options or MeshOptions.from_config(config.nodes),
            metrics=metrics, log=self.log.bind(component="mesh"),
            application_name=name, local_host=me.host)
        #: agents logged in on DNs peers own, as their events tell (AttributeAgentID ...)
        self.remote_agents: dict[str, dict[str, Any]] = {}
        self.link_up = False
        self._answered: set[tuple[str, str]] = set()  # (dn, conn id) that reached Established
        #: (dn, conn id) -> the calls of this node's sip-server on agent DNs
        self.node_calls: OrderedDict[tuple[str, str], NodeCall] = OrderedDict()
        self._node_call_ids: dict[str, set[str]] = {}  # dn -> conn ids of node_calls
        self._unconfirmed: set[str] = set()
        self._resync_deadline: float | None = None
        self._timer = TimerSlot(self.loop, lambda _now: self._on_timer())
        # metrics
        self.events_sent = metrics.counter(
            "tcontroller_events_sent", "T-Library events sent to clients", ("port",))
        self._sent_tc = self.events_sent.labels("tc-port")
        self._sent_sp = self.events_sent.labels("smart-proxy-port")
        self.node_events = metrics.tally(
            "tcontroller_node_events", "Events received on the node link", ("event",))
        #: log lines per ownership decision only when INFO is on (50,000 DNs at
        #: start-up); per registration and agent request only at DEBUG
        self.log_info = bool(self.log.is_enabled_for(logging.INFO))
        self.log_debug = bool(self.log.is_enabled_for(logging.DEBUG))
        self.node_events_dropped = metrics.counter(
            "tcontroller_node_events_dropped", "Node link events that could not be used",
            ("reason",))
        self.dns_in_service = metrics.gauge(
            "tcontroller_dns_in_service", "DNs in service owned by this node")
        self.dns_in_service.set_function(lambda: float(self.ownership.owned_count(self.node)))
        self.agents_by_state = metrics.gauge(
            "tcontroller_agents", "Agents logged in on this node, by state", ("state",))
        for state in AgentState:
            if state is not AgentState.LOGGED_OUT:
                self.agents_by_state.labels(state.value).set_function(self._agent_counter(state))
        self.link_gauge = metrics.gauge("tcontroller_node_link_up", "1 while the node link is up")
        self.link_gauge.set_function(lambda: 1.0 if self.link_up else 0.0)
        #: where the reservations granted here or announced by peers go, so the
        #: node does not offer a reserved agent another call (set by the request
        #: handling, which holds the node link; docs/t-controller.md, "Agent reservation")
        self.reservation_sink: Callable[[TMap], None] | None = None

    def _agent_counter(self, state: AgentState) -> Callable[[], float]:
        def count() -> float:
            return float(sum(1 for dn in self.agents.logged_in()
                             if self.agents.state(dn) is state))
        return count

    # -- queries ------------------------------------------------------------------
    def known_dn(self, dn: str) -> bool:
        return dn in self.config.dns

    def is_local(self, dn: str | None) -> bool:
        """Events of this DN belong to this node: it owns the DN, or the DN has
        no owner (routing points, queues, trunks: the node's own calls)."""
        if dn is None:
            return True
        if dn not in self.kinds:
            return True
        return self.ownership.owner(dn) == self.node

    def in_service(self, dn: str) -> bool:
        if dn not in self.kinds:
            return self.known_dn(dn)
        return self.ownership.owner(dn) is not None

    def dn_state(self, dn: str) -> dict[str, Any]:
        """The DN's state for ``EventRegistered`` / ``EventAddressInfo`` (Extensions)."""
        owner = self.ownership.owner(dn)
        kind = self.kinds.get(dn)
        view = self.agents.agent(dn)
        remote = self.remote_agents.get(dn) if owner is not None and owner != self.node \
            else None
        agent_state = remote["state"] if remote is not None else self.agents.state(dn)
        state: dict[str, Any] = {
            "dn-state": "in-service" if self.in_service(dn) else "out-of-service",
            "agent-state": agent_state.value,
            "on-call": self.agents.on_call(dn),
        }
        if owner is not None:
            state["owner"] = owner
        if kind is not None:
            state["ownership"] = kind.value
        if view is not None and self.site is not None:
            state["site"] = self.site
        return state

    def dn_service_attributes(self, dn: str) -> dict[str, Any]:
        """``EventDNBackInService`` of the DN, the same shape wherever it comes
        from (this node's decision, a peer's, a reconnection): the DN's state in
        ``AttributeExtensions`` (``owner``, ``ownership``, ``dn-state``,
        ``agent-state``, ``on-call``; ``contact`` when registered here) and the
        agent's attributes."""
        attributes = self.dn_attributes(dn)
        service = self.dn_services.get(dn)
        if service is not None and service.contact is not None:
            attributes["AttributeExtensions"]["contact"] = service.contact
        return attributes

    def dn_attributes(self, dn: str) -> dict[str, Any]:
        attributes = {"AttributeThisDN": dn, **agent_view_attributes(self.agents.agent(dn))}
        remote = self.remote_agents.get(dn)
        if remote is not None and self.ownership.owner(dn) not in (None, self.node):
            attributes.update({k: v for k, v in remote.items() if k.startswith("Attribute")})
        attributes["AttributeExtensions"] = self.dn_state(dn)
        return attributes

    def status(self) -> dict[str, Any]:
        """The ``/status/dns`` page."""
        dns: dict[str, Any] = {}
        for number, dn in sorted(self.config.dns.items()):
            if not dn.is_agent_dn and number not in self.dn_services:
                continue
            entry = self.dn_state(number)
            view = self.agents.agent(number)
            if view is not None:
                entry["agent-id"] = view.agent_id
                entry["work-mode"] = view.work_mode.name
                entry["reasons"] = dict(view.reasons)
            service = self.dn_services.get(number)
            if service is not None:
                entry["contact"] = service.contact
                entry["expires"] = service.expires
            dns[number] = entry
        return {"application": self.name, "node": self.node, "geo-location": self.site,
                "node-link": "up" if self.link_up else "down", "dns": dns}

    # -- fan-out ----------------------------------------------------------------
    def publish(self, name: str, attributes: TMap, *, answer: Answer | None = None,
                local: bool | None = None) -> None:
        """Send one event to the DN's clients on TCport and to the Smart Proxy;
        with ``answer`` the requester gets it with its own ReferenceID."""
        dn = attributes.get("AttributeThisDN")
        if name == "EventAgentReserved" and self.reservation_sink is not None:
            self.reservation_sink(attributes)
        if local is None:
            local = self.is_local(dn)
        requester = answer[0] if answer is not None else None
        targets = [c for c in self.tcport_clients.recipients(dn, local) if c is not requester]
        # checked once here for every recipient, and only when there is one
        trusted = event_is_valid(name, attributes) if targets or answer is not None else None
        sent = 0
        if answer is not None:
            answered = dict(attributes)
            answered["AttributeReferenceID"] = answer[1]
            if answer[0].send_event(name, answered, trusted=bool(trusted)) is not None:
                sent += 1
        for conn in targets:
            if conn.send_event(name, attributes, trusted=bool(trusted)) is not None:
                sent += 1
        if sent:
            self._sent_tc.inc(sent)
        if self.smart_proxy_clients is not None:
            delivered = self.smart_proxy_clients.publish(name, attributes, trusted=trusted)
            if delivered:
                self._sent_sp.inc(delivered)
        self.peers.publish(name, attributes, dn if isinstance(dn, str) else None, requester,
                           trusted=trusted)

    def deliver_remote(self, name: str, attributes: TMap,
                       answer: Answer | None = None) -> None:
        """An event a peer t-controller sent (of a DN it owns, or of a call on
        its node): to the clients here that registered the DN, and to the
        Smart Proxy when it is fed through the mesh (normal mode)."""
        dn = attributes.get("AttributeThisDN")
        if isinstance(dn, str) and name.startswith("EventAgent"):
            self.mirror_agent(name, attributes)
        if name == "EventAgentReserved" and self.reservation_sink is not None:
            self.reservation_sink(attributes)
        requester = answer[0] if answer is not None else None
        targets = [c for c in self.tcport_clients.recipients(
            dn if isinstance(dn, str) else None, False) if c is not requester]
        trusted = event_is_valid(name, attributes) if targets or answer is not None else None
        sent = 0
        if answer is not None:
            answered = dict(attributes)
            answered["AttributeReferenceID"] = answer[1]
            if answer[0].send_event(name, answered, trusted=bool(trusted)) is not None:
                sent += 1
        for conn in targets:
            if conn.send_event(name, attributes, trusted=bool(trusted)) is not None:
                sent += 1
        if sent:
            self._sent_tc.inc(sent)
        if self.smart_proxy_clients is not None and not self.peers.optimised:
            self.feed_smart_proxy(name, attributes, "mesh", trusted=trusted)

    def feed_smart_proxy(self, name: str, attributes: TMap, origin: str, *,
                         trusted: bool | None = None) -> int:
        """An event of another node for the Smart Proxy's clients (``origin``
        = its sip-server name, or ``mesh`` when a peer sent it here);
        ``trusted`` as for :meth:`SmartProxyClients.publish`. Returns how many
        clients got it."""
        clients = self.smart_proxy_clients
        if clients is None:
            return 0
        if name.startswith("EventAgent"):
            self.mirror_agent(name, attributes)
        delivered = clients.feed(name, attributes, origin, trusted=trusted)
        if delivered:
            self._sent_sp.inc(delivered)
        return delivered

    def mirror_agent(self, name: str, attributes: TMap) -> None:
        """Keep the agent state of a peer's DN from its agent events."""
        dn = attributes.get("AttributeThisDN")
        if not isinstance(dn, str):
            return
        if name == "EventAgentLogout":
            self.remote_agents.pop(dn, None)
            return
        work_mode = attributes.get("AttributeAgentWorkMode", "Unknown")
        reasons = attributes.get("AttributeReason") or {}
        if name == "EventAgentReady":
            state = AgentState.READY
        elif name == "EventAgentNotReady":
            state = (AgentState.AFTER_CALL_WORK if work_mode == "AfterCallWork"
                     and "ManualSetACWPeriod" not in reasons else AgentState.NOT_READY)
        elif name == "EventAgentLogin":
            state = AgentState.NOT_READY
        else:
            return
        entry = self.remote_agents.get(dn, {})
        agent_id = attributes.get("AttributeAgentID", entry.get("AttributeAgentID"))
        if not isinstance(agent_id, str):
            return
        entry = {"AttributeAgentID": agent_id, "AttributeAgentWorkMode": work_mode,
                 "state": state}
        if reasons:
            entry["AttributeReason"] = dict(reasons)
        self.remote_agents[dn] = entry

    def mirror_announced_agent(self, message: DnGranted) -> None:
        """The agent of a peer's DN as its owner announced it with the DN
        (a grant, or the state of the DN at a Smart Proxy's bulk registration)."""
        attributes = message.attributes
        if "AttributeAgentID" not in attributes:
            return
        dn = message.dn
        self.mirror_agent("EventAgentLogin", {"AttributeThisDN": dn, **attributes})
        state = message.state.get("agent-state")
        remote = self.remote_agents.get(dn)
        if remote is not None and state in _ANNOUNCED_AGENT_STATES:
            remote["state"] = AgentState(state)

    def publish_agent_events(self, events: Iterable[AgentEvent],
                             answer: Answer | None = None, *,
                             local: bool | None = None) -> None:
        for event in events:
            self.publish(event.name, agent_event_attributes(event), answer=answer, local=local)
            answer = None

    def apply(self, outputs: Iterable[OwnershipOutput], answer: Answer | None = None, *,
              claimant: tuple[str, str] | None = None,
              details: dict[str, TMap] | None = None) -> None:
        """Turn ownership-table outputs into events, log lines and decisions.

        ``claimant`` (client id, application name) goes with a T-Library claim
        sent to a peer owner; ``details`` adds attributes to the DN service
        event of a DN (the state a peer announced with its decision)."""
        now = self.clock()
        outputs = list(outputs)
        reclaim: list[str] = []
        # the table has changed already: the events of a DN that just left this
        # node (logout, out of service) still go to the smart clients here
        left_here = {o.dn for o in outputs
                     if (isinstance(o, OwnershipReleased) and o.node == self.node)
                     or (isinstance(o, OwnershipMoved) and o.from_node == self.node)}
        for out in outputs:
            if isinstance(out, AgentEvent):
                self.publish_agent_events([out], answer,
                                          local=True if out.this_dn in left_here else None)
                answer = None
            elif isinstance(out, DnServiceEvent):
                dn = out.this_dn
                local = True if dn in left_here else None
                attributes: TMap
                announced = details.get(dn) if details is not None else None
                if out.name == "EventDNBackInService":
                    attributes = self.dn_service_attributes(dn)
                    if announced is not None:  # the owner's word on its DN's state
                        ext = {**attributes["AttributeExtensions"],
                               **(announced.get("AttributeExtensions") or {})}
                        attributes = {**attributes, **announced, "AttributeThisDN": dn,
                                      "AttributeExtensions": ext}
                elif announced is not None:
                    attributes = {**announced, "AttributeThisDN": dn}
                else:
                    attributes = {"AttributeThisDN": dn}
                    owner = self.ownership.owner(dn)
                    if owner is not None:
                        attributes["AttributeExtensions"] = {"owner": owner}
                self.publish(out.name, attributes, answer=answer, local=local)
                answer = None
                if out.name == "EventDNOutOfService":
                    if self.ownership.owner(dn) is None and dn in self.dn_services \
                            and dn not in left_here:
                        reclaim.append(dn)  # registered here: a peer's claim lapsed
                    else:
                        self.dn_services.pop(dn, None)
                    self.publish_agent_events(self.agents.dn_out_of_service(dn, now),
                                              local=local)
                    remote = self.remote_agents.pop(dn, None)
                    if remote is not None:
                        self.deliver_remote("EventAgentLogout", {
                            "AttributeThisDN": dn, "AttributeAgentID": remote["AttributeAgentID"],
                            "AttributeAgentWorkMode": "Unknown",
                            "AttributeReason": {"cause": "logout-on-out-of-service"}})
            elif isinstance(out, OwnershipGranted | OwnershipReleased | OwnershipMoved):
                if self.log_info:
                    self.log.info("dn_ownership_" + type(out).__name__[9:].lower(), dn=out.dn,
                                  decision=repr(out))
                if self._is_own_decision(out):
                    self.peers.announce(self.decision_message(out))
            elif isinstance(out, PeerLost):
                self.forget_calls_of(out.node, now)
            elif isinstance(out, ForwardClaim):
                self.log.info("dn_ownership_claim_for_peer", dn=out.dn, owner=out.owner,
                              claimant=out.claimant)
                if out.kind is OwnershipKind.SIP:
                    self.peers.send_claim(out, expires=NODE_AUTHORITATIVE_EXPIRES)
                elif claimant is not None:
                    self.peers.send_claim(out, client=claimant[0], application=claimant[1])
            elif isinstance(out, MovePending):
                self.log.info("dn_ownership_move_pending", dn=out.dn, owner=out.owner,
                              claimant=out.claimant, waiting_for=out.waiting_for)
            elif isinstance(out, ClaimIgnored):
                self.log.debug("dn_ownership_claim_ignored", dn=out.dn, reason=out.reason)
        for dn in reclaim:
            self.log.info("dn_ownership_reclaimed", dn=dn)
            self.apply(self.ownership.sip_registered(dn, self.node, NODE_AUTHORITATIVE_EXPIRES,
                                                     now))
        self.schedule_timer()

    # -- ownership decisions on the mesh ------------------------------------------------
    def _is_own_decision(self, decision: OwnershipDecision) -> bool:
        """A decision of this node (announced to the peers), not one taken
        here about a peer's DNs (out of service when the peer is lost)."""
        if isinstance(decision, OwnershipMoved):
            return decision.from_node == self.node
        return decision.node == self.node

    def decision_message(self, decision: OwnershipDecision,
                         granted: type[DnGranted] = DnGranted,
                         ) -> DnGranted | DnMoved | DnReleased:
        """The mesh message of an ownership decision of this node; a grant
        carries the DN's state here (``granted``: :class:`DnSnapshot` for a
        Smart Proxy's bulk registration)."""
        offset = wall_offset()
        now = self.clock()
        if isinstance(decision, OwnershipReleased):
            return DnReleased(decision.dn, decision.node, decision.cause)
        since = decision.since + offset
        expires_in = None if decision.expires is None else decision.expires - now
        if isinstance(decision, OwnershipMoved):
            snapshot = decision.snapshot
            return DnMoved(decision.dn, decision.to_node, decision.from_node,
                           decision.kind.value, since, expires_in,
                           None if snapshot is None else MovedAgent(
                               snapshot.agent_id, snapshot.dn, snapshot.state.value,
                               int(snapshot.work_mode), dict(snapshot.reasons)))
        attributes = self.dn_service_attributes(decision.dn)
        state = {k: v for k, v in attributes.pop("AttributeExtensions").items()
                 if k not in ("owner", "ownership")}  # the decision's own
        del attributes["AttributeThisDN"]
        return granted(decision.dn, decision.node, decision.kind.value, since, expires_in,
                       state, attributes)

    def owned_dn_messages(self, granted: type[DnGranted] = DnGranted) -> Iterator[DnGranted]:
        """Every DN this node owns, with its state: the ``granted`` decisions a
        peer gets when it connects, the :class:`DnSnapshot` a Smart Proxy gets."""
        ownership = self.ownership
        for dn in ownership.owned_by(self.node):
            view = ownership.view(dn)
            if view is None:
                continue
            decision = OwnershipGranted(dn, view.node, view.kind, view.since, view.expires)
            message = self.decision_message(decision, granted)
            assert isinstance(message, DnGranted)
            yield message

    # -- calls on other nodes ---------------------------------------------------------
    def forget_calls_of(self, node: str, now: float) -> None:
        """The peer ``node`` is lost (``tc-reconnect-timeout``): its calls no
        longer count for this node's DNs -- ``on-call`` is false, an agent may
        log in, a move that waited for the call may go. No event goes to the
        desktops: the guide reports no call (Agent 2, step 7) and no release
        (Agent 1: no call-related T-Events until the link is back). The peer's
        repeat on reconnection (:meth:`restore_call`) brings them back."""
        conn_ids = self.peers.forget_calls(node)
        if not conn_ids:
            return
        dns = self.agents.drop_calls(conn_ids, now)
        self._answered = {a for a in self._answered if a[1] not in conn_ids}
        self.log.info("peer_calls_forgotten", peer_node=node, calls=len(conn_ids),
                      dns=len(dns))

    def restore_call(self, name: str, attributes: TMap, *, answered: bool) -> bool:
        """A peer's repeat of a call on its node for a DN this node owns: taken
        in as its call event when this node does not know the call (it forgot
        it when it lost the peer, or it restarted); False when it knew it."""
        dn = attributes.get("AttributeThisDN")
        conn_id = attributes.get("AttributeConnID")
        if not isinstance(dn, str) or not isinstance(conn_id, str):
            return False
        if conn_id in self.agents.calls(dn):
            return False
        if answered:
            self._answered.add((dn, conn_id))
        self.log.info("peer_call_restored", dn=dn, conn_id=conn_id, tlib_event=name)
        self.on_owned_call_event(name, attributes, None)
        return True

    def calls_for_owner(self, owner: str, dn: str | None = None) -> list[NodeCall]:
        """The calls of this node on the DNs ``owner`` owns (only ``dn``'s if given)."""
        ownership = self.ownership
        if dn is not None:
            if ownership.owner(dn) != owner:
                return []
            return [self.node_calls[(dn, c)] for c in sorted(self._node_call_ids.get(dn, ()))]
        return [call for call in self.node_calls.values() if ownership.owner(call.dn) == owner]

    def _track_node_call(self, name: str, dn: str, attributes: TMap) -> None:
        conn_id = attributes.get("AttributeConnID")
        if not isinstance(conn_id, str):
            return
        calls = self.node_calls
        if name in _ON_CALL:
            previous = attributes.get("AttributePreviousConnID")
            if isinstance(previous, str) and previous != conn_id:
                self._forget_node_call(dn, previous)
            call = calls.get((dn, conn_id))
            if call is None:
                calls[(dn, conn_id)] = call = NodeCall(dn, conn_id, name, attributes)
                self._node_call_ids.setdefault(dn, set()).add(conn_id)
                while len(calls) > MAX_NODE_CALLS:
                    oldest = next(iter(calls))
                    self._forget_node_call(*oldest)
            else:
                call.name, call.attributes = name, attributes
            if name == "EventEstablished":
                call.answered = True
        elif name in ("EventReleased", "EventDiverted"):
            self._forget_node_call(dn, conn_id)

    def _forget_node_call(self, dn: str, conn_id: str) -> None:
        if self.node_calls.pop((dn, conn_id), None) is None:
            return
        ids = self._node_call_ids[dn]
        ids.discard(conn_id)
        if not ids:
            del self._node_call_ids[dn]

    # -- agent requests -------------------------------------------------------------
    def agent_login_events(self, events: list[AgentEvent]) -> list[AgentEvent]:
        """``EventAgentLogin`` already says the agent is NotReady: the state
        machine's NotReady right after it is not sent (classic T-Library:
        a login gives ``EventAgentLogin``, then ``EventAgentReady`` only for the
        AutoIn / ManualIn work modes or ``emulated-login-state = ready``)."""
        if (len(events) == 2 and isinstance(events[0], EventAgentLogin)
                and isinstance(events[1], EventAgentNotReady)):
            return events[:1]
        return events

    def owner_check(self, dn: str) -> tuple[ErrorCode, str] | None:
        """Agent requests need a DN this node owns."""
        if dn not in self.kinds:
            return None  # not an agent DN: the agent table refuses it
        owner = self.ownership.owner(dn)
        if owner is None:
            return ErrorCode.DN_OUT_OF_SERVICE, f"DN {dn} is out of service"
        if owner != self.node:
            return ErrorCode.DN_NOT_OWNED, f"DN {dn} is owned by {owner}, not by {self.node}"
        return None

    # -- node link --------------------------------------------------------------------
    def on_link_up(self) -> None:
        self.link_up = True
        now = self.clock()
        self._unconfirmed = {dn for dn in self.ownership.owned_by(self.node)
                             if self.kinds.get(dn) is OwnershipKind.SIP}
        self._resync_deadline = now + self.resync_grace if self._unconfirmed else None
        self.log.info("node_link_up", owned_sip_dns=len(self._unconfirmed))
        self.schedule_timer()

    def on_link_down(self, reason: str, lost: list[ForwardedRequest]) -> None:
        self.link_up = False
        self._resync_deadline = None
        for request in lost:
            conn = request.origin
            if isinstance(conn, TLibConnection):
                conn.answer_error(request.reference_id, ErrorCode.INTERNAL_ERROR,
                                  f"Node link to {self.node} lost ({reason}): "
                                  f"{request.name} has no answer")

    def on_node_event(self, event: TMap, answers: ForwardedRequest | None) -> None:
        name = event.get("message")
        if not isinstance(name, str):
            self.node_events_dropped.labels("no-name").inc()
            return
        self.node_events.labels(name).inc()
        attributes = {k: v for k, v in event.items() if k not in _LINK_ATTRIBUTES}
        answer: Answer | None = None
        if answers is not None and isinstance(answers.origin, TLibConnection):
            answer = (answers.origin, answers.reference_id)
        if answers is not None and answers.name == "RequestReserveAgent":
            return  # the node noted a reservation passed on to it (reservation_sink)
        if name == "EventDNBackInService":
            self._dn_back_in_service(attributes)
        elif name == "EventDNOutOfService":
            self._dn_out_of_service(attributes)
        elif name in ("EventACK", "EventError"):
            if answer is not None:
                answered = dict(attributes)
                answered["AttributeReferenceID"] = answer[1]
                if name == "EventError":
                    answer[0].server.count_error(int(attributes.get("AttributeErrorCode", 70)))
                answer[0].send_event(name, answered)
            else:
                self.node_events_dropped.labels("unanswerable").inc()
                self.log.warning("node_event_without_request", tlib_event=name,
                                 code=attributes.get("AttributeErrorCode"),
                                 text=attributes.get("AttributeErrorMessage"))
        elif name in CALL_EVENTS:
            self._call_event(name, attributes, answer)
        else:
            self.publish(name, attributes, answer=answer)

    def _dn_back_in_service(self, attributes: TMap) -> None:
        dn = attributes.get("AttributeThisDN")
        if not isinstance(dn, str):
            return
        extensions = attributes.get("AttributeExtensions") or {}
        now = self.clock()
        self._unconfirmed.discard(dn)
        if self.kinds.get(dn) is not OwnershipKind.SIP:
            self.node_events_dropped.labels("not-a-sip-dn").inc()
            self.log.warning("dn_back_in_service_ignored", dn=dn,
                             reason="not a SIP-owned DN of the switch")
            return
        expires = extensions.get("expires")
        self.dn_services[dn] = DnService(
            contact=extensions.get("contact") if isinstance(extensions.get("contact"), str)
            else None,
            expires=expires if isinstance(expires, int) else None,
            since=now,
        )
        self.apply(self.ownership.sip_registered(dn, self.node, NODE_AUTHORITATIVE_EXPIRES, now))

    def _dn_out_of_service(self, attributes: TMap) -> None:
        dn = attributes.get("AttributeThisDN")
        if not isinstance(dn, str):
            return
        self._unconfirmed.discard(dn)
        self.dn_services.pop(dn, None)
        self.apply(self.ownership.sip_unregistered(dn, self.node, self.clock()))

    def _call_event(self, name: str, attributes: TMap, answer: Answer | None) -> None:
        dn = attributes.get("AttributeThisDN")
        if isinstance(dn, str) and dn in self.kinds:
            self._track_node_call(name, dn, attributes)
        if isinstance(dn, str):
            owner = self.peers.owner_peer(dn)
            if owner is not None:
                # the owner processes and relays the events of its DNs
                self.peers.to_owner(owner, name, attributes, answer)
                return
        self.on_owned_call_event(name, attributes, answer)

    def on_owned_call_event(self, name: str, attributes: TMap, answer: Answer | None) -> None:
        """A call event of a DN this node owns (or of no owner), from this
        node's sip-server or from the node of a peer where the call is."""
        dn = attributes.get("AttributeThisDN")
        conn_id = attributes.get("AttributeConnID")
        self.publish(name, attributes, answer=answer)
        if not isinstance(dn, str) or not isinstance(conn_id, str):
            return
        now = self.clock()
        events: list[AgentEvent] = []
        if name in _ON_CALL:
            events += self.agents.call_established(dn, conn_id, now)
            if name == "EventEstablished":
                self._answered.add((dn, conn_id))
            previous = attributes.get("AttributePreviousConnID")
            if isinstance(previous, str) and previous != conn_id:
                self._answered.discard((dn, previous))
                events += self.agents.call_released(dn, previous, now, wrap_up_time=0.0)
        elif name in ("EventReleased", "EventDiverted"):
            answered = (dn, conn_id) in self._answered
            self._answered.discard((dn, conn_id))
            wrap_up: float | None = 0.0
            if answered and name == "EventReleased":
                wrap_up = _wrap_up_override(attributes)
            events += self.agents.call_released(dn, conn_id, now, wrap_up_time=wrap_up)
            if name == "EventReleased":  # a routed call unanswered: agent-no-answer-action
                events += self.agents.no_answer(dn, attributes.get("AttributeReason"), now)
        else:
            return
        if events:
            self.publish_agent_events(events)
        self.schedule_timer()

    # -- timers -------------------------------------------------------------------------
    def schedule_timer(self) -> None:
        times = [t for t in (self.agents.next_timer(), self.ownership.next_timer(),
                             self._resync_deadline) if t is not None]
        self._timer.arm(min(times) if times else None)

    def _on_timer(self) -> None:
        now = self.clock()
        try:
            if self._resync_deadline is not None and now >= self._resync_deadline:
                self._resync_deadline = None
                stale, self._unconfirmed = self._unconfirmed, set()
                for dn in sorted(stale):
                    self.log.info("dn_registration_lost_while_link_down", dn=dn)
                    self.dn_services.pop(dn, None)
                    self.apply(self.ownership.sip_unregistered(dn, self.node, now))
            self.publish_agent_events(self.agents.handle_timer(now))
            self.apply(self.ownership.handle_timer(now))
        except Exception:
            self.log.exception("t_controller_timer_failed")
        self.schedule_timer()

    def close(self) -> None:
        self._timer.cancel()


def _wrap_up_override(attributes: TMap) -> float | None:
    """``AttributeExtensions`` ``wrap-up-time`` of the call overrides the
    application option (docs/configuration.md, ``wrap-up-time``)."""
    extensions = attributes.get("AttributeExtensions") or {}
    value = extensions.get("wrap-up-time")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def decision_of(message: DnGranted | DnMoved | DnReleased, now: float,
                sender: str) -> OwnershipDecision:
    """The ownership decision of a peer's mesh message (the other way:
    :meth:`TController.decision_message`); ValueError for an ownership kind,
    an agent state or a work mode this build does not know."""
    if isinstance(message, DnReleased):
        return OwnershipReleased(message.dn, message.owner, message.cause or "released")
    ownership = OwnershipKind(message.ownership)
    since = message.since - wall_offset()
    expires = now + message.expires_in if message.expires_in is not None else None
    if isinstance(message, DnMoved):
        agent = message.snapshot
        snapshot = None if agent is None else AgentSnapshot(
            agent_id=agent.agent_id, dn=agent.dn, state=AgentState(agent.state),
            work_mode=AgentWorkMode(agent.work_mode),
            reasons=MappingProxyType(dict(agent.reasons)))
        return OwnershipMoved(message.dn, message.from_node or sender, message.owner,
                              ownership, since, expires, snapshot)
    return OwnershipGranted(message.dn, message.owner, ownership, since, expires)


def _agent_password_check(config: ClusterConfig) -> Callable[[str, str | None], bool] | None:
    """RequestAgentLogin's AttributePassword against the agent login's password
    (``[agent-logins.ID] password``), compared in constant time; an agent with
    no configured password logs in without one. None: no agent has one."""
    passwords = {a.agent_id: a.password for a in config.agent_logins.values() if a.password}
    if not passwords:
        return None

    def check(agent_id: str, given: str | None) -> bool:
        expected = passwords.get(agent_id)
        if expected is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())
    return check
