"""The T-Controller mesh: one link from this t-controller to every other
t-controller of the cluster (guide: "T-Controller", "T-Controller DN
Ownership", "DN Availability for Routing", "Smart Proxy", "Troubleshooting
T-Controllers communication issues"; docs/t-controller.md).

Wire: T-Library over TCport. Each t-controller connects to the ``tc-port`` of
every peer as a *smart* client named after itself (its application name in
the cluster file), binding its own host address as the local address, with
ADDP (``addp-timeout`` / ``addp-remote-timeout``) and reconnection with
backoff. A pair of t-controllers therefore has two connections: on the one a
t-controller opened (its *client connection*) it sends requests -- ownership
claims, DN interest, requests of its desktops for DNs the peer owns, latency
polls; on the one the peer opened (its *server connection*) it sends events.

What goes to a peer:

* **ownership decisions** (always): ``EventDNBackInService`` /
  ``EventDNOutOfService`` with ``AttributeExtensions`` ``mesh`` = ``granted``,
  ``moved`` or ``released`` and the owner, the kind, the time of the claim
  (Unix seconds) and, for a move, the agent snapshot of
  ``agent-state-auto-restore``. On each (re)connection the owner repeats a
  ``granted`` for every DN it owns, with the DN's current agent state;
* **events of the DNs this node owns** (DN, agent, call events, the call
  events of other nodes included): to every peer when ``smart-proxy-enabled``
  is false; in the optimised mode only to the peers whose clients registered
  the DN (``RequestRegisterAddress`` with ``mesh = interest``);
* **call events of this node for a DN a peer owns**: to the owner only, which
  processes them as its own (agent activity, after-call work) and relays them
  to its clients and the interested peers -- so a desktop anywhere sees the
  call and agent events of its DN in the owner's order.

Requests of a desktop for a DN a peer owns (register, agent, call control)
are forwarded to the owner under a ReferenceID of the link and answered back
with the desktop's own; the owner sends call control to the node where the
call is. A link down for ``tc-reconnect-timeout`` seconds puts the peer's DNs
out of service here (``OwnershipTable.peer_lost``) and makes this node forget
the peer's calls on the DNs it owns (``PeerLost``); when the link is back, a
node repeats to each owner the calls it has on the owner's DNs (its last call
event with ``AttributeExtensions`` ``mesh`` = ``call-state``), and the owner
takes in those it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from daemons.cluster.config import OwnershipKind
from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.agent import AgentSnapshot, AgentState, AgentWorkMode
from daemons.t_controller.controller import CALL_EVENTS, event_is_valid
from daemons.t_controller.latency import LatencyStats, event_wall_time
from daemons.t_controller.node_link import ForwardedRequest, NodeLink, NodeLinkDown
from daemons.t_controller.ownership import (
    ForwardClaim,
    OwnershipDecision,
    OwnershipGranted,
    OwnershipMoved,
    OwnershipReleased,
)
from protocols.tlib.errors import ErrorCode, TLibError
from protocols.tlib.framing import TMap
from protocols.tlib.mesh import (
    CallState,
    ClaimWithdrawn,
    DnGranted,
    DnMoved,
    DnReleased,
    DnSnapshot,
    Interest,
    MalformedMeshMessage,
    MovedAgent,
    OwnershipClaim,
    RelayedRequest,
    decode_event,
    decode_request,
)
from protocols.tlib.session import RequestReceived

if TYPE_CHECKING:
    from collections.abc import Callable

    from daemons.t_controller.controller import TController

__all__ = ["SMART_PROXY_PREFIX", "Mesh", "Peer", "PeerLink", "smart_proxy_name"]

#: Application name prefix of a Smart Proxy's bulk connections to t-controllers.
SMART_PROXY_PREFIX = "SmartProxy@"
#: Attributes of a received event that belong to the link, not to the event.
_LINK_ATTRIBUTES = frozenset({"message", "AttributeReferenceID", "AttributeEventSequenceNumber",
                              "AttributeTimeinSecs", "AttributeTimeinuSecs"})
#: Calls of other nodes remembered for routing call control (oldest dropped first).
MAX_CALL_ROUTES = 100_000
_POLL = object()  # origin of a latency poll
#: ``mesh`` values of the ownership decisions (a malformed one counts as bad-decision).
_DECISIONS = frozenset({DnGranted.marker, DnMoved.marker, DnReleased.marker})


def smart_proxy_name(t_controller: str) -> str:
    """The application name a Smart Proxy registers with on other t-controllers."""
    return SMART_PROXY_PREFIX + t_controller


def _wall_offset() -> float:
    return time.time() - time.monotonic()


class PeerLink(NodeLink):
    """The link to a peer t-controller: a :class:`NodeLink` that binds this
    daemon's own address (so a data-centre cut by source address applies)."""

    def __init__(self, sink: Any, *, local_host: str | None, client_type: str = "smart",
                 **kwargs: Any) -> None:
        super().__init__(sink, local_host=local_host, client_type=client_type,
                         log_name="peer_link", **kwargs)

    def send(self, name: str, attributes: Mapping[str, Any], *, origin: Any = None,
             reference_id: int = 0) -> ForwardedRequest:
        return self.forward(name, attributes, origin=origin, reference_id=reference_id)

    def queued_bytes(self) -> int:
        client = self.client
        transport = getattr(client, "_transport", None) if client is not None else None
        if transport is None or transport.is_closing():
            return 0
        return int(transport.get_write_buffer_size())


