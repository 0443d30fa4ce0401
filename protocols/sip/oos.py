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

Each node is in one :class:`NodeState`; :data:`TRANSITIONS` is its one
(state, :class:`NodeInput`) -> state table and :meth:`NodeHealth.apply` the
only place that moves it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from protocols.sip.errors import SipError

__all__ = ["TRANSITIONS", "NodeHealth", "NodeInput", "NodeState", "OosError", "OosMonitor"]


class OosError(SipError):
    """An input the node state table does not allow in the node's current state."""


class NodeState(enum.Enum):
    UNKNOWN = "unknown"  # no check answered yet
    IN_SERVICE = "in-service"
    OUT_OF_SERVICE = "out-of-service"


class NodeInput(enum.Enum):
    """What the checks of one node tell (guide: ``oos-check``, ``oos-force``)."""

    #: a 2xx to a check: alive and the primary of its HA pair
    ACTIVE_ANSWER = "active-answer"
    #: any other answer (a hot-standby backup answers 503): alive, not for traffic
    STANDBY_ANSWER = "standby-answer"
    #: ``oos-force`` seconds passed after a check without any answer to it
    OOS_FORCE = "oos-force"


_UNKNOWN: Final = NodeState.UNKNOWN
_IN_SERVICE: Final = NodeState.IN_SERVICE
_OUT_OF_SERVICE: Final = NodeState.OUT_OF_SERVICE

#: A node's transitions: (state, input) -> next state. The first answer puts a
#: node in service whatever it was; ``oos-force`` puts it out of service once,
#: so a node already out of service refuses it (:class:`OosError`).
TRANSITIONS: Final[Mapping[tuple[NodeState, NodeInput], NodeState]] = {
    (_UNKNOWN, NodeInput.ACTIVE_ANSWER): _IN_SERVICE,
    (_UNKNOWN, NodeInput.STANDBY_ANSWER): _IN_SERVICE,
    (_UNKNOWN, NodeInput.OOS_FORCE): _OUT_OF_SERVICE,
    (_IN_SERVICE, NodeInput.ACTIVE_ANSWER): _IN_SERVICE,
    (_IN_SERVICE, NodeInput.STANDBY_ANSWER): _IN_SERVICE,
    (_IN_SERVICE, NodeInput.OOS_FORCE): _OUT_OF_SERVICE,
    (_OUT_OF_SERVICE, NodeInput.ACTIVE_ANSWER): _IN_SERVICE,
    (_OUT_OF_SERVICE, NodeInput.STANDBY_ANSWER): _IN_SERVICE,
}


@dataclass(slots=True)
class NodeHealth:
    """What the monitor knows about one node; only :meth:`apply` changes ``state``
    and ``active``."""

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

    def apply(self, trigger: NodeInput, now: float) -> bool:
        """Move the node by one input through :data:`TRANSITIONS` at ``now``.

        ``active`` becomes True on a 2xx answer only. Returns True when the
        routing state (state, active) changed; raises :class:`OosError` (the
        node is left as it was) when the table has no transition for
        ``trigger`` in the current state.
        """
        try:
            state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise OosError(
                f"node {self.name} is {self.state.value}: {trigger.value} is not allowed"
            ) from None
        before = (self.state, self.active)
        self.state = state
        self.active = trigger is NodeInput.ACTIVE_ANSWER
        if (self.state, self.active) == before:
            return False
        self.transitions += 1
        self.changed.append((now, self.state.value if self.active or self.state is not
                             NodeState.IN_SERVICE else "standby"))
        del self.changed[:-10]
        return True

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
        active = 200 <= status < 300
        return h.apply(NodeInput.ACTIVE_ANSWER if active else NodeInput.STANDBY_ANSWER, now)

    def tick(self, now: float) -> list[str]:
        """Apply ``oos-force``; returns the nodes that just went out of service."""
        gone = []
        for h in self.nodes.values():
            if (h.pending_since is not None and h.state is not NodeState.OUT_OF_SERVICE
                    and now - h.pending_since >= self.oos_force):
                h.apply(NodeInput.OOS_FORCE, now)
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
