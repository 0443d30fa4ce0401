"""The other t-controllers of the cluster and everything this one sends them
(guide: "T-Controller", "T-Controller DN Ownership", "Smart Proxy";
docs/t-controller.md, "Links", "Who gets what").

A pair of t-controllers has two connections: on the one a t-controller opened
(its *client connection*, :class:`PeerLink`) it sends requests -- ownership
claims, DN interest, requests of its desktops for DNs the peer owns, latency
polls; on the one the peer opened to its TCport (its *server connection*) it
sends events -- ownership decisions, the events of the DNs it owns, calls of
its node on the peer's DNs. The messages are those of
:mod:`protocols.tlib.mesh`.

:class:`PeerTable` is state owned by the
:class:`~daemons.t_controller.controller.TController`: the peers, their
connections and interests, where the calls of other nodes are; what comes
back from the peers is :mod:`daemons.t_controller.mesh`'s business.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemons.cluster.config import ClusterConfig, ClusterNodes
from daemons.runtime.management import Metrics
from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.clients import event_is_valid
from daemons.t_controller.latency import LatencyStats
from daemons.t_controller.node_link import ForwardedRequest, NodeEventSink, NodeLink, NodeLinkDown
from daemons.t_controller.ownership import ForwardClaim
from protocols.tlib.errors import ErrorCode
from protocols.tlib.framing import TMap
from protocols.tlib.mesh import (
    CallState,
    ClaimWithdrawn,
    DnGranted,
    DnMoved,
    DnReleased,
    Interest,
    MalformedMeshMessage,
    OwnershipClaim,
    RelayedRequest,
)
from protocols.tlib.session import RequestReceived

__all__ = ["MAX_CALL_ROUTES", "SMART_PROXY_PREFIX", "MeshOptions", "Owners", "Peer",
           "PeerLink", "PeerTable", "smart_proxy_name"]

#: Application name prefix of a Smart Proxy's bulk connections to t-controllers.
SMART_PROXY_PREFIX = "SmartProxy@"
#: Calls of other nodes remembered for routing call control (oldest dropped first).
MAX_CALL_ROUTES = 100_000
#: ``mesh`` values of the ownership decisions (a malformed one counts as bad-decision).
_DECISIONS = frozenset({DnGranted.marker, DnMoved.marker, DnReleased.marker})


def smart_proxy_name(t_controller: str) -> str:
    """The application name a Smart Proxy registers with on other t-controllers."""
    return SMART_PROXY_PREFIX + t_controller


class Owners(Protocol):
    """Who owns a DN (the :class:`~daemons.t_controller.ownership.OwnershipTable`)."""

    def owner(self, dn: str) -> str | None: ...


@dataclass(frozen=True)
class MeshOptions:
    """The options of the links between t-controllers (SIP Cluster Node DN:
    ``smart-proxy-enabled``, ``tc-latency-poll-interval``, ``addp-timeout``,
    ``addp-remote-timeout``); ``backoff_max`` caps the reconnection backoff."""

    optimised: bool
    poll_interval: float
    addp_timeout: float
    addp_remote_timeout: float
    backoff_max: float = 2.0

    @classmethod
    def from_config(cls, nodes: ClusterNodes, *, optimised: bool | None = None,
                    poll_interval: float | None = None,
                    backoff_max: float = 2.0) -> MeshOptions:
        return cls(
            optimised=nodes.smart_proxy_enabled if optimised is None else optimised,
            poll_interval=(float(nodes.tc_latency_poll_interval) if poll_interval is None
                           else poll_interval),
            addp_timeout=float(nodes.addp_timeout),
            addp_remote_timeout=float(nodes.addp_remote_timeout),
            backoff_max=backoff_max,
        )


class PeerLink(NodeLink):
    """The link to a peer t-controller: a :class:`NodeLink` that binds this
    daemon's own address (so a data-centre cut by source address applies)."""

    def __init__(self, sink: NodeEventSink, *, local_host: str | None,
                 client_type: str = "smart", **kwargs: Any) -> None:
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
    #: ``tcontroller_mesh_messages{peer,direction}`` children
    tx: Any
    rx: Any
    link: PeerLink | None = None  # our client connection, from PeerTable.open_links
    conn: TLibConnection | None = None  # its link to our TCport: our events go there
    interests: set[str] = field(default_factory=set)
    stats: LatencyStats = field(init=False)
    up_since: float | None = None

    def __post_init__(self) -> None:
        self.stats = LatencyStats(self.tc)

    @property
    def link_up(self) -> bool:
        return self.link is not None and self.link.up

    def tx_queue(self) -> int:
        """TX_QUEUE_LEN: bytes queued on our client connection to the peer."""
        return self.link.queued_bytes() if self.link is not None else 0

    def rx_queue(self) -> int:
        """RX_QUEUE_LEN: bytes queued on the peer's connection to our TCport."""
        conn = self.conn
        if conn is None or conn.transport.is_closing():
            return 0
        return int(conn.transport.get_write_buffer_size())


