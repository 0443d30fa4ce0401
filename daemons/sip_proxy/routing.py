"""Which node gets a request (guide: "SIP Proxy", "SIP Registration").

* New dialogs from endpoints go to an in-service node of the proxy's own
  geo-location; the node is chosen by rendezvous (highest-random-weight)
  hashing of the Call-ID over the usable nodes, so every request of a Call-ID
  reaches the same node, from any proxy, and removing one node only moves the
  calls that were on it.
* When no local node is usable, the nodes of the other data centres take the
  traffic (same hashing over them).
* Of an HA pair only the member the out-of-service detection reports as
  active (the primary) is usable.

Pure: node states come from :class:`protocols.sip.oos.OosMonitor`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["NodeTarget", "Router", "hrw_order"]


@dataclass(frozen=True, slots=True)
class NodeTarget:
    """A SIP Server the proxy may forward to. ``pair`` names the other member
    of its HA pair (primary <-> backup), ``primary`` the configured role."""

    name: str
    geo_location: str
    host: str
    port: int
    transport: str = "UDP"
    pair: str | None = None
    primary: bool = True
    group: str = ""  # the HA pair's name (the configured primary's)


def _weight(call_id: str, name: str) -> int:
    digest = hashlib.blake2b(f"{name}\x00{call_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hrw_order(call_id: str, nodes: list[NodeTarget]) -> list[NodeTarget]:
    """Nodes in rendezvous-hash order for ``call_id`` (best first).

    The weight is computed per HA *group*, so a pair's members share a place in
    the order and a switchover keeps the call's slot.
    """
    if len(nodes) < 2:
        return list(nodes)  # nothing to order: no hash per request
    return sorted(nodes, key=lambda n: _weight(call_id, n.group or n.name), reverse=True)


class Router:
    """Node selection for one proxy (see module docstring)."""

    def __init__(self, nodes: list[NodeTarget], geo_location: str,
                 usable: Callable[[str], bool]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self._hosts = frozenset(n.host for n in self.nodes.values())
        self.geo_location = geo_location
        self.usable = usable

    def _active(self, local: bool) -> list[NodeTarget]:
        out = []
        for n in self.nodes.values():
            if (n.geo_location == self.geo_location) != local or not self.usable(n.name):
                continue
            if n.pair is not None and not n.primary and self.usable(n.pair):
                continue  # both members claim to be active: the configured primary wins
            out.append(n)
        return out

    def candidates(self, call_id: str) -> list[NodeTarget]:
        """Usable nodes for a new dialog, best first: local ones, else remote ones."""
        local = self._active(local=True)
        if local:
            return hrw_order(call_id, local)
        return hrw_order(call_id, self._active(local=False))

    def select(self, call_id: str) -> NodeTarget | None:
        c = self.candidates(call_id)
        return c[0] if c else None

    def pinned(self, name: str) -> NodeTarget | None:
        """The node a dialog is pinned to, or the active member of its HA pair."""
        node = self.nodes.get(name)
        if node is None:
            return None
        if self.usable(node.name):
            return node
        if node.pair is not None and self.usable(node.pair):
            return self.nodes.get(node.pair)
        return None

    def node_at(self, host: str, port: int | None = None) -> NodeTarget | None:
        """The node listening at ``host`` (and ``port`` when given)."""
        for n in self.nodes.values():
            if n.host == host and (port is None or n.port == port):
                return n
        return None

    def is_node_host(self, host: str) -> bool:
        return host in self._hosts
