"""The T-Library requests the t-controller answers, in one place: one table
(message name -> handler) for each kind of client (guide: "T-Controller",
"T-Controller DN Ownership", "Agent Availability for Routing", "Smart Proxy";
docs/node.md, docs/t-controller.md).

* **TCport clients** (desktops, smart clients): ``RequestRegisterAddress``
  (the DN's current state in ``EventRegistered``; from an application listed
  in ``dn-owner-applications`` it takes T-Library-based ownership, released by
  ``RequestUnregisterAddress`` or when the client disconnects), agent
  requests (login, ready, not ready, logout: answered here for a DN this node
  owns), call control (forwarded to the sip-server on the node link),
  ``RequestQueryAddress``. A request for a DN a peer owns, or for a call on
  a peer's node, is relayed to that peer (:class:`~daemons.t_controller.peers.PeerTable`).
* **Peer t-controllers** on TCport: the mesh's requests
  (:mod:`protocols.tlib.mesh`): interest, ownership claims and their
  withdrawal, and the requests their desktops relay.
* **Smart Proxy clients**: DN registration (answered with the DN's state) and
  ``RequestQueryAddress``; agent and call-control requests are refused
  (``EventError`` 60: "Smart Proxy does not accept agent and supervisor
  requests").

Each request is answered by exactly one message carrying its ReferenceID:
the event it causes or ``EventError`` with a code and a text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from daemons.cluster.config import OwnershipKind
from daemons.runtime.driver import TimerSlot
from daemons.runtime.management import Metrics
from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.agent import AgentError, AgentEvent, AgentState
from daemons.t_controller.agent_events import request_reasons, request_work_mode
from daemons.t_controller.clients import TCPortClients, client_id, registered_dns
from daemons.t_controller.node_link import ForwardedRequest, NodeLinkDown
from daemons.t_controller.ownership import OwnershipOutput
from daemons.t_controller.peers import Peer
from daemons.t_controller.reservation import (
    Output,
    Refused,
    ReservationGranted,
    ReservationRequest,
    ReservationTable,
)
from daemons.t_controller.state import ControllerState
from protocols.tlib.errors import ErrorCode, TLibError
from protocols.tlib.framing import TMap
from protocols.tlib.mesh import (
    ClaimWithdrawn,
    MalformedMeshMessage,
    MeshRequest,
    OwnershipClaim,
    RelayedRequest,
    decode_request,
    reserved_keys,
)
from protocols.tlib.session import RequestReceived

__all__ = ["AGENT_REQUESTS", "AGENT_STATUS_CODES", "CALL_CONTROL_REQUESTS", "CallControlLink",
           "RequestController", "Requests"]

AGENT_REQUESTS = frozenset(
    {"RequestAgentLogin", "RequestAgentLogout", "RequestAgentReady", "RequestAgentNotReady"}
)
#: Requests forwarded to the sip-server (docs/node.md, "Call control from desktops").
CALL_CONTROL_REQUESTS = frozenset({
    "RequestMakeCall", "RequestAnswerCall", "RequestReleaseCall", "RequestHoldCall",
    "RequestRetrieveCall", "RequestSingleStepTransfer", "RequestInitiateTransfer",
    "RequestCompleteTransfer", "RequestAttachUserData", "RequestUpdateUserData",
    "RequestDeleteUserData", "RequestApplyTreatment",
})  # fmt: skip

#: ``AttributeAddressInfoStatus`` of an ``AgentStatus`` query.
AGENT_STATUS_CODES = {
    AgentState.LOGGED_OUT: 0,
    AgentState.NOT_READY: 1,
    AgentState.READY: 2,
    AgentState.AFTER_CALL_WORK: 3,
}
#: A SIP-based claim that says nothing of its expiry lasts this long.
_DEFAULT_CLAIM_EXPIRES = 3600.0

Handler = Callable[[TLibConnection, RequestReceived], None]
PeerHandler = Callable[[TLibConnection, RequestReceived, Peer, MeshRequest], None]


class RequestController(ControllerState, Protocol):
    """What request handling needs of the
    :class:`~daemons.t_controller.controller.TController`."""

    reservation_sink: Callable[[TMap], None] | None

    @property
    def log_debug(self) -> bool: ...
    @property
    def tcport_clients(self) -> TCPortClients: ...

    def known_dn(self, dn: str) -> bool: ...
    def in_service(self, dn: str) -> bool: ...
    def is_local(self, dn: str | None) -> bool: ...
    def dn_attributes(self, dn: str) -> dict[str, Any]: ...
    def owner_check(self, dn: str) -> tuple[ErrorCode, str] | None: ...
    def agent_login_events(self, events: list[AgentEvent]) -> list[AgentEvent]: ...
    def publish_agent_events(self, events: Iterable[AgentEvent],
                             answer: tuple[TLibConnection, int] | None = None, *,
                             local: bool | None = None) -> None: ...
    def schedule_timer(self) -> None: ...
    def publish(self, name: str, attributes: TMap, *,
                answer: tuple[TLibConnection, int] | None = None,
                local: bool | None = None) -> None: ...
    def apply(self, outputs: Iterable[OwnershipOutput],
              answer: tuple[TLibConnection, int] | None = None, *,
              claimant: tuple[str, str] | None = None,
              details: dict[str, TMap] | None = None) -> None: ...


class CallControlLink(Protocol):
    """Where call control goes: the node link to this node's sip-server."""

    def forward(self, name: str, attributes: Mapping[str, Any], *, origin: Any,
                reference_id: int) -> ForwardedRequest: ...


