"""Who gets the t-controller's events: the clients of TCport by DN, its smart
clients, and the clients of the Smart Proxy port (guide: "T-Controller",
"Smart Proxy"; docs/node.md, docs/t-controller.md).

Plain state, owned by the :class:`~daemons.t_controller.controller.TController`:
the port handlers (:mod:`~daemons.t_controller.tcport`,
:mod:`~daemons.t_controller.smart_proxy`) add and remove connections, the
controller reads who gets an event.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

from daemons.runtime.tlib_server import TLibConnection
from protocols.tlib.catalogue import validate
from protocols.tlib.errors import TLibError
from protocols.tlib.framing import TMap

__all__ = ["SmartProxyClients", "TCPortClients", "client_id", "event_is_valid"]

_client_numbers = itertools.count(1)


def client_id(conn: TLibConnection) -> str:
    """A name for the connection, unique in this process (agent and ownership tables)."""
    value = conn.context.get("client_id")
    if value is None:
        value = f"{conn.application}#{next(_client_numbers)}"
        conn.context["client_id"] = value
    return str(value)


def event_is_valid(name: str, attributes: Mapping[str, Any]) -> bool:
    """The catalogue check of an event, made once per fan-out (docs/tlib.md,
    "Catalogue"): a valid event then goes to every recipient as a *trusted*
    event, not checked again per connection. An invalid one is sent unchecked
    to no one: each connection refuses, counts and logs it."""
    message: TMap = {"message": name}
    message.update(attributes)
    try:
        validate(message, kind="event")
    except TLibError:
        return False
    return True


def registered_dns(conn: TLibConnection) -> set[str]:
    """The DNs a client of TCport or of the Smart Proxy port registered."""
    dns: set[str] = conn.context.setdefault("dns", set())
    return dns


class TCPortClients:
    """The clients of TCport (desktops and smart clients; peer t-controllers
    are not among them): legacy clients get the events of the DNs they
    registered, smart clients every event of the DNs this node owns."""

    def __init__(self) -> None:
        self.clients: set[TLibConnection] = set()
        self._by_dn: dict[str, set[TLibConnection]] = {}
        self._smart: set[TLibConnection] = set()

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, conn: object) -> bool:
        return conn in self.clients

    def add(self, conn: TLibConnection) -> None:
        self.clients.add(conn)
        client_id(conn)
        if conn.client_type == "smart":
            self._smart.add(conn)

    def remove(self, conn: TLibConnection) -> set[str]:
        """The client is gone; returns the DNs it had registered."""
        self.clients.discard(conn)
        self._smart.discard(conn)
        dns = registered_dns(conn)
        for dn in dns:
            self._drop(conn, dn)
        return dns

    def is_smart(self, conn: TLibConnection) -> bool:
        return conn in self._smart

    def register(self, conn: TLibConnection, dn: str) -> bool:
        """The client registered ``dn``; True the first time."""
        dns = registered_dns(conn)
        first = dn not in dns
        self._by_dn.setdefault(dn, set()).add(conn)
        dns.add(dn)
        return first

    def unregister(self, conn: TLibConnection, dn: str) -> bool:
        """The client let go of ``dn``; False when it had not registered it."""
        dns = registered_dns(conn)
        if dn not in dns:
            return False
        dns.discard(dn)
        self._drop(conn, dn)
        return True

    def _drop(self, conn: TLibConnection, dn: str) -> None:
        holders = self._by_dn.get(dn)
        if holders is not None:
            holders.discard(conn)
            if not holders:
                del self._by_dn[dn]

    def recipients(self, dn: str | None, local: bool) -> Iterator[TLibConnection]:
        """The clients that get the events of ``dn`` (``local``: the smart
        clients too, for the events of this node)."""
        registered = self._by_dn.get(dn) if dn is not None else None
        if registered:
            yield from tuple(registered)
        if local and self._smart:
            for conn in tuple(self._smart):
                if registered is None or conn not in registered:
                    yield conn

    def describe(self) -> dict[str, Any]:
        return {"clients": len(self.clients), "smart": len(self._smart),
                "registered_dns": len(self._by_dn)}


class SmartProxyClients:
    """The clients of the Smart Proxy port: every event of this node, and the
    events of other nodes fed in (``fed``: how many, by origin)."""

    def __init__(self) -> None:
        self.clients: set[TLibConnection] = set()
        self._snapshot: tuple[TLibConnection, ...] = ()
        self.fed: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, conn: TLibConnection) -> None:
        self.clients.add(conn)
        self._snapshot = tuple(self.clients)

    def remove(self, conn: TLibConnection) -> None:
        self.clients.discard(conn)
        self._snapshot = tuple(self.clients)

    def publish(self, name: str, attributes: TMap, *, trusted: bool | None = None) -> int:
        """Send one event to every client; returns how many got it.
        ``trusted``: whether the event passed the catalogue check
        (:func:`event_is_valid`); None: not checked yet, checked here once for
        every client."""
        clients = self._snapshot
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
        ``mesh`` when the t-controller relays it), to every client."""
        self.fed[origin] = self.fed.get(origin, 0) + 1
        return self.publish(name, attributes, trusted=trusted)
