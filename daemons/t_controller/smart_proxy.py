"""Smart Proxy: one T-Library connection through which legacy monitoring
clients (Stat Server and the like) see the events of every DN, whichever
node owns it (guide: "Smart Proxy").

The port takes legacy clients only; agent and call-control requests are
refused (``EventError`` 60: "Smart Proxy does not accept agent and
supervisor requests, and smart T-Library connections"). A client may
register DNs (answered with the DN's state) but gets every event anyway.

Events come from this node's t-controller through :meth:`SmartProxy.publish`;
the events of other nodes, once the t-controller mesh relays them, enter
through :meth:`SmartProxy.feed` with the origin node.
"""

from __future__ import annotations

from typing import Any

from daemons.sip_server.tlib_server import TLibConnection
from daemons.t_controller.controller import TController
from daemons.t_controller.tcport import AGENT_REQUESTS, CALL_CONTROL_REQUESTS, address_info
from protocols.tlib.errors import ErrorCode
from protocols.tlib.framing import TMap
from protocols.tlib.session import RequestReceived

__all__ = ["ACCEPTED_CLIENT_TYPES", "SmartProxy"]

#: The Smart Proxy port refuses smart connections (guide: "Smart Proxy").
ACCEPTED_CLIENT_TYPES = frozenset({"legacy"})


class SmartProxy:
    """The Smart Proxy port handler (a ``TLibHandler``)."""

    def __init__(self, controller: TController) -> None:
        self.controller = controller
        self.log = controller.log.bind(port_name="smart-proxy-port")
        self.clients: set[TLibConnection] = set()
        self._clients_snapshot: tuple[TLibConnection, ...] = ()
        self.fed: dict[str, int] = {}
        controller.smart_proxy = self

    # -- events in --------------------------------------------------------------------
    def publish(self, name: str, attributes: TMap) -> int:
        """Send one event of this node to every client; returns how many got it."""
        sent = 0
        for conn in self._clients_snapshot:
            if conn.send_event(name, attributes) is not None:
                sent += 1
        return sent

    def feed(self, name: str, attributes: TMap, origin: str) -> int:
        """An event of another node (``origin`` = its sip-server name), relayed
        by the t-controller mesh."""
        self.fed[origin] = self.fed.get(origin, 0) + 1
        delivered = self.publish(name, attributes)
        if delivered:
            self.controller._sent_sp.inc(delivered)
        return delivered

    # -- TLibHandler ------------------------------------------------------------------
    def on_registered(self, conn: TLibConnection) -> None:
        self.clients.add(conn)
        self._clients_snapshot = tuple(self.clients)

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        self.clients.discard(conn)
        self._clients_snapshot = tuple(self.clients)

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
        return {"clients": len(self.clients), "fed": dict(self.fed)}
