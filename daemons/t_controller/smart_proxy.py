"""Smart Proxy: one T-Library connection through which legacy monitoring
clients (Stat Server and the like) see the events of every DN, whichever
node owns it (guide: "Smart Proxy").

The port takes legacy clients only; agent and call-control requests are
refused (``EventError`` 60: "Smart Proxy does not accept agent and
supervisor requests, and smart T-Library connections"). A client may
register DNs (answered with the DN's state) but gets every event anyway.

Events come from this node's t-controller (its
:class:`~daemons.t_controller.clients.SmartProxyClients`); the events of other
nodes are fed in (:meth:`~daemons.t_controller.controller.TController.feed_smart_proxy`):

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
from typing import Any, Protocol

from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.clients import SmartProxyClients
from daemons.t_controller.node_link import ForwardedRequest
from daemons.t_controller.peers import PeerLink, PeerTable, smart_proxy_name
from daemons.t_controller.requests import Requests
from protocols.tlib.framing import TMap
from protocols.tlib.mesh import DnGranted, DnSnapshot, MalformedMeshMessage, decode_event
from protocols.tlib.session import RequestReceived

__all__ = ["ACCEPTED_CLIENT_TYPES", "SmartProxy", "SmartProxyController"]

#: The Smart Proxy port refuses smart connections (guide: "Smart Proxy").
ACCEPTED_CLIENT_TYPES = frozenset({"legacy"})
#: Events a bulk link carries that the clients get from the ownership decisions.
_FROM_DECISIONS = frozenset({"EventDNBackInService", "EventDNOutOfService"})
#: Attributes of a received event that belong to the link, not to the event.
_LINK_ATTRIBUTES = frozenset({"message", "AttributeReferenceID", "AttributeEventSequenceNumber",
                              "AttributeTimeinSecs", "AttributeTimeinuSecs"})


class SmartProxyController(Protocol):
    """What the Smart Proxy needs of the
    :class:`~daemons.t_controller.controller.TController`."""

    @property
    def name(self) -> str: ...
    @property
    def log(self) -> Any: ...
    @property
    def peers(self) -> PeerTable: ...
    @property
    def smart_proxy_clients(self) -> SmartProxyClients | None: ...

    def feed_smart_proxy(self, name: str, attributes: TMap, origin: str, *,
                         trusted: bool | None = None) -> int: ...
    def mirror_announced_agent(self, message: DnGranted) -> None: ...


class SmartProxy:
    """The Smart Proxy port handler (a ``TLibHandler``)."""

    def __init__(self, controller: SmartProxyController, requests: Requests) -> None:
        clients = controller.smart_proxy_clients
        assert clients is not None, "the application has no smart-proxy-port"
        self.controller = controller
        self.requests = requests
        self.peers = controller.peers
        self.audience = clients
        self.log = controller.log.bind(port_name="smart-proxy-port")
        #: service events of bulk links not passed on (the decisions gave them), by node
        self.from_decisions: dict[str, int] = {}
        self.bulk_links: dict[str, PeerLink] = {}
        self._stopping: asyncio.Task[None] | None = None

    @property
    def clients(self) -> set[TLibConnection]:
        return self.audience.clients

    @property
    def fed(self) -> dict[str, int]:
        """Events of other nodes fed to the clients, by origin."""
        return self.audience.fed

    # -- bulk registration to the other t-controllers (optimised mode) ----------------
    @property
    def optimised(self) -> bool:
        return bool(self.peers.optimised)

    def start_bulk_links(self) -> None:
        if self.bulk_links:
            return
        name = smart_proxy_name(self.controller.name)
        for peer in self.peers.peers.values():
            link = self.peers.new_link(peer, _BulkSink(self, peer.node), application_name=name)
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
    def feed(self, name: str, attributes: TMap, origin: str, *,
             trusted: bool | None = None) -> int:
        """An event of another node (``origin`` = its sip-server name, or
        ``mesh`` when the t-controller relays it) for the clients; returns
        how many got it."""
        return self.controller.feed_smart_proxy(name, attributes, origin, trusted=trusted)

    # -- TLibHandler ------------------------------------------------------------------
    def on_registered(self, conn: TLibConnection) -> None:
        self.audience.add(conn)
        if self.optimised:
            self.start_bulk_links()

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        self.audience.remove(conn)
        if not self.audience.clients and self.bulk_links:
            self._stopping = asyncio.get_running_loop().create_task(self.stop_bulk_links())

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        self.requests.on_smart_proxy_request(conn, request)

    def describe(self) -> dict[str, Any]:
        return {"clients": len(self.audience.clients), "fed": dict(self.fed),
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
            self.proxy.peers.refused(self.node, name, exc)
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