@dataclass
class Peer:
    """Another t-controller of the cluster, as this one sees it."""

    node: str  # its sip-server (ownership is by node)
    tc: str  # its application name
    host: str
    port: int
    link: PeerLink | None = None
    conn: TLibConnection | None = None  # its link to our TCport: our events go there
    interests: set[str] = field(default_factory=set)
    stats: LatencyStats = field(init=False)
    up_since: float | None = None
    #: ``tcontroller_mesh_messages{peer,direction}`` children, set by the mesh
    tx: Any = None
    rx: Any = None

    def __post_init__(self) -> None:
        self.stats = LatencyStats(self.tc)

    @property
    def link_up(self) -> bool:
        return self.link is not None and self.link.up


class _PeerSink:
    """The link callbacks of one peer, bound to the mesh."""

    def __init__(self, mesh: Mesh, peer: Peer) -> None:
        self.mesh = mesh
        self.peer = peer

    def on_link_up(self) -> None:
        self.mesh.link_up(self.peer)

    def on_link_down(self, reason: str, lost: list[ForwardedRequest]) -> None:
        self.mesh.link_down(self.peer, reason, lost)

    def on_node_event(self, event: TMap, answers: ForwardedRequest | None) -> None:
        self.mesh.on_peer_event(self.peer, event, answers)


