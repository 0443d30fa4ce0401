"""Routing points on the default port (docs/node.md, "Routing points";
guide: "Routing Principles", options ``router-timeout`` and ``default-dn``).

A routing client registers a Routing Point DN; a call reaching it waits in
:meth:`RoutingPoints.wait` until ``RequestRouteCall`` names a destination
(:meth:`RoutingPoints.route`) or ``router-timeout`` passes, after which it
goes to the routing point's ``default-dn`` (else the application's).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

__all__ = ["RouteDecision", "RoutingPoints"]


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
        return True

    def abandon(self, conn_id: str) -> None:
        """The caller hung up while the call waited."""
        entry = self._pending.pop(conn_id, None)
        if entry is not None and not entry[1].done():
            entry[1].cancel()