class Requests:
    """The request tables of TCport clients, peer t-controllers and Smart
    Proxy clients (module doc)."""

    def __init__(self, controller: RequestController, node_link: CallControlLink | None,
                 *, log: Any, metrics: Metrics | None = None) -> None:
        self.controller = controller
        #: client requests refused before any handler (reserved mesh keys)
        self.refused = (metrics or Metrics("sipcluster")).tally(
            "tcontroller_client_requests_refused",
            "Client requests refused before handling, by port and reason", ("port", "reason"))
        self.clients = controller.tcport_clients
        self.peers = controller.peers
        self.node_link = node_link
        self.log = log
        options = controller.agents.options
        #: agent reservation (guide: "Agent Reservation in SIP Cluster"): this
        #: node is the one authority for the agents of the DNs it owns
        self.reservations = ReservationTable(
            self._reservable, controller.agents.offered,
            collection_time=options.request_collection_time,
            default_timeout=options.agent_reservation_timeout,
            alive=lambda token: not token[0].closed)
        self.reservation_outcomes = (metrics or Metrics("sipcluster")).tally(
            "tcontroller_agent_reservations",
            "RequestReserveAgent answers of this node, by outcome", ("outcome",))
        self._reservation_timer = TimerSlot(asyncio.get_running_loop(),
                                            lambda _now: self._on_reservation_timer())
        controller.reservation_sink = self._reservation_to_node
        self.tcport: dict[str, Handler] = {
            **dict.fromkeys(AGENT_REQUESTS, self._tcport_agent_request),
            **dict.fromkeys(CALL_CONTROL_REQUESTS, self._tcport_call_control),
            "RequestRegisterAddress": self._register_address,
            "RequestUnregisterAddress": self._unregister_address,
            "RequestQueryAddress": self.address_info,
            "RequestReserveAgent": self._tcport_reserve_agent,
        }
        self.peer: dict[str, PeerHandler] = {
            **dict.fromkeys(AGENT_REQUESTS, self._peer_agent_request),
            **dict.fromkeys(CALL_CONTROL_REQUESTS, self._peer_call_control),
            "RequestRegisterAddress": self._peer_register_address,
            "RequestUnregisterAddress": self._peer_unregister_address,
            "RequestQueryAddress": self._peer_query_address,
            "RequestReserveAgent": self._peer_reserve_agent,
        }
        self.smart_proxy: dict[str, Handler] = {
            **dict.fromkeys(AGENT_REQUESTS | CALL_CONTROL_REQUESTS | {"RequestReserveAgent"},
                            self._not_on_smart_proxy),
            "RequestRegisterAddress": self._smart_proxy_register_address,
            "RequestUnregisterAddress": self._smart_proxy_unregister_address,
            "RequestQueryAddress": self.address_info,
        }

    # -- dispatch ---------------------------------------------------------------------
    def _reserved(self, port: str, conn: TLibConnection, request: RequestReceived) -> bool:
        """Refuse a client request that carries the mesh's own keys (EventError 41)."""
        keys = reserved_keys(request.message)
        if not keys:
            return False
        self.refused.labels(port, "reserved-mesh-keys").inc()
        self.log.warning("tlib_request_refused", request=request.name, peer=conn.peer,
                         application=conn.application, reason="reserved-mesh-keys",
                         keys=keys)
        conn.answer_error(request, ErrorCode.INVALID_ATTRIBUTE,
                          f"Invalid attribute: AttributeExtensions {', '.join(keys)} are "
                          "reserved for the t-controller mesh")
        return True

    def on_tcport_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        """A request of a TCport client (desktop, smart client)."""
        self._client_request("tc-port", "TCport", self.tcport, conn, request)

    def on_smart_proxy_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        """A request of a Smart Proxy client."""
        self._client_request("smart-proxy-port", "the Smart Proxy port", self.smart_proxy,
                             conn, request)

    def _client_request(self, port: str, where: str, table: dict[str, Handler],
                        conn: TLibConnection, request: RequestReceived) -> None:
        if self._reserved(port, conn, request):
            return
        handler = table.get(request.name)
        if handler is None:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              f"{request.name} is not supported on {where}")
            return
        handler(conn, request)

    def on_peer_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        """A request of a peer t-controller, on its connection to our TCport."""
        peers = self.peers
        peer = peers.peer_of(conn)
        if peer is None:
            conn.answer_error(request, ErrorCode.UNEXPECTED_MESSAGE, "Stale peer connection")
            return
        peer.rx.inc()
        try:
            message = decode_request(request.name, request.message)
        except MalformedMeshMessage as exc:
            peers.refused(peer.tc, request.name, exc)
            conn.answer_error(request, exc.code, exc.text)
            return
        handler = self.peer.get(request.name)
        if handler is None:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              f"{request.name} is not supported between t-controllers")
            return
        handler(conn, request, peer, message)

    # -- every port -----------------------------------------------------------------------
    def address_info(self, conn: TLibConnection, request: RequestReceived) -> None:
        """``RequestQueryAddress`` -> ``EventAddressInfo``: ``DNStatus`` is 1 in
        service / 0 out of service, ``AgentStatus`` 0 logged out, 1 NotReady,
        2 Ready, 3 AfterCallWork; the full state is in ``AttributeExtensions``."""
        controller = self.controller
        dn = request.message["AttributeThisDN"]
        if not controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return
        info_type = request.message.get("AttributeAddressInfoType", "DNStatus")
        if info_type == "DNStatus":
            status = 1 if controller.in_service(dn) else 0
        elif info_type == "AgentStatus":
            status = AGENT_STATUS_CODES[controller.agents.state(dn)]
        else:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              f"AttributeAddressInfoType {info_type} is not supported by the "
                              "t-controller")
            return
        attributes = controller.dn_attributes(dn)
        attributes["AttributeAddressInfoType"] = info_type
        attributes["AttributeAddressInfoStatus"] = status
        conn.answer(request, "EventAddressInfo", attributes)

    def agent_request(self, conn: TLibConnection, request: RequestReceived, dn: str,
                      client: str) -> None:
        """An agent request for a DN this node owns; ``client`` names the desktop
        (logout-on-disconnect)."""
        controller = self.controller
        refusal = controller.owner_check(dn)
        if refusal is not None:
            conn.answer_error(request, refusal[0], refusal[1])
            return
        message = request.message
        agents = controller.agents
        now = controller.clock()
        events: list[AgentEvent]
        try:
            if request.name == "RequestAgentLogin":
                events = controller.agent_login_events(agents.login(
                    dn, message["AttributeAgentID"], now,
                    password=message.get("AttributePassword"),
                    work_mode=request_work_mode(message),
                    reasons=request_reasons(message),
                    client=client,
                ))
            elif request.name == "RequestAgentReady":
                events = agents.ready(dn, now, work_mode=request_work_mode(message),
                                      reasons=request_reasons(message))
            elif request.name == "RequestAgentNotReady":
                events = agents.not_ready(dn, now, work_mode=request_work_mode(message),
                                          reasons=request_reasons(message))
            else:
                agent_id = message.get("AttributeAgentID")
                view = agents.agent(dn)
                if agent_id is not None and view is not None and view.agent_id != agent_id:
                    raise AgentError(f"Agent {agent_id} is not logged in on DN {dn}",
                                     code=ErrorCode.UNKNOWN_AGENT)
                events = agents.logout(dn, now, reasons=request_reasons(message))
        except AgentError as exc:
            conn.answer_error(request, exc.code, exc.text, AttributeThisDN=dn)
            return
        if controller.log_debug:
            self.log.debug("agent_request", request=request.name, dn=dn,
                           agent_state=agents.state(dn).value)
        controller.publish_agent_events(events, answer=(conn, request.reference_id))
        controller.schedule_timer()

    def call_control(self, conn: TLibConnection, request: RequestReceived) -> None:
        """Forward a call-control request to this node's sip-server."""
        if self.node_link is None:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              "No node link: call control is not available")
            return
        try:
            self.node_link.forward(request.name, request.message, origin=conn,
                                   reference_id=request.reference_id)
        except NodeLinkDown as exc:
            conn.answer_error(request, ErrorCode.INTERNAL_ERROR, str(exc))
        except TLibError as exc:
            conn.answer_error(request, exc.code, exc.text)

    # -- TCport -----------------------------------------------------------------------------
    def _register_address(self, conn: TLibConnection, request: RequestReceived) -> None:
        controller = self.controller
        dn: str = request.message["AttributeThisDN"]
        if not controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return
        first = self.clients.register(conn, dn)
        outputs = controller.ownership.register_address(
            dn, controller.node, client_id(conn), conn.application, controller.clock())
        peers = self.peers
        claimant = (client_id(conn), conn.application)
        owner = peers.owner_peer(dn)
        if owner is not None and first and peers.register_remote(conn, request, dn, owner):
            # the owner answers with the DN's state there
            if controller.log_debug:
                self.log.debug("dn_registered", dn=dn, client=client_id(conn),
                               owner=owner.node)
            controller.apply(outputs, claimant=claimant)
            return
        if first:
            peers.add_interest(dn)
        attributes = controller.dn_attributes(dn)
        for key in ("AttributeRegisterMode", "AttributeAddressType"):
            if key in request.message:
                attributes[key] = request.message[key]
        conn.answer(request, "EventRegistered", attributes)
        if controller.log_debug:
            self.log.debug("dn_registered", dn=dn, client=client_id(conn),
                           dn_state=attributes["AttributeExtensions"]["dn-state"])
        controller.apply(outputs, claimant=claimant)

    def _unregister_address(self, conn: TLibConnection, request: RequestReceived) -> None:
        controller = self.controller
        dn: str = request.message["AttributeThisDN"]
        if not controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return
        if not self.clients.unregister(conn, dn):
            conn.answer_error(request, ErrorCode.CLIENT_NOT_REGISTERED,
                              f"DN {dn} is not registered by this client")
            return
        conn.answer(request, "EventUnregistered", {"AttributeThisDN": dn})
        peers = self.peers
        if peers.owner_peer(dn) is not None:
            peers.withdraw(dn, client_id(conn))
        peers.remove_interest(dn)
        controller.apply(controller.ownership.unregister_address(
            dn, controller.node, client_id(conn), controller.clock()))

    def _check_access(self, conn: TLibConnection, request: RequestReceived) -> str | None:
        """The DN of the request if this client may act on it; otherwise the
        request is answered with ``EventError`` and None is returned."""
        dn: str = request.message["AttributeThisDN"]
        if not self.controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return None
        if dn in registered_dns(conn):
            return dn
        if self.clients.is_smart(conn) and self.controller.is_local(dn):
            return dn
        conn.answer_error(request, ErrorCode.CLIENT_NOT_REGISTERED,
                          f"DN {dn} is not registered by this client "
                          "(RequestRegisterAddress first)")
        return None

    def _tcport_agent_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        dn = self._check_access(conn, request)
        if dn is None:
            return
        owner = self.peers.owner_peer(dn)
        if owner is not None:
            if not self.peers.forward(owner, conn, request, client=client_id(conn)):
                conn.answer_error(request, ErrorCode.INTERNAL_ERROR,
                                  f"DN {dn} is owned by {owner.node}; the link to "
                                  f"{owner.tc} is down")
            return
        self.agent_request(conn, request, dn, client_id(conn))

    def _tcport_call_control(self, conn: TLibConnection, request: RequestReceived) -> None:
        dn = self._check_access(conn, request)
        if dn is None:
            return
        if self.peers.route_call_control(conn, request, dn):
            return  # the call, or the DN, is on another node
        self.call_control(conn, request)

    # -- peer t-controllers -------------------------------------------------------------
    def _peer_register_address(self, conn: TLibConnection, request: RequestReceived,
                               peer: Peer, message: MeshRequest) -> None:
        """A claim for a DN this node owns (the owner decides), or a peer's
        interest in its events (a desktop's registration relayed to the owner
        is one too, answered with the DN's state here)."""
        controller = self.controller
        dn: str = request.message["AttributeThisDN"]
        if not controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return
        if isinstance(message, OwnershipClaim):
            now = controller.clock()
            claimant = message.node or peer.node
            if message.kind == OwnershipKind.SIP.value:
                outputs = controller.ownership.sip_registered(
                    dn, claimant,
                    message.expires if message.expires is not None else _DEFAULT_CLAIM_EXPIRES,
                    now)
            else:
                outputs = controller.ownership.register_address(
                    dn, claimant, message.client or "", message.application or "", now)
            conn.answer(request, "EventACK", {"AttributeThisDN": dn})
            controller.apply(outputs)
            return
        peer.interests.add(dn)
        conn.answer(request, "EventRegistered", controller.dn_attributes(dn))

    def _peer_unregister_address(self, conn: TLibConnection, request: RequestReceived,
                                 peer: Peer, message: MeshRequest) -> None:
        """A claimant's client let go of a DN this node owns, or disconnected;
        or the peer's clients no longer want the DN's events."""
        controller = self.controller
        dn: str = request.message["AttributeThisDN"]
        if isinstance(message, ClaimWithdrawn):
            now = controller.clock()
            node = message.node or peer.node
            conn.answer(request, "EventACK", {"AttributeThisDN": dn})
            if message.gone:
                events = controller.agents.client_disconnected(
                    f"{peer.tc}/{message.client}", now)
                controller.publish_agent_events(events)
                controller.apply(controller.ownership.client_disconnected(
                    node, message.client, now))
            else:
                controller.apply(controller.ownership.unregister_address(
                    dn, node, message.client, now))
            return
        peer.interests.discard(dn)
        conn.answer(request, "EventUnregistered", {"AttributeThisDN": dn})

    def _peer_query_address(self, conn: TLibConnection, request: RequestReceived,
                            peer: Peer, message: MeshRequest) -> None:
        self.address_info(conn, request)

    def _peer_agent_request(self, conn: TLibConnection, request: RequestReceived,
                            peer: Peer, message: MeshRequest) -> None:
        """A desktop's agent request relayed by the peer for a DN this node owns."""
        dn: str = request.message["AttributeThisDN"]
        owner = self.peers.owner_peer(dn)
        if owner is not None and owner is not peer:
            self.peers.forward(owner, conn, request)  # the DN moved meanwhile
            return
        desktop = message.client if isinstance(message, RelayedRequest) else None
        self.agent_request(conn, request, dn,
                           f"{peer.tc}/{desktop}" if desktop else f"{peer.tc}/?")

    def _peer_call_control(self, conn: TLibConnection, request: RequestReceived,
                           peer: Peer, message: MeshRequest) -> None:
        """A desktop's call control relayed by the peer: to where the call is."""
        dn: str = request.message["AttributeThisDN"]
        if not self.peers.route_call_control(conn, request, dn, from_peer=peer):
            self.call_control(conn, request)

    # -- agent reservation ------------------------------------------------------------------
    def _tcport_reserve_agent(self, conn: TLibConnection, request: RequestReceived) -> None:
        """A router reserves an agent: here when this node owns the DN, else at
        the owner (the one authority; across the mesh, also between data
        centres). No registration of the DN is needed: routers reserve any agent."""
        dn: str = request.message["AttributeThisDN"]
        if not self.controller.known_dn(dn):
            self._reservation_refused(conn, request.reference_id, dn, ErrorCode.UNKNOWN_DN,
                                      f"Unknown DN: {dn[:64]}")
            return
        owner = self.peers.owner_peer(dn)
        if owner is not None:
            if not self.peers.forward(owner, conn, request, client=client_id(conn)):
                self._reservation_refused(
                    conn, request.reference_id, dn, ErrorCode.DN_OUT_OF_SERVICE,
                    f"DN {dn} is owned by {owner.node}; the link to {owner.tc} is down")
            return
        self.reserve_agent(conn, request, client_id(conn))

    def _peer_reserve_agent(self, conn: TLibConnection, request: RequestReceived,
                            peer: Peer, message: MeshRequest) -> None:
        dn: str = request.message["AttributeThisDN"]
        owner = self.peers.owner_peer(dn)
        if owner is not None and owner is not peer:
            self.peers.forward(owner, conn, request)  # the DN moved meanwhile
            return
        router = message.client if isinstance(message, RelayedRequest) else None
        self.reserve_agent(conn, request, f"{peer.tc}/{router}" if router else f"{peer.tc}/?")

    def reserve_agent(self, conn: TLibConnection, request: RequestReceived,
                      holder: str) -> None:
        """``RequestReserveAgent`` for a DN of this node: into the DN's collection window."""
        message = request.message
        timeout = message.get("AttributeTimeout")
        reservation = ReservationRequest(
            dn=message["AttributeThisDN"], holder=holder, token=(conn, request.reference_id),
            agent_id=message.get("AttributeAgentID"), conn_id=message.get("AttributeConnID"),
            priority=int(message.get("AttributePriority", 0)),
            timeout=float(timeout) if timeout else None)
        self._reservation_outputs(self.reservations.request(reservation, self.controller.clock()))

    def _reservable(self, dn: str, agent_id: str | None) -> tuple[ErrorCode, str] | None:
        """Whether the agent of ``dn`` (this node's) may be reserved now."""
        controller = self.controller
        refusal = controller.owner_check(dn)
        if refusal is not None:
            return refusal
        view = controller.agents.agent(dn)
        if view is None:
            if agent_id is not None and controller.agents.dn_of(agent_id) is None:
                return ErrorCode.UNKNOWN_AGENT, f"Unknown agent: {agent_id[:64]} is not logged in"
            return ErrorCode.AGENT_NOT_LOGGED_IN, f"No agent is logged in on DN {dn}"
        if agent_id is not None and view.agent_id != agent_id:
            return ErrorCode.UNKNOWN_AGENT, f"Agent {agent_id[:64]} is not logged in on DN {dn}"
        if not controller.agents.is_available(dn):
            state = "on a call" if view.on_call else view.state.value
            return (ErrorCode.AGENT_NOT_AVAILABLE,
                    f"Agent {view.agent_id} on DN {dn} is not available for routing ({state})")
        return None

    def _on_reservation_timer(self) -> None:
        try:
            self._reservation_outputs(self.reservations.handle_timer(self.controller.clock()))
        except Exception:
            self.log.exception("agent_reservation_timer_failed")
            self._reservation_timer.arm(self.reservations.next_timer())

    def _reservation_outputs(self, outputs: list[Output]) -> None:
        for out in outputs:
            conn, reference_id = out.request.token
            if isinstance(out, ReservationGranted):
                held = out.reservation
                attributes: dict[str, Any] = {
                    "AttributeThisDN": held.dn, "AttributePriority": held.priority,
                    "AttributeTimeout": max(1, round(held.expires - self.controller.clock())),
                    "AttributeExtensions": {"holder": held.holder},
                }
                view = self.controller.agents.agent(held.dn)
                if view is not None:
                    attributes["AttributeAgentID"] = view.agent_id
                if held.conn_id is not None:
                    attributes["AttributeConnID"] = held.conn_id
                self.reservation_outcomes.labels("granted").inc()
                self.log.info("agent_reserved", dn=held.dn, holder=held.holder,
                              priority=held.priority, conn_id=held.conn_id)
                # the answer to the holder; every other client of the DN (other
                # routers, here and on the peers) learns the agent is taken
                self.controller.publish("EventAgentReserved", attributes,
                                        answer=(conn, reference_id))
            else:
                assert isinstance(out, Refused)
                self._reservation_refused(conn, reference_id, out.request.dn, out.code,
                                          out.text, holder=out.request.holder)
        self._reservation_timer.arm(self.reservations.next_timer())

    def _reservation_to_node(self, attributes: Mapping[str, Any]) -> None:
        """A reservation granted here or by a peer: to this node's sip-server, so
        that it offers the reserved agent no other routed call (docs/node.md,
        "Reserved agents"). Its EventACK is dropped by the controller."""
        if self.node_link is None:
            return
        note = {k: attributes[k] for k in ("AttributeThisDN", "AttributeAgentID",
                                           "AttributeConnID", "AttributePriority",
                                           "AttributeTimeout", "AttributeExtensions")
                if k in attributes}
        try:
            self.node_link.forward("RequestReserveAgent", note, origin=None, reference_id=0)
        except (NodeLinkDown, TLibError) as exc:
            self.log.warning("agent_reservation_not_passed_to_node",
                             dn=attributes.get("AttributeThisDN"), reason=str(exc))

    def _reservation_refused(self, conn: TLibConnection, reference_id: int, dn: str,
                             code: ErrorCode, text: str, *, holder: str | None = None) -> None:
        outcome = {ErrorCode.AGENT_RESERVATION_CONFLICT: "conflict",
                   ErrorCode.AGENT_NOT_AVAILABLE: "not-available"}.get(code, "refused")
        self.reservation_outcomes.labels(outcome).inc()
        self.log.info("agent_reservation_refused", dn=dn, holder=holder, code=int(code),
                      reason=text)
        conn.answer_error(reference_id, code, text, AttributeThisDN=dn)

    # -- Smart Proxy ------------------------------------------------------------------------
    def _not_on_smart_proxy(self, conn: TLibConnection, request: RequestReceived) -> None:
        conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                          f"{request.name} is not accepted on the Smart Proxy port; "
                          "agent desktops connect to TCport")

    def _smart_proxy_register_address(self, conn: TLibConnection,
                                      request: RequestReceived) -> None:
        """A monitoring client registers a DN: answered with its state (it gets
        every event anyway)."""
        controller = self.controller
        dn: str = request.message["AttributeThisDN"]
        if not controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return
        registered_dns(conn).add(dn)
        conn.answer(request, "EventRegistered", controller.dn_attributes(dn))

    def _smart_proxy_unregister_address(self, conn: TLibConnection,
                                        request: RequestReceived) -> None:
        dn: str = request.message["AttributeThisDN"]
        dns = registered_dns(conn)
        if dn not in dns:
            conn.answer_error(request, ErrorCode.CLIENT_NOT_REGISTERED,
                              f"DN {dn[:64]} is not registered by this client")
            return
        dns.discard(dn)
        conn.answer(request, "EventUnregistered", {"AttributeThisDN": dn})