class Mesh:
    """The t-controller's side of the mesh (see the module doc)."""

    def __init__(self, controller: TController, *, optimised: bool | None = None,
                 poll_interval: float | None = None, backoff_max: float = 2.0) -> None:
        self.controller = controller
        config = controller.config
        nodes = config.nodes
        self.optimised = nodes.smart_proxy_enabled if optimised is None else optimised
        self.poll_interval = (float(nodes.tc_latency_poll_interval) if poll_interval is None
                              else poll_interval)
        self.addp_timeout = float(nodes.addp_timeout)
        self.addp_remote_timeout = float(nodes.addp_remote_timeout)
        self.backoff_max = backoff_max
        self.log = controller.log.bind(component="mesh")
        self.peers: dict[str, Peer] = {}  # by node
        self.by_tc: dict[str, Peer] = {}
        for node in config.cluster_nodes():
            if node.name == controller.node:
                continue
            tc = config.t_controller_for(node.name)
            port = tc.port("tc-port")
            assert port is not None
            peer = Peer(node.name, tc.name, tc.host, port)
            self.peers[node.name] = peer
            self.by_tc[tc.name] = peer
        #: DN -> number of this node's TCport clients that registered it
        self.local_interest: dict[str, int] = {}
        #: ConnID -> node of a call seen from a peer (for call control on it)
        self.call_nodes: OrderedDict[str, str] = OrderedDict()
        self._poll_task: asyncio.Task[None] | None = None
        metrics = controller.metrics
        self.messages = metrics.counter(
            "tcontroller_mesh_messages", "T-Library messages to and from peer t-controllers "
            "(keep-alives and latency polls excluded)", ("peer", "direction"))
        self.dropped = metrics.counter(
            "tcontroller_mesh_dropped", "Mesh messages that could not be sent or used",
            ("reason",))
        latency = metrics.gauge(
            "tcontroller_peer_latency_seconds",
            "Latency poll statistics per peer (guide: RTT, TXT, RXT)", ("peer", "stat"))
        queue = metrics.gauge(
            "tcontroller_peer_queue_bytes",
            "Bytes queued to a peer (TX_QUEUE_LEN: client connection, RX_QUEUE_LEN: server "
            "connection)", ("peer", "queue"))
        last = metrics.gauge("tcontroller_peer_last_poll_timestamp",
                             "LAST_TS: Unix time of the last answered poll", ("peer",))
        up = metrics.gauge("tcontroller_peer_link_up", "1 while the link to the peer is up",
                           ("peer",))
        for peer in self.peers.values():
            peer.tx = self.messages.labels(peer.tc, "tx")
            peer.rx = self.messages.labels(peer.tc, "rx")
            for stat in ("rtt", "txt", "rxt"):
                latency.labels(peer.tc, stat).set_function(_stat_getter(peer, stat))
            queue.labels(peer.tc, "tx").set_function(_peer_gauge(peer, self._tx_queue))
            queue.labels(peer.tc, "rx").set_function(_peer_gauge(peer, self._rx_queue))
            last.labels(peer.tc).set_function(
                _peer_gauge(peer, lambda p: p.stats.last_ts or 0.0))
            up.labels(peer.tc).set_function(_peer_gauge(peer, lambda p: 1.0 if p.link_up else 0.0))
        controller.mesh = self
        controller.decision_listeners.append(self.announce)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        app = self.controller.app
        for peer in self.peers.values():
            peer.link = PeerLink(
                _PeerSink(self, peer), local_host=app.host, host=peer.host, port=peer.port,
                application_name=self.controller.name, addp_timeout=self.addp_timeout,
                addp_remote_timeout=self.addp_remote_timeout, backoff_max=self.backoff_max)
            peer.link.log = peer.link.log.bind(peer_tc=peer.tc)
            peer.link.start()
        if self.poll_interval > 0 and self.peers:
            self._poll_task = asyncio.create_task(self._poll_loop(), name="tc-latency-polls")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        for peer in self.peers.values():
            if peer.link is not None:
                await peer.link.stop()

    # -- queries -------------------------------------------------------------------
    def is_peer(self, conn: TLibConnection) -> bool:
        return conn.client_type == "smart" and conn.application in self.by_tc

    def peer_of(self, conn: TLibConnection) -> Peer | None:
        peer = self.by_tc.get(conn.application)
        return peer if peer is not None and peer.conn is conn else None

    def owner_peer(self, dn: str) -> Peer | None:
        """The peer that owns ``dn``, or None (owned here, or by nobody)."""
        owner = self.controller.ownership.owner(dn)
        return self.peers.get(owner) if owner is not None else None

    def status(self) -> dict[str, Any]:
        """``/status/peers``: link state and latency statistics per peer."""
        peers: dict[str, Any] = {}
        for peer in self.peers.values():
            stats = peer.stats
            stats.tx_queue_len = self._tx_queue(peer)
            stats.rx_queue_len = self._rx_queue(peer)
            peers[peer.tc] = {
                "node": peer.node,
                "address": f"{peer.host}:{peer.port}",
                "client-connection": "up" if peer.link_up else "down",
                "server-connection": "up" if peer.conn is not None else "down",
                "connects": peer.link.connects if peer.link is not None else 0,
                "owned-dns": self.controller.ownership.owned_count(peer.node),
                "interests": len(peer.interests),
                **stats.to_dict(),
            }
        return {"application": self.controller.name, "node": self.controller.node,
                "mode": "optimised" if self.optimised else "normal",
                "tc-latency-poll-interval": self.poll_interval, "peers": peers}

    def _tx_queue(self, peer: Peer) -> int:
        return peer.link.queued_bytes() if peer.link is not None else 0

    def _rx_queue(self, peer: Peer) -> int:
        conn = peer.conn
        if conn is None or conn.transport.is_closing():
            return 0
        return int(conn.transport.get_write_buffer_size())

    # -- sending ---------------------------------------------------------------------------
    def _send_event(self, peer: Peer, name: str, attributes: TMap, *,
                    trusted: bool = False) -> bool:
        conn = peer.conn
        if conn is None or conn.send_event(name, attributes, trusted=trusted) is None:
            self.dropped.labels("peer-not-connected").inc()
            return False
        peer.tx.inc()
        return True

    def _send_request(self, peer: Peer, name: str, attributes: Mapping[str, Any], *,
                      origin: Any = None, reference_id: int = 0) -> bool:
        link = peer.link
        if link is None:
            return False
        try:
            link.send(name, attributes, origin=origin, reference_id=reference_id)
        except NodeLinkDown:
            self.dropped.labels("link-down").inc()
            return False
        peer.tx.inc()
        return True

    def _send_message(self, peer: Peer, message: Interest | OwnershipClaim | ClaimWithdrawn,
                      ) -> bool:
        name, attributes = message.to_wire()
        return self._send_request(peer, name, attributes)

    # -- events out ------------------------------------------------------------------------
    def publish(self, name: str, attributes: TMap, dn: str | None,
                requester: TLibConnection | None = None, *,
                trusted: bool | None = None) -> int:
        """An event this t-controller published to its own clients: to the
        peers that need it (module doc). Returns the messages sent.
        ``trusted``: whether the event passed the catalogue check (None: not
        checked yet, checked here once for every peer)."""
        if name in ("EventDNBackInService", "EventDNOutOfService"):
            return 0  # peers derive them from the ownership decisions
        sent = 0
        for peer in self.peers.values():
            conn = peer.conn
            if conn is None or conn is requester:
                continue
            if self.optimised and (dn is None or dn not in peer.interests):
                continue
            if trusted is None:
                trusted = event_is_valid(name, attributes)
            if self._send_event(peer, name, attributes, trusted=trusted):
                sent += 1
        return sent

    def to_owner(self, owner: Peer, name: str, attributes: TMap,
                 answer: tuple[TLibConnection, int] | None) -> bool:
        """A call event of this node for a DN ``owner`` owns."""
        attrs = dict(attributes)
        if answer is not None:
            if answer[0] is owner.conn:
                attrs["AttributeReferenceID"] = answer[1]
            else:  # asked here before the DN moved: answer here too
                answered = dict(attributes)
                answered["AttributeReferenceID"] = answer[1]
                answer[0].send_event(name, answered)
        return self._send_event(owner, name, attrs)

    def announce(self, decision: OwnershipDecision) -> None:
        """An ownership decision of this node: to every peer."""
        local = self.controller.node
        if isinstance(decision, OwnershipReleased) and decision.node != local:
            return  # a peer's DNs this side put out of service: not ours to announce
        if isinstance(decision, OwnershipGranted) and decision.node != local:
            return
        if isinstance(decision, OwnershipMoved) and decision.from_node != local:
            return
        name, attributes = self.decision_message(decision).to_wire()
        trusted = event_is_valid(name, attributes)  # checked once for every peer
        for peer in self.peers.values():
            self._send_event(peer, name, attributes, trusted=trusted)

    def decision_message(self, decision: OwnershipDecision,
                         granted: type[DnGranted] = DnGranted,
                         ) -> DnGranted | DnMoved | DnReleased:
        """The mesh message of an ownership decision of this node; a grant
        carries the DN's state here (``granted``: :class:`DnSnapshot` for a
        Smart Proxy's bulk registration)."""
        controller = self.controller
        offset = _wall_offset()
        now = controller.clock()
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
        attributes = controller.dn_service_attributes(decision.dn)
        state = attributes.pop("AttributeExtensions", {})
        del attributes["AttributeThisDN"]
        return granted(decision.dn, decision.node, decision.kind.value, since, expires_in,
                       state, attributes)

    def snapshot(self, conn: TLibConnection, *, granted: type[DnGranted]) -> int:
        """Every DN this node owns, with its state, to one connection (as
        ``granted`` decisions to a peer, as :class:`DnSnapshot` to a Smart Proxy)."""
        controller = self.controller
        sent = 0
        for dn in controller.ownership.owned_by(controller.node):
            view = controller.ownership.view(dn)
            if view is None:
                continue
            decision = OwnershipGranted(dn, view.node, view.kind, view.since, view.expires)
            name, attributes = self.decision_message(decision, granted).to_wire()
            if conn.send_event(name, attributes) is not None:
                sent += 1
        return sent

    # -- requests out ----------------------------------------------------------------------
    def forward(self, peer: Peer, conn: TLibConnection | None, request: RequestReceived,
                client: str | None = None) -> bool:
        """A request of a local client for a DN ``peer`` owns (or a call on
        ``peer``'s node): sent there, answered back with the client's ReferenceID."""
        attrs = {k: v for k, v in request.message.items()
                 if k not in ("message", "AttributeReferenceID")}
        name, attributes = RelayedRequest(request.name, attrs, client).to_wire()
        return self._send_request(peer, name, attributes, origin=conn,
                                  reference_id=request.reference_id)

    def send_claim(self, claim: ForwardClaim, *, client: str | None = None,
                   application: str | None = None, expires: float | None = None) -> bool:
        """An ownership claim of this node for a DN a peer owns: the owner decides."""
        peer = self.peers.get(claim.owner)
        if peer is None:
            return False
        sent = self._send_message(peer, OwnershipClaim(
            claim.dn, claim.claimant, claim.kind.value, client, application, expires))
        self.log.info("dn_ownership_claim_sent", dn=claim.dn, owner=claim.owner,
                      peer=peer.tc, sent=sent)
        return sent

    def withdraw(self, dn: str, client: str, *, gone: bool = False) -> None:
        """A local client let go of a DN a peer owns (or disconnected)."""
        peer = self.owner_peer(dn)
        if peer is None:
            return
        self._send_message(peer, ClaimWithdrawn(dn, self.controller.node, client, gone))

    def add_interest(self, dn: str, *, skip: Peer | None = None) -> None:
        """A local client registered ``dn``: the peers send its events here."""
        count = self.local_interest.get(dn, 0)
        self.local_interest[dn] = count + 1
        if count:
            return
        for peer in self.peers.values():
            if peer is not skip:
                self._send_message(peer, Interest(dn))

    def remove_interest(self, dn: str) -> None:
        count = self.local_interest.get(dn, 0)
        if count <= 1:
            self.local_interest.pop(dn, None)
            if count == 1:
                for peer in self.peers.values():
                    self._send_message(peer, Interest(dn, registered=False))
        else:
            self.local_interest[dn] = count - 1

    def register_remote(self, conn: TLibConnection, request: RequestReceived, dn: str,
                        owner: Peer) -> bool:
        """A desktop registers a DN ``owner`` owns: the owner answers (with the
        DN's state there) and sends this node its events."""
        new = dn not in self.local_interest
        if new:
            self.local_interest[dn] = 0
        forwarded = self.forward(owner, conn, request)
        if not forwarded:
            if new:
                self.local_interest.pop(dn, None)
            return False
        self.local_interest[dn] += 1
        if new:
            for peer in self.peers.values():
                if peer is not owner:
                    self._send_message(peer, Interest(dn))
        return True

    def route_call_control(self, conn: TLibConnection, request: RequestReceived,
                           dn: str, *, from_peer: Peer | None = None) -> bool:
        """Send call control where the call is; False: to this node's link."""
        conn_id = request.message.get("AttributeConnID")
        node = self.call_nodes.get(conn_id) if isinstance(conn_id, str) else None
        target = self.peers.get(node) if node is not None else None
        if target is None:
            owner = self.owner_peer(dn)
            if owner is not None and owner is not from_peer:
                target = owner
        if target is None:
            return False
        if not self.forward(target, conn, request):
            conn.answer_error(request, ErrorCode.INTERNAL_ERROR,
                              f"Link to {target.tc} is down: {request.name} not sent")
        return True

    # -- peer server connections (the peer's link to our TCport) -------------------------
    def peer_connected(self, conn: TLibConnection) -> None:
        peer = self.by_tc[conn.application]
        old, peer.conn = peer.conn, conn
        if old is not None and old is not conn:
            old.close()
        sent = self.snapshot(conn, granted=DnGranted)
        peer.tx.inc(sent)
        calls = self.repeat_calls(peer)
        self.log.info("peer_connected", peer=peer.tc, owned_dns_sent=sent, calls_sent=calls)

    def peer_closed(self, conn: TLibConnection) -> None:
        peer = self.by_tc.get(conn.application)
        if peer is not None and peer.conn is conn:
            peer.conn = None
            peer.interests.clear()
            self.log.info("peer_disconnected", peer=peer.tc)
            # the peer's desktops are gone with it: logout-on-disconnect for their agents
            controller = self.controller
            now = controller.clock()
            prefix = f"{peer.tc}/"
            clients = {view.client for dn in controller.agents.logged_in()
                       if (view := controller.agents.agent(dn)) is not None
                       and view.client is not None and view.client.startswith(prefix)}
            for client in sorted(clients):
                controller.publish_agent_events(controller.agents.client_disconnected(client, now))

    def on_peer_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        peer = self.peer_of(conn)
        if peer is None:
            conn.answer_error(request, ErrorCode.UNEXPECTED_MESSAGE, "Stale peer connection")
            return
        peer.rx.inc()
        controller = self.controller
        name = request.name
        try:
            message = decode_request(name, request.message)
        except MalformedMeshMessage as exc:
            self.refused(peer.tc, name, exc)
            conn.answer_error(request, exc.code, exc.text)
            return
        dn = request.message.get("AttributeThisDN")
        now = controller.clock()
        tcport = controller.tcport
        from daemons.t_controller.tcport import AGENT_REQUESTS, CALL_CONTROL_REQUESTS
        if name == "RequestRegisterAddress" and isinstance(dn, str):
            if not controller.known_dn(dn):
                conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
                return
            if isinstance(message, OwnershipClaim):
                if message.kind == OwnershipKind.SIP.value:
                    outputs = controller.ownership.sip_registered(
                        dn, message.node or peer.node,
                        message.expires if message.expires is not None else 3600.0, now)
                else:
                    outputs = controller.ownership.register_address(
                        dn, message.node or peer.node, message.client or "",
                        message.application or "", now)
                conn.answer(request, "EventACK", {"AttributeThisDN": dn})
                controller.apply(outputs)
                return
            peer.interests.add(dn)
            conn.answer(request, "EventRegistered", controller.dn_attributes(dn))
            return
        if name == "RequestUnregisterAddress" and isinstance(dn, str):
            if isinstance(message, ClaimWithdrawn):
                conn.answer(request, "EventACK", {"AttributeThisDN": dn})
                if message.gone:
                    events = controller.agents.client_disconnected(
                        f"{peer.tc}/{message.client}", now)
                    controller.publish_agent_events(events)
                    controller.apply(controller.ownership.client_disconnected(
                        message.node or peer.node, message.client, now))
                else:
                    controller.apply(controller.ownership.unregister_address(
                        dn, message.node or peer.node, message.client, now))
                return
            peer.interests.discard(dn)
            conn.answer(request, "EventUnregistered", {"AttributeThisDN": dn})
            return
        if tcport is None:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED, "TCport not ready")
            return
        if name == "RequestQueryAddress":
            from daemons.t_controller.tcport import address_info
            address_info(controller, conn, request)
        elif name in AGENT_REQUESTS and isinstance(dn, str):
            owner = self.owner_peer(dn)
            if owner is not None and owner is not peer:
                self.forward(owner, conn, request)  # the DN moved meanwhile
                return
            desktop = message.client if isinstance(message, RelayedRequest) else None
            tcport.agent_request(conn, request, dn,
                                 f"{peer.tc}/{desktop}" if desktop else f"{peer.tc}/?")
        elif name in CALL_CONTROL_REQUESTS and isinstance(dn, str):
            if not self.route_call_control(conn, request, dn, from_peer=peer):
                tcport.call_control(conn, request)
        else:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              f"{name} is not supported between t-controllers")

    def refused(self, peer: str, name: str, exc: MalformedMeshMessage) -> None:
        """A malformed mesh message from ``peer``: counted and logged, not used."""
        reason = "bad-decision" if exc.marker in _DECISIONS else "malformed"
        self.dropped.labels(reason).inc()
        self.log.warning("mesh_message_refused", peer=peer, tlib_message=name, mesh=exc.marker,
                         reason=reason, error=exc.text)

    # -- peer links (our client connections) ---------------------------------------------
    def link_up(self, peer: Peer) -> None:
        controller = self.controller
        peer.up_since = controller.clock()
        controller.ownership.peer_restored(peer.node, controller.clock())
        controller.schedule_timer()
        # the peer's clients see our events again only for what we ask for
        for dn in list(self.local_interest):
            self._send_message(peer, Interest(dn))
        self.log.info("peer_link_up", peer=peer.tc, interests=len(self.local_interest))

    def link_down(self, peer: Peer, reason: str, lost: list[ForwardedRequest]) -> None:
        controller = self.controller
        peer.up_since = None
        peer.stats.link_lost()
        for request in lost:
            origin = request.origin
            if isinstance(origin, TLibConnection):
                origin.answer_error(request.reference_id, ErrorCode.INTERNAL_ERROR,
                                    f"Link to {peer.tc} lost ({reason}): {request.name} has "
                                    "no answer")
        self.log.warning("peer_lost", peer=peer.tc, reason=reason,
                         tc_reconnect_timeout=controller.ownership.tc_reconnect_timeout,
                         owned_dns=controller.ownership.owned_count(peer.node))
        controller.apply(controller.ownership.peer_lost(peer.node, controller.clock()))

    def on_peer_event(self, peer: Peer, event: TMap, answers: ForwardedRequest | None) -> None:
        name = event.get("message")
        if not isinstance(name, str):
            return
        if answers is not None and answers.origin is _POLL:
            peer.stats.poll_answered(answers.link_reference_id, event_wall_time(event),
                                     time.time(), time.monotonic())
            return
        if name == "EventServerInfo":
            return
        peer.rx.inc()
        controller = self.controller
        attributes = {k: v for k, v in event.items() if k not in _LINK_ATTRIBUTES}
        answer: tuple[TLibConnection, int] | None = None
        if answers is not None and isinstance(answers.origin, TLibConnection):
            answer = (answers.origin, answers.reference_id)
        if answers is None:
            try:
                message = decode_event(name, attributes)
            except MalformedMeshMessage as exc:
                self.refused(peer.tc, name, exc)
                return
            if isinstance(message, DnGranted | DnMoved | DnReleased) \
                    and not isinstance(message, DnSnapshot):
                self._apply_decision(peer, message)
                return
            if isinstance(message, CallState):
                self._call_state(peer, message)
                return
        if name in ("EventACK", "EventError") or (answers is not None and answer is None):
            if answer is not None:
                answered = dict(attributes)
                answered["AttributeReferenceID"] = answer[1]
                answer[0].send_event(name, answered)
            return
        dn = attributes.get("AttributeThisDN")
        if (name in CALL_EVENTS and isinstance(dn, str)
                and controller.ownership.owner(dn) == controller.node):
            conn_id = attributes.get("AttributeConnID")
            if isinstance(conn_id, str):
                self._remember_call(conn_id, peer.node)
            controller.on_owned_call_event(name, attributes, answer)
            return
        controller.deliver_remote(name, attributes, answer)

    def forget_calls(self, node: str) -> set[str]:
        """Forget where the calls of ``node`` are (the peer is lost); their ConnIDs."""
        gone = {conn_id for conn_id, where in self.call_nodes.items() if where == node}
        for conn_id in gone:
            del self.call_nodes[conn_id]
        return gone

    def repeat_calls(self, peer: Peer, dn: str | None = None) -> int:
        """The calls of this node on the DNs ``peer`` owns (only ``dn``'s if
        given), to it as ``mesh = call-state``: it forgot them when it lost this
        node. Returns the events sent."""
        if peer.conn is None:
            return 0
        sent = 0
        for call in self.controller.calls_for_owner(peer.node, dn):
            name, attributes = CallState(call.name, call.attributes, call.answered).to_wire()
            if self._send_event(peer, name, attributes):
                sent += 1
        return sent

    def _call_state(self, peer: Peer, message: CallState) -> None:
        """A peer's repeat of a call on its node (:meth:`repeat_calls`)."""
        controller = self.controller
        name, event = message.name, dict(message.attributes)
        dn = event.get("AttributeThisDN")
        conn_id = event.get("AttributeConnID")
        if (name not in CALL_EVENTS or not isinstance(dn, str) or not isinstance(conn_id, str)
                or controller.ownership.owner(dn) != controller.node):
            self.dropped.labels("call-state-not-owned").inc()
            self.log.info("peer_call_state_ignored", peer=peer.tc, dn=dn, tlib_event=name)
            return
        self._remember_call(conn_id, peer.node)
        controller.restore_call(name, event, answered=message.answered)

    def _remember_call(self, conn_id: str, node: str) -> None:
        self.call_nodes[conn_id] = node
        self.call_nodes.move_to_end(conn_id)
        while len(self.call_nodes) > MAX_CALL_ROUTES:
            self.call_nodes.popitem(last=False)

    def _apply_decision(self, peer: Peer, message: DnGranted | DnMoved | DnReleased) -> None:
        controller = self.controller
        dn = message.dn
        now = controller.clock()
        try:
            decision = decode_decision(message, now, peer.node)
        except ValueError as exc:
            self.dropped.labels("bad-decision").inc()
            self.log.warning("mesh_message_refused", peer=peer.tc, dn=dn, mesh=message.marker,
                             reason="bad-decision", error=str(exc))
            return
        controller.remote_agents.pop(dn, None)
        if isinstance(message, DnGranted):
            controller.mirror_announced_agent(message)
        controller.apply(controller.ownership.apply(decision, now),
                         details={dn: message.announced_attributes()})
        if not isinstance(message, DnReleased):
            owner = self.owner_peer(dn)
            if owner is not None:
                self.repeat_calls(owner, dn)  # the owner may have forgotten them

    # -- latency polls ----------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.poll_all()

    def poll_all(self) -> int:
        """One poll cycle: a ``RequestQueryServer`` to every connected peer."""
        sent = 0
        for peer in self.peers.values():
            link = peer.link
            if link is None or not link.up:
                continue
            try:
                forwarded = link.send("RequestQueryServer", {}, origin=_POLL)
            except (NodeLinkDown, TLibError):
                continue
            peer.stats.poll_sent(forwarded.link_reference_id, time.time(), time.monotonic())
            peer.stats.tx_queue_len = self._tx_queue(peer)
            peer.stats.rx_queue_len = self._rx_queue(peer)
            sent += 1
        return sent


