"""Smart Proxy: one T-Library connection through which legacy monitoring
clients (Stat Server and the like) see the events of every DN, whichever
node owns it (guide: "Smart Proxy").

The port takes legacy clients only; agent and call-control requests are
refused (``EventError`` 60: "Smart Proxy does not accept agent and
supervisor requests, and smart T-Library connections"). A client may
register DNs (answered with the DN's state) but gets every event anyway.

Events come from this node's t-controller through :meth:`SmartProxy.publish`;
the events of other nodes enter through :meth:`SmartProxy.feed`:

* normal mode (``smart-proxy-enabled = false``, the guide's "compatibility
  mode"): the t-controller mesh sends every event to every t-controller, and
  the t-controller feeds the ones of other nodes here;
* optimised mode (``smart-proxy-enabled = true``): while it has clients, the
  Smart Proxy is itself registered to every other t-controller as a bulk smart
  client (application ``SmartProxy@<t-controller>``) and receives there the
  events of the DNs each owns; the t-controllers stop sending each other the
  events only the Smart Proxy needs.

``EventDNBackInService`` / ``EventDNOutOfService`` of another node's DNs come
from the ownership decisions every t-controller gets (in both modes, and also
on a peer's loss and reconnection, when the bulk link has nothing to say); the
ones a bulk link carries are not passed on, so that a client sees each DN's
service event once, with the same shape for every DN: the DN's state in
``AttributeExtensions`` (``owner``, ``ownership``, ``dn-state``,
``agent-state``, ``on-call``) and the agent's attributes
(:meth:`~daemons.t_controller.controller.TController.dn_service_attributes`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.controller import TController, event_is_valid
from daemons.t_controller.mesh import PeerLink, smart_proxy_name
from daemons.t_controller.node_link import ForwardedRequest
from daemons.t_controller.tcport import AGENT_REQUESTS, CALL_CONTROL_REQUESTS, address_info
from protocols.tlib.errors import ErrorCode
from protocols.tlib.framing import TMap
from protocols.tlib.mesh import DnSnapshot, MalformedMeshMessage, decode_event
from protocols.tlib.session import RequestReceived

__all__ = ["ACCEPTED_CLIENT_TYPES", "SmartProxy"]

#: The Smart Proxy port refuses smart connections (guide: "Smart Proxy").
ACCEPTED_CLIENT_TYPES = frozenset({"legacy"})
#: Events a bulk link carries that the clients get from the ownership decisions.
_FROM_DECISIONS = frozenset({"EventDNBackInService", "EventDNOutOfService"})


class SmartProxy:
    """The Smart Proxy port handler (a ``TLibHandler``)."""

    def __init__(self, controller: TController) -> None:
        self.controller = controller
        self.log = controller.log.bind(port_name="smart-proxy-port")
        self.clients: set[TLibConnection] = set()
        self._clients_snapshot: tuple[TLibConnection, ...] = ()
        self.fed: dict[str, int] = {}
        #: service events of bulk links not passed on (the decisions gave them), by node
        self.from_decisions: dict[str, int] = {}
        self.bulk_links: dict[str, PeerLink] = {}
        self._stopping: asyncio.Task[None] | None = None
        controller.smart_proxy = self

    # -- bulk registration to the other t-controllers (optimised mode) ----------------
    @property
    def optimised(self) -> bool:
        mesh = self.controller.mesh
        return mesh is not None and bool(mesh.optimised)

    def start_bulk_links(self) -> None:
        mesh = self.controller.mesh
        if mesh is None or self.bulk_links:
            return
        for peer in mesh.peers.values():
            link = PeerLink(
                _BulkSink(self, peer.node), local_host=self.controller.app.host,
                host=peer.host, port=peer.port,
                application_name=smart_proxy_name(self.controller.name),
                addp_timeout=mesh.addp_timeout, addp_remote_timeout=mesh.addp_remote_timeout,
                backoff_max=mesh.backoff_max)
            self.bulk_links[peer.node] = link
            link.start()
        self.log.info("smart_proxy_bulk_registration", peers=len(self.bulk_links))

    async def stop_bulk_links(self) -> None:
        links, self.bulk_links = self.bulk_links, {}
        for link in links.values():
            await link.stop()

    def bulk_up(self) -> int:
        return sum(1 for link in self.bulk_links.values() if link.up)

    # -- events in --------------------------------------------------------------------
    def publish(self, name: str, attributes: TMap, *, trusted: bool | None = None) -> int:
        """Send one event of this node to every client; returns how many got it.
        ``trusted``: whether the event passed the catalogue check
        (:func:`~daemons.t_controller.controller.event_is_valid`); None: not
        checked yet, checked here once for every client."""
        clients = self._clients_snapshot
        if not clients:
            return 0
        if trusted is None:
            trusted = event_is_valid(name, attributes)
        sent = 0
        for conn in clients:
            if conn.send_event(name, attributes, trusted=trusted) is not None:
                sent += 1
        return sent

    def feed(self, name: str, attributes: TMap, origin: str, *,
             trusted: bool | None = None) -> int:
        """An event of another node (``origin`` = its sip-server name, or
        ``mesh`` when the t-controller relays it); ``trusted`` as for
        :meth:`publish` (None: checked here, once for every client)."""
        self.fed[origin] = self.fed.get(origin, 0) + 1
        if name.startswith("EventAgent"):
            self.controller.mirror_agent(name, attributes)
        delivered = self.publish(name, attributes, trusted=trusted)
        if delivered:
            self.controller._sent_sp.inc(delivered)
        return delivered

    # -- TLibHandler ------------------------------------------------------------------
    def on_registered(self, conn: TLibConnection) -> None:
        self.clients.add(conn)
        self._clients_snapshot = tuple(self.clients)
        if self.optimised:
            self.start_bulk_links()

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        self.clients.discard(conn)
        self._clients_snapshot = tuple(self.clients)
        if not self.clients and self.bulk_links:
            self._stopping = asyncio.get_running_loop().create_task(self.stop_bulk_links())

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        name = request.name
        controller = self.controller
        if name in AGENT_REQUESTS or name in CALL_CONTROL_REQUESTS:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              f"{name} is not accepted on the Smart Proxy port; "
                              "agent desktops connect to TCport")
        elif name == "RequestRegisterAddress":
            dn: str = request.message["AttributeThisDN"]
            if not controller.known_dn(dn):
                conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn[:64]}")
                return
            conn.context.setdefault("dns", set()).add(dn)
            conn.answer(request, "EventRegistered", controller.dn_attributes(dn))
        elif name == "RequestUnregisterAddress":
            dn = request.message["AttributeThisDN"]
            dns: set[str] = conn.context.setdefault("dns", set())
            if dn not in dns:
                conn.answer_error(request, ErrorCode.CLIENT_NOT_REGISTERED,
                                  f"DN {dn[:64]} is not registered by this client")
                return
            dns.discard(dn)
            conn.answer(request, "EventUnregistered", {"AttributeThisDN": dn})
        elif name == "RequestQueryAddress":
            address_info(controller, conn, request)
        else:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              f"{name} is not supported on the Smart Proxy port")

    def describe(self) -> dict[str, Any]:
        return {"clients": len(self.clients), "fed": dict(self.fed),
                "service-events-from-decisions": dict(self.from_decisions),

                "mode": "optimised" if self.optimised else "normal",
                "bulk-links": {node: "up" if link.up else "down"
                               for node, link in self.bulk_links.items()}}


class _BulkSink:
    """Events of one t-controller on the Smart Proxy's bulk connection to it."""

    def __init__(self, proxy: SmartProxy, node: str) -> None:
        self.proxy = proxy
        self.node = node

    def on_link_up(self) -> None:
        self.proxy.log.info("smart_proxy_bulk_link_up", peer=self.node)

    def on_link_down(self, reason: str, lost: list[ForwardedRequest]) -> None:
        self.proxy.log.warning("smart_proxy_bulk_link_down", peer=self.node, reason=reason)

    def on_node_event(self, event: TMap, answers: ForwardedRequest | None) -> None:
        name = event.get("message")
        if not isinstance(name, str) or name == "EventServerInfo" or answers is not None:
            return
        attributes = {k: v for k, v in event.items() if k not in _LINK_ATTRIBUTES}
        try:
            message = decode_event(name, attributes)
        except MalformedMeshMessage as exc:
            mesh = self.proxy.controller.mesh
            if mesh is not None:
                mesh.refused(self.node, name, exc)
            return
        if isinstance(message, DnSnapshot):
            # the state of a DN at bulk registration: kept, not an event for the clients
            self.proxy.controller.mirror_announced_agent(message)
            return
        if name in _FROM_DECISIONS:
            counts = self.proxy.from_decisions
            counts[self.node] = counts.get(self.node, 0) + 1
            return
        self.proxy.feed(name, attributes, self.node)


_LINK_ATTRIBUTES = frozenset({"message", "AttributeReferenceID", "AttributeEventSequenceNumber",
                              "AttributeTimeinSecs", "AttributeTimeinuSecs"})
