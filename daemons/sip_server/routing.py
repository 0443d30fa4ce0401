"""Routing points on the default port (docs/node.md, "Routing points";
guide: "Routing Principles", options ``router-timeout`` and ``default-dn``).

A routing client registers a Routing Point DN; a call reaching it waits in
:meth:`RoutingPoints.wait` until ``RequestRouteCall`` names a destination
(:meth:`RoutingPoints.route`) or ``router-timeout`` passes, after which it
goes to the routing point's ``default-dn`` (else the application's).

:func:`route_extensions` is what ``EventQueued`` / ``EventRouteRequest``
carry in AttributeExtensions for the routing strategies (guide:
"Location-Based Routing"): ``geo-location`` (the routing point's, else the
node's) and ``OtherTrunkName`` (the Trunk DN the call came in on).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemons.cluster.config import Dn, DnType
from daemons.sip_server.agent_no_answer import NoAnswerSupervision
from protocols.sip.errors import ParseError
from protocols.sip.uri import parse_uri

__all__ = ["RouteDecision", "RoutingPoints", "route_extensions", "trunk_of"]


def trunk_of(dns: Mapping[str, Dn], host: str | None) -> str | None:
    """The Trunk DN whose ``contact`` is ``host`` (the address a call came from)."""
    if not host:
        return None
    for number, dn in dns.items():
        if dn.type is not DnType.TRUNK or not dn.contact:
            continue
        contact = dn.contact
        try:
            trunk_host = parse_uri(contact).host if contact.startswith(("sip:", "sips:")) \
                else contact.rsplit(":", 1)[0] if contact.count(":") == 1 else contact
        except ParseError:
            continue
        if trunk_host == host:
            return number
    return None


def route_extensions(dns: Mapping[str, Dn], routing_point: str, node_geo: str | None,
                     source_host: str | None) -> dict[str, Any]:
    """AttributeExtensions of ``EventQueued`` / ``EventRouteRequest`` (module doc)."""
    extensions: dict[str, Any] = {}
    entry = dns.get(routing_point)
    geo = entry.options.get("geo-location") if entry is not None else None
    geo = geo if isinstance(geo, str) else node_geo
    if geo:
        extensions["geo-location"] = geo
    trunk = trunk_of(dns, source_host)
    if trunk is not None:
        extensions["OtherTrunkName"] = trunk
    return extensions


@dataclass(frozen=True)
class RouteDecision:
    """Where a routed call goes; ``default`` when router-timeout chose it."""

    destination: str | None
    default: bool
    user_data: dict[str, Any] | None = None
    route_type: str | None = None
    requester: Any = None  # (TLibConnection, RequestReceived) of the RequestRouteCall


class RoutingPoints:
    """Calls waiting on routing points, by ConnID."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, asyncio.Future[RouteDecision]]] = {}
        #: the routed calls' no-answer supervision (agent-no-answer-*)
        self.supervision = NoAnswerSupervision()

    def waiting(self, conn_id: str) -> str | None:
        """The routing point a call waits on, or ``None``."""
        entry = self._pending.get(conn_id)
        return entry[0] if entry is not None else None

    async def wait(self, conn_id: str, routing_point: str, timeout: float,
                   default_dn: str | None) -> RouteDecision:
        """Wait for :meth:`route`; after ``timeout`` the default destination."""
        future: asyncio.Future[RouteDecision] = asyncio.get_running_loop().create_future()
        self._pending[conn_id] = (routing_point, future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return RouteDecision(default_dn, True)
        finally:
            self._pending.pop(conn_id, None)

    def route(self, conn_id: str, routing_point: str, decision: RouteDecision) -> bool:
        """Route a waiting call; False when no call waits there under that ConnID."""
        entry = self._pending.get(conn_id)
        if entry is None or entry[0] != routing_point or entry[1].done():
            return False
        entry[1].set_result(decision)
        if decision.destination is not None and decision.requester is not None \
                and decision.route_type != "Reject":
            request = decision.requester[1]
            self.supervision.routed(conn_id, routing_point, decision.destination,
                                    request.message.get("AttributeExtensions"))
        return True

    def abandon(self, conn_id: str) -> None:
        """The caller hung up while the call waited, or the call ended."""
        self.supervision.forget(conn_id)
        entry = self._pending.pop(conn_id, None)
        if entry is not None and not entry[1].done():
            entry[1].cancel()