def decode_decision(message: DnGranted | DnMoved | DnReleased, now: float,
                    sender: str) -> OwnershipDecision:
    """The ownership decision of a peer's mesh message (see
    :meth:`Mesh.decision_message`); ValueError for an ownership kind or an
    agent state this build does not know."""
    if isinstance(message, DnReleased):
        return OwnershipReleased(message.dn, message.owner, message.cause or "released")
    ownership = OwnershipKind(message.ownership)
    since = message.since - _wall_offset()
    expires = now + message.expires_in if message.expires_in is not None else None
    if isinstance(message, DnMoved):
        return OwnershipMoved(message.dn, message.from_node or sender, message.owner,
                              ownership, since, expires, decode_snapshot(message.snapshot))
    return OwnershipGranted(message.dn, message.owner, ownership, since, expires)


def decode_snapshot(agent: MovedAgent | None) -> AgentSnapshot | None:
    """The agent a move carries, for ``agent-state-auto-restore``."""
    if agent is None:
        return None
    return AgentSnapshot(agent_id=agent.agent_id, dn=agent.dn, state=AgentState(agent.state),
                         work_mode=AgentWorkMode(agent.work_mode),
                         reasons=MappingProxyType(dict(agent.reasons)))


def _peer_gauge(peer: Peer, value: Callable[[Peer], float | int]) -> Callable[[], float]:
    """A gauge callback reading one figure of ``peer``."""
    def get() -> float:
        return float(value(peer))
    return get


def _stat_getter(peer: Peer, stat: str) -> Any:
    def get() -> float:
        value = getattr(peer.stats, stat)
        return float(value) if value is not None else float("nan")
    return get
