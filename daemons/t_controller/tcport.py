"""TCport: the t-controller's T-Library port for agent desktops and smart
clients (guide: "T-Controller", "T-Controller DN Ownership", "Agent
Availability for Routing"; docs/node.md).

* **Legacy clients** (desktops) register the DNs they want
  (``RequestRegisterAddress`` -> ``EventRegistered`` with the DN's current
  state) and then get every event of those DNs: call events relayed from the
  sip-server, agent events, DN service events.
* **Smart clients** get every event of the DNs this node owns without
  registering each one.
* ``RequestRegisterAddress`` from an application listed in
  ``dn-owner-applications`` takes T-Library-based ownership of the DN; it is
  released by ``RequestUnregisterAddress`` or when the client disconnects.
* Agent requests (login, ready, not ready, logout) are answered here;
  call-control requests are forwarded to the sip-server on the node link.

Each request is answered by exactly one message carrying its ReferenceID:
the event it causes or ``EventError`` with a code and a text.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.agent import AgentError, AgentEvent, AgentState
from daemons.t_controller.agent_events import request_reasons, request_work_mode
from daemons.t_controller.controller import Recipients, TController
from daemons.t_controller.mesh import SMART_PROXY_PREFIX
from daemons.t_controller.node_link import NodeLink, NodeLinkDown
from protocols.tlib.errors import ErrorCode, TLibError
from protocols.tlib.mesh import DnSnapshot
from protocols.tlib.session import RequestReceived

__all__ = ["AGENT_REQUESTS", "CALL_CONTROL_REQUESTS", "TCPort", "address_info"]

AGENT_REQUESTS = frozenset(
    {"RequestAgentLogin", "RequestAgentLogout", "RequestAgentReady", "RequestAgentNotReady"}
)
#: Requests forwarded to the sip-server (docs/node.md, "Call control from desktops").
CALL_CONTROL_REQUESTS = frozenset({
    "RequestMakeCall", "RequestAnswerCall", "RequestReleaseCall", "RequestHoldCall",
    "RequestRetrieveCall", "RequestSingleStepTransfer", "RequestInitiateTransfer",
    "RequestCompleteTransfer", "RequestAttachUserData", "RequestUpdateUserData",
    "RequestDeleteUserData",
})  # fmt: skip

#: ``AttributeAddressInfoStatus`` of an ``AgentStatus`` query.
AGENT_STATUS_CODES = {
    AgentState.LOGGED_OUT: 0,
    AgentState.NOT_READY: 1,
    AgentState.READY: 2,
    AgentState.AFTER_CALL_WORK: 3,
}

_client_numbers = itertools.count(1)


def client_id(conn: TLibConnection) -> str:
    """A name for the connection, unique in this process (agent and ownership tables)."""
    value = conn.context.get("client_id")
    if value is None:
        value = f"{conn.application}#{next(_client_numbers)}"
        conn.context["client_id"] = value
    return str(value)


def address_info(controller: TController, conn: TLibConnection,
                 request: RequestReceived) -> None:
    """``RequestQueryAddress`` -> ``EventAddressInfo``: ``DNStatus`` is 1 in
    service / 0 out of service, ``AgentStatus`` 0 logged out, 1 NotReady,
    2 Ready, 3 AfterCallWork; the full state is in ``AttributeExtensions``."""
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


class TCPort(Recipients):
    """The TCport handler (a :class:`~daemons.runtime.tlib_server.TLibHandler`)."""

    def __init__(self, controller: TController, node_link: NodeLink | None) -> None:
        self.controller = controller
        self.node_link = node_link
        self.log = controller.log.bind(port_name="tc-port")
        self._by_dn: dict[str, set[TLibConnection]] = {}
        self._smart: set[TLibConnection] = set()
        self.clients: set[TLibConnection] = set()
        controller.tcport = self

    # -- fan-out --------------------------------------------------------------------
    def recipients(self, dn: str | None, local: bool) -> Iterator[TLibConnection]:
        registered = self._by_dn.get(dn) if dn is not None else None
        if registered:
            yield from tuple(registered)
        if local and self._smart:
            for conn in tuple(self._smart):
                if registered is None or conn not in registered:
                    yield conn

    def registered_dns(self, conn: TLibConnection) -> set[str]:
        dns: set[str] = conn.context.setdefault("dns", set())
        return dns

    # -- TLibHandler --------------------------------------------------------------------
    def on_registered(self, conn: TLibConnection) -> None:
        mesh = self.controller.mesh
        if mesh is not None and mesh.is_peer(conn):
            mesh.peer_connected(conn)  # a peer t-controller's link, not a client
            return
        self.clients.add(conn)
        client_id(conn)
        if conn.client_type == "smart":
            self._smart.add(conn)
            if mesh is not None and conn.application.startswith(SMART_PROXY_PREFIX):
                # a Smart Proxy's bulk registration: the state of every DN owned here
                mesh.snapshot(conn, granted=DnSnapshot)

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        mesh = self.controller.mesh
        if mesh is not None and conn not in self.clients:
            mesh.peer_closed(conn)
            return
        self.clients.discard(conn)
        self._smart.discard(conn)
        for dn in self.registered_dns(conn):
            holders = self._by_dn.get(dn)
            if holders is not None:
                holders.discard(conn)
                if not holders:
                    del self._by_dn[dn]
        controller = self.controller
        now = controller.clock()
        client = client_id(conn)
        if mesh is not None:
            for dn in self.registered_dns(conn):
                if mesh.owner_peer(dn) is not None:
                    mesh.withdraw(dn, client, gone=True)
                mesh.remove_interest(dn)
        events = controller.agents.client_disconnected(client, now)
        if events:
            self.log.info("logout_on_disconnect", client=client, agents=len(events))
        controller.publish_agent_events(events)
        controller.apply(controller.ownership.client_disconnected(controller.node, client, now))

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        name = request.name
        mesh = self.controller.mesh
        if mesh is not None and conn not in self.clients:
            mesh.on_peer_request(conn, request)
            return
        if name in AGENT_REQUESTS:
            self._agent_request(conn, request)
        elif name in CALL_CONTROL_REQUESTS:
            self._call_control(conn, request)
        elif name == "RequestRegisterAddress":
            self._register_address(conn, request)
        elif name == "RequestUnregisterAddress":
            self._unregister_address(conn, request)
        elif name == "RequestQueryAddress":
            address_info(self.controller, conn, request)
        else:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              f"{name} is not supported on TCport")

    # -- DN registration ------------------------------------------------------------
    def _register_address(self, conn: TLibConnection, request: RequestReceived) -> None:
        controller = self.controller
        dn: str = request.message["AttributeThisDN"]
        if not controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return
        first = dn not in self.registered_dns(conn)
        self._by_dn.setdefault(dn, set()).add(conn)
        self.registered_dns(conn).add(dn)
        outputs = controller.ownership.register_address(
            dn, controller.node, client_id(conn), conn.application, controller.clock())
        mesh = controller.mesh
        claimant = (client_id(conn), conn.application)
        if mesh is not None:
            owner = mesh.owner_peer(dn)
            if owner is not None and first and mesh.register_remote(conn, request, dn, owner):
                # the owner answers with the DN's state there
                if controller.log_debug:
                    self.log.debug("dn_registered", dn=dn, client=client_id(conn),
                                   owner=owner.node)
                controller.apply(outputs, claimant=claimant)
                return
            if first:
                mesh.add_interest(dn)
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
        dns = self.registered_dns(conn)
        if dn not in dns:
            conn.answer_error(request, ErrorCode.CLIENT_NOT_REGISTERED,
                              f"DN {dn} is not registered by this client")
            return
        dns.discard(dn)
        holders = self._by_dn.get(dn)
        if holders is not None:
            holders.discard(conn)
            if not holders:
                del self._by_dn[dn]
        conn.answer(request, "EventUnregistered", {"AttributeThisDN": dn})
        mesh = controller.mesh
        if mesh is not None:
            if mesh.owner_peer(dn) is not None:
                mesh.withdraw(dn, client_id(conn))
            mesh.remove_interest(dn)
        controller.apply(controller.ownership.unregister_address(
            dn, controller.node, client_id(conn), controller.clock()))

    # -- access -------------------------------------------------------------------------
    def _check_access(self, conn: TLibConnection, request: RequestReceived) -> str | None:
        """The DN of the request if this client may act on it; otherwise the
        request is answered with ``EventError`` and None is returned."""
        dn: str = request.message["AttributeThisDN"]
        if not self.controller.known_dn(dn):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
            return None
        if dn in self.registered_dns(conn):
            return dn
        if conn in self._smart and self.controller.is_local(dn):
            return dn
        conn.answer_error(request, ErrorCode.CLIENT_NOT_REGISTERED,
                          f"DN {dn} is not registered by this client "
                          "(RequestRegisterAddress first)")
        return None

    # -- agent requests -----------------------------------------------------------------
    def _agent_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        dn = self._check_access(conn, request)
        if dn is None:
            return
        mesh = self.controller.mesh
        owner = mesh.owner_peer(dn) if mesh is not None else None
        if mesh is not None and owner is not None:
            if not mesh.forward(owner, conn, request, client=client_id(conn)):
                conn.answer_error(request, ErrorCode.INTERNAL_ERROR,
                                  f"DN {dn} is owned by {owner.node}; the link to "
                                  f"{owner.tc} is down")
            return
        self.agent_request(conn, request, dn, client_id(conn))

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

    # -- call control ---------------------------------------------------------------------
    def _call_control(self, conn: TLibConnection, request: RequestReceived) -> None:
        dn = self._check_access(conn, request)
        if dn is None:
            return
        mesh = self.controller.mesh
        if mesh is not None and mesh.route_call_control(conn, request, dn):
            return  # the call, or the DN, is on another node
        self.call_control(conn, request)

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

    def connections(self) -> Iterable[TLibConnection]:
        return tuple(self.clients)

    def describe(self) -> dict[str, Any]:
        return {"clients": len(self.clients), "smart": len(self._smart),
                "registered_dns": len(self._by_dn)}
