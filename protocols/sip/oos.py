"""Active out-of-service detection of cluster nodes (guide: "SIP Proxy",
"Configuring SIP Proxy": ``oos-check``, ``oos-force``).

Sans-I/O: the glue asks :meth:`OosMonitor.due` which nodes need an OPTIONS
now, reports answers with :meth:`answered` and calls :meth:`tick` on its
timer. A node is

* put **out of service** when ``oos-force`` seconds pass after a check
  without any answer to it;
* put **back in service** by the first answer.

Any final answer proves the node is alive; a 2xx says it is the *active*
(primary) member of its HA pair, anything else (a hot-standby backup answers
503) says it is alive but must not get traffic. Routing only uses nodes that
are in service *and* active (guide: "SIP Proxy forwards SIP messages only to
the primary SIP Server of the HA pair").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NodeHealth", "NodeState", "OosMonitor"]


class NodeState(enum.Enum):
    UNKNOWN = "unknown"  # no check answered yet
    IN_SERVICE = "in-service"
    OUT_OF_SERVICE = "out-of-service"


@dataclass(slots=True)
class NodeHealth:
    """What the monitor knows about one node."""

    name: str
    state: NodeState = NodeState.UNKNOWN
    active: bool = False  # answered 2xx: the primary of its pair
    last_check: float | None = None
    last_answer: float | None = None
    pending_since: float | None = None  # oldest unanswered check
    last_status: int | None = None
    checks: int = 0
    answers: int = 0
    transitions: int = 0
    changed: list[tuple[float, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "active": self.active,
                "last_check": self.last_check, "last_answer": self.last_answer,
                "last_status": self.last_status, "checks": self.checks,
                "answers": self.answers, "transitions": self.transitions}


class OosMonitor:
    """OPTIONS every ``oos_check`` s, out of service after ``oos_force`` s without answer."""

    def __init__(self, names: list[str], *, oos_check: float, oos_force: float) -> None:
        if oos_check <= 0:
            raise ValueError("oos-check must be positive for active detection")
        self.oos_check = oos_check
        self.oos_force = oos_force
        self.nodes = {name: NodeHealth(name) for name in names}

    def due(self, now: float) -> list[str]:
        """Nodes whose next check is due; marks them as checked at ``now``."""
        out = []
        for h in self.nodes.values():
            if h.last_check is None or now - h.last_check >= self.oos_check:
                h.last_check = now
                h.checks += 1
                if h.pending_since is None:
                    h.pending_since = now
                out.append(h.name)
        return out

    def answered(self, name: str, status: int, now: float) -> bool:
        """An answer to a check arrived; True when the node's routing state changed."""
        h = self.nodes[name]
        h.answers += 1
        h.last_answer = now
        h.last_status = status
        h.pending_since = None
        before = (h.state, h.active)
        h.state = NodeState.IN_SERVICE
        h.active = 200 <= status < 300
        return self._changed(h, before, now)

    def tick(self, now: float) -> list[str]:
        """Apply ``oos-force``; returns the nodes that just went out of service."""
        gone = []
        for h in self.nodes.values():
            if (h.pending_since is not None and h.state is not NodeState.OUT_OF_SERVICE
                    and now - h.pending_since >= self.oos_force):
                before = (h.state, h.active)
                h.state = NodeState.OUT_OF_SERVICE
                h.active = False
                self._changed(h, before, now)
                gone.append(h.name)
        return gone

    def next_deadline(self, now: float) -> float:
        """When :meth:`due` or :meth:`tick` next has work (for the glue's timer)."""
        times = []
        for h in self.nodes.values():
            times.append((h.last_check if h.last_check is not None else now) + self.oos_check)
            if h.pending_since is not None and h.state is not NodeState.OUT_OF_SERVICE:
                times.append(h.pending_since + self.oos_force)
        return min(times) if times else now + self.oos_check

    def usable(self, name: str) -> bool:
        h = self.nodes.get(name)
        return h is not None and h.state is NodeState.IN_SERVICE and h.active

    def alive(self, name: str) -> bool:
        h = self.nodes.get(name)
        return h is not None and h.state is NodeState.IN_SERVICE

    @staticmethod
    def _changed(h: NodeHealth, before: tuple[NodeState, bool], now: float) -> bool:
        if (h.state, h.active) == before:
            return False
        h.transitions += 1
        h.changed.append((now, h.state.value if h.active or h.state is not
                          NodeState.IN_SERVICE else "standby"))
        del h.changed[:-10]
        return True