class PeerTable:
    """The peers of this t-controller and what goes to them (module doc)."""

    def __init__(self, config: ClusterConfig, node: str, owners: Owners, *,
                 options: MeshOptions, metrics: Metrics, log: Any,
                 application_name: str, local_host: str | None) -> None:
        self.node = node
        self.owners = owners
        #: this t-controller's name and address, for the links it opens
        self.application_name = application_name
        self.local_host = local_host
        self.options = options
        self.optimised = options.optimised
        self.log = log
        self.messages = metrics.counter(
            "tcontroller_mesh_messages", "T-Library messages to and from peer t-controllers "
            "(keep-alives and latency polls excluded)", ("peer", "direction"))
        self.dropped = metrics.counter(
            "tcontroller_mesh_dropped", "Mesh messages that could not be sent or used",
            ("reason",))
        self.peers: dict[str, Peer] = {}  # by node
        self.by_tc: dict[str, Peer] = {}
        for other in config.cluster_nodes():
            if other.name == node:
                continue
            tc = config.t_controller_for(other.name)
            port = tc.port("tc-port")
            assert port is not None
            peer = Peer(other.name, tc.name, tc.host, port,
                        tx=self.messages.labels(tc.name, "tx"),
                        rx=self.messages.labels(tc.name, "rx"))
            self.peers[other.name] = peer
            self.by_tc[tc.name] = peer
        #: DN -> number of this node's TCport clients that registered it
        self.local_interest: dict[str, int] = {}
        #: ConnID -> node of a call seen from a peer (for call control on it)
        self.call_nodes: OrderedDict[str, str] = OrderedDict()
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
            for stat in ("rtt", "txt", "rxt"):
                latency.labels(peer.tc, stat).set_function(_stat_getter(peer, stat))
            queue.labels(peer.tc, "tx").set_function(_peer_gauge(peer, Peer.tx_queue))
            queue.labels(peer.tc, "rx").set_function(_peer_gauge(peer, Peer.rx_queue))
            last.labels(peer.tc).set_function(
                _peer_gauge(peer, lambda p: p.stats.last_ts or 0.0))
            up.labels(peer.tc).set_function(_peer_gauge(peer, lambda p: 1.0 if p.link_up else 0.0))

    # -- links -----------------------------------------------------------------------
    def new_link(self, peer: Peer, sink: NodeEventSink, *,
                 application_name: str | None = None) -> PeerLink:
        """A link to ``peer``'s TCport with the mesh's options, not started
        (``application_name``: this t-controller's unless given)."""
        options = self.options
        return PeerLink(
            sink, local_host=self.local_host, host=peer.host, port=peer.port,
            application_name=application_name or self.application_name,
            addp_timeout=options.addp_timeout, addp_remote_timeout=options.addp_remote_timeout,
            backoff_max=options.backoff_max)

    def open_links(self, sink: Callable[[Peer], NodeEventSink]) -> None:
        """Start this t-controller's link to every peer (its client
        connections); ``sink(peer)`` gets what comes back on each."""
        for peer in self.peers.values():
            link = self.new_link(peer, sink(peer))
            link.log = link.log.bind(peer_tc=peer.tc)
            peer.link = link
            link.start()

    async def close_links(self) -> None:
        for peer in self.peers.values():
            if peer.link is not None:
                await peer.link.stop()

    # -- queries -------------------------------------------------------------------
    def is_peer(self, conn: TLibConnection) -> bool:
        """The connection is a peer t-controller's link to our TCport."""
        return conn.client_type == "smart" and conn.application in self.by_tc

    def peer_of(self, conn: TLibConnection) -> Peer | None:
        peer = self.by_tc.get(conn.application)
        return peer if peer is not None and peer.conn is conn else None

    def owner_peer(self, dn: str) -> Peer | None:
        """The peer that owns ``dn``, or None (owned here, or by nobody)."""
        owner = self.owners.owner(dn)
        return self.peers.get(owner) if owner is not None else None

    def refused(self, peer: str, name: str, exc: MalformedMeshMessage) -> None:
        """A malformed mesh message from ``peer``: counted and logged, not used."""
        reason = "bad-decision" if exc.marker in _DECISIONS else "malformed"
        self.dropped.labels(reason).inc()
        self.log.warning("mesh_message_refused", peer=peer, tlib_message=name, mesh=exc.marker,
                         reason=reason, error=exc.text)

    # -- sending ---------------------------------------------------------------------------
    def send_event(self, peer: Peer, name: str, attributes: TMap, *,
                   trusted: bool = False) -> bool:
        """An event on the peer's connection to our TCport."""
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
            # every node hears of a reservation: a router may route to the agent
            # from any node, and the node must not offer it another call
            if self.optimised and name != "EventAgentReserved" \
                    and (dn is None or dn not in peer.interests):
                continue
            if trusted is None:
                trusted = event_is_valid(name, attributes)
            if self.send_event(peer, name, attributes, trusted=trusted):
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
        return self.send_event(owner, name, attrs)

    def announce(self, message: DnGranted | DnMoved | DnReleased) -> None:
        """An ownership decision of this node: to every peer."""
        name, attributes = message.to_wire()
        trusted = event_is_valid(name, attributes)  # checked once for every peer
        for peer in self.peers.values():
            self.send_event(peer, name, attributes, trusted=trusted)

    def repeat_calls(self, peer: Peer, calls: Iterable[CallState]) -> int:
        """The calls of this node on the DNs ``peer`` owns, to it: it forgot
        them when it lost this node. Returns the events sent."""
        sent = 0
        for call in calls:
            name, attributes = call.to_wire()
            if self.send_event(peer, name, attributes):
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
        self._send_message(peer, ClaimWithdrawn(dn, self.node, client, gone))

    def add_interest(self, dn: str) -> None:
        """A local client registered ``dn``: the peers send its events here."""
        count = self.local_interest.get(dn, 0)
        self.local_interest[dn] = count + 1
        if count:
            return
        for peer in self.peers.values():
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

    def send_interests(self, peer: Peer) -> None:
        """Every DN this node's clients registered, to ``peer`` (its link is back)."""
        for dn in list(self.local_interest):
            self._send_message(peer, Interest(dn))

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

    # -- calls of other nodes --------------------------------------------------------------
    def remember_call(self, conn_id: str, node: str) -> None:
        """The call ``conn_id`` is on ``node`` (call control goes there)."""
        self.call_nodes[conn_id] = node
        self.call_nodes.move_to_end(conn_id)
        while len(self.call_nodes) > MAX_CALL_ROUTES:
            self.call_nodes.popitem(last=False)

    def forget_calls(self, node: str) -> set[str]:
        """Forget where the calls of ``node`` are (the peer is lost); their ConnIDs."""
        gone = {conn_id for conn_id, where in self.call_nodes.items() if where == node}
        for conn_id in gone:
            del self.call_nodes[conn_id]
        return gone


def _peer_gauge(peer: Peer, value: Callable[[Peer], float | int]) -> Callable[[], float]:
    """A gauge callback reading one figure of ``peer``."""
    def get() -> float:
        return float(value(peer))
    return get


def _stat_getter(peer: Peer, stat: str) -> Callable[[], float]:
    def get() -> float:
        value = getattr(peer.stats, stat)
        return float(value) if value is not None else float("nan")
    return get
