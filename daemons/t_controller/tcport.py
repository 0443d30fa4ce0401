"""TCport: the t-controller's T-Library port for agent desktops and smart
clients, and for the peer t-controllers of the mesh (guide: "T-Controller",
"T-Controller DN Ownership", "Agent Availability for Routing"; docs/node.md,
docs/t-controller.md).

* **Legacy clients** (desktops) register the DNs they want and then get
  every event of those DNs: call events relayed from the sip-server, agent
  events, DN service events.
* **Smart clients** get every event of the DNs this node owns without
  registering each one; a Smart Proxy's bulk connection
  (``SmartProxy@<t-controller>``) gets the state of each at registration.
* **Peer t-controllers** connect here as smart clients named after
  themselves: their connection is the mesh's (:mod:`daemons.t_controller.mesh`).

This module is the connection lifecycle: what a client's arrival and
departure change (logout-on-disconnect, release of T-Library-based
ownership, interest withdrawn from the peers). The requests go to
:class:`~daemons.t_controller.requests.Requests`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.agent import AgentEvent
from daemons.t_controller.clients import TCPortClients, client_id
from daemons.t_controller.ownership import OwnershipOutput
from daemons.t_controller.peers import SMART_PROXY_PREFIX
from daemons.t_controller.requests import Requests
from daemons.t_controller.state import ControllerState
from protocols.tlib.session import RequestReceived

__all__ = ["PeerConnections", "TCPort", "TCPortController"]


class TCPortController(ControllerState, Protocol):
    """What TCport needs of the :class:`~daemons.t_controller.controller.TController`."""

    @property
    def log(self) -> Any: ...
    @property
    def tcport_clients(self) -> TCPortClients: ...

    def publish_agent_events(self, events: Iterable[AgentEvent],
                             answer: tuple[TLibConnection, int] | None = None, *,
                             local: bool | None = None) -> None: ...
    def apply(self, outputs: Iterable[OwnershipOutput],
              answer: tuple[TLibConnection, int] | None = None, *,
              claimant: tuple[str, str] | None = None,
              details: dict[str, Any] | None = None) -> None: ...


class PeerConnections(Protocol):
    """What TCport hands to the mesh (:class:`~daemons.t_controller.mesh.Mesh`)."""

    def peer_connected(self, conn: TLibConnection) -> None:
        """A peer t-controller's link to this TCport is up."""
        ...

    def peer_closed(self, conn: TLibConnection) -> None:
        """A connection that is not a client's closed (a peer's link, or a stale one)."""
        ...

    def bulk_registered(self, conn: TLibConnection) -> None:
        """A Smart Proxy's bulk connection registered: the state of every DN owned here."""
        ...


class TCPort:
    """The TCport handler (a :class:`~daemons.runtime.tlib_server.TLibHandler`)."""

    def __init__(self, controller: TCPortController, requests: Requests,
                 mesh: PeerConnections) -> None:
        self.controller = controller
        self.clients = controller.tcport_clients
        self.peers = controller.peers
        self.requests = requests
        self.mesh = mesh
        self.log = controller.log.bind(port_name="tc-port")

    def on_registered(self, conn: TLibConnection) -> None:
        if self.peers.is_peer(conn):
            self.mesh.peer_connected(conn)  # a peer t-controller's link, not a client
            return
        self.clients.add(conn)
        if conn.client_type == "smart" and conn.application.startswith(SMART_PROXY_PREFIX):
            self.mesh.bulk_registered(conn)

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        if conn not in self.clients:
            self.mesh.peer_closed(conn)
            return
        dns = self.clients.remove(conn)
        controller = self.controller
        now = controller.clock()
        client = client_id(conn)
        peers = self.peers
        for dn in dns:
            if peers.owner_peer(dn) is not None:
                peers.withdraw(dn, client, gone=True)
            peers.remove_interest(dn)
        events = controller.agents.client_disconnected(client, now)
        if events:
            self.log.info("logout_on_disconnect", client=client, agents=len(events))
        controller.publish_agent_events(events)
        controller.apply(controller.ownership.client_disconnected(controller.node, client, now))

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        if conn not in self.clients:
            self.requests.on_peer_request(conn, request)
            return
        self.requests.on_tcport_request(conn, request)

    def connections(self) -> Iterable[TLibConnection]:
        return tuple(self.clients.clients)

    def describe(self) -> dict[str, Any]:
        return self.clients.describe()
