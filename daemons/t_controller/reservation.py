"""Agent reservation at the DN's owner t-controller (sans-I/O; guide: "Agent
Reservation in SIP Cluster", "Agent Reservation Conflicts", the
``[agent-reservation] request-collection-time`` option and the
``agent_reservation`` priority of the ``[__ROUTER__]`` section).

Several routers may pick the same Ready agent for different calls. The owner
t-controller of the agent's DN is the one authority that says who gets it:

* the first ``RequestReserveAgent`` for an agent opens a **collection
  window** of ``request-collection-time`` seconds (0.3 by default); every
  request for the same agent that arrives before it closes is gathered;
* when the window closes the request with the highest priority
  (``AttributePriority``, the router's ``agent_reservation``) wins, ties go
  to the earliest arrival; it gets ``EventAgentReserved``, every other one
  ``EventError`` 62 (reservation conflict);
* a request for an agent that is reserved already is refused at once (62);
  one for an agent that is not Ready or is on a call gets 63, one for an
  agent that is not logged in, unknown or on a DN this node does not own the
  agent table's own error;
* a reservation holds until a call reaches the DN (the routed one: the agent
  is then on a call and not available anyway) or ``Timeout`` seconds pass
  with no call (``agent-reservation-timeout``, 6 s by default); a holder
  whose connection is gone (``alive(token)`` false) holds nothing, and its
  gathered requests take no part in the decision.

Availability is checked twice: when a request arrives and again when its
window closes (the agent may have gone Not Ready meanwhile). Time comes in as
``now``; :meth:`ReservationTable.next_timer` says when
:meth:`ReservationTable.handle_timer` must run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from protocols.tlib.errors import ErrorCode

__all__ = [
    "DEFAULT_COLLECTION_TIME",
    "DEFAULT_RESERVATION_TIMEOUT",
    "Refused",
    "Reservation",
    "ReservationGranted",
    "ReservationRequest",
    "ReservationTable",
]

#: ``request-collection-time`` default: 300 ms (guide's sample configuration).
DEFAULT_COLLECTION_TIME = 0.3
#: Seconds a reservation holds when no call follows and the request names no Timeout.
DEFAULT_RESERVATION_TIMEOUT = 6.0

#: ``check(dn, agent_id)``: None when the agent may be reserved, else (code, text).
AvailabilityCheck = Callable[[str, "str | None"], "tuple[ErrorCode, str] | None"]


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """One ``RequestReserveAgent``; ``token`` is the caller's handle for the answer."""

    dn: str
    holder: str  # who asks: the router's client id (mesh: peer/desktop)
    token: Any = None
    agent_id: str | None = None
    conn_id: str | None = None
    priority: int = 0
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A granted reservation: the agent of ``dn`` is kept for ``holder``."""

    dn: str
    agent_id: str | None
    holder: str
    conn_id: str | None
    priority: int
    expires: float
    calls_at_grant: int  # the DN's offered-call count then: one more consumes it
    token: Any = None  # the holder's answer handle (alive(token): still connected)


@dataclass(frozen=True, slots=True)
class ReservationGranted:
    """Answer ``EventAgentReserved`` to ``request``."""

    request: ReservationRequest
    reservation: Reservation


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer ``EventError`` ``code`` / ``text`` to ``request``."""

    request: ReservationRequest
    code: ErrorCode
    text: str


Output = ReservationGranted | Refused


@dataclass(slots=True)
class _Window:
    deadline: float
    requests: list[tuple[int, ReservationRequest]] = field(default_factory=list)


class ReservationTable:
    """Collection windows and granted reservations, by DN.

    ``check`` decides whether the agent of a DN may be reserved now;
    ``offered(dn)`` counts the calls that ever reached the DN (the agent
    table's), so a reservation ends when the next call arrives.
    """

    def __init__(self, check: AvailabilityCheck, offered: Callable[[str], int], *,
                 collection_time: float = DEFAULT_COLLECTION_TIME,
                 default_timeout: float = DEFAULT_RESERVATION_TIMEOUT,
                 alive: Callable[[Any], bool] | None = None) -> None:
        self._check = check
        self._offered = offered
        self._alive = alive
        self.collection_time = collection_time
        self.default_timeout = default_timeout
        self._windows: dict[str, _Window] = {}
        self._held: dict[str, Reservation] = {}
        self._arrival = itertools.count()
        #: decisions so far, by outcome (granted, conflict, not-available, refused)
        self.counts: dict[str, int] = dict.fromkeys(
            ("granted", "conflict", "not-available", "refused", "expired", "consumed",
             "holder-gone"), 0)

    # -- queries -------------------------------------------------------------------
    def reservation(self, dn: str, now: float) -> Reservation | None:
        """The reservation that holds the agent of ``dn`` now, if any."""
        held = self._held.get(dn)
        if held is None:
            return None
        if now >= held.expires:
            del self._held[dn]
            self.counts["expired"] += 1
            return None
        if self._offered(dn) != held.calls_at_grant:
            del self._held[dn]
            self.counts["consumed"] += 1
            return None
        if self._alive is not None and not self._alive(held.token):
            del self._held[dn]
            self.counts["holder-gone"] += 1
            return None
        return held

    def reserved(self, now: float) -> Iterator[Reservation]:
        for dn in list(self._held):
            held = self.reservation(dn, now)
            if held is not None:
                yield held

    def collecting(self) -> int:
        """Requests waiting in open windows."""
        return sum(len(w.requests) for w in self._windows.values())

    # -- input ---------------------------------------------------------------------
    def request(self, request: ReservationRequest, now: float) -> list[Output]:
        """A ``RequestReserveAgent``: refused at once, gathered in the DN's
        window, or (``request-collection-time`` = 0) decided now."""
        dn = request.dn
        held = self.reservation(dn, now)
        if held is not None:
            if held.holder == request.holder and held.conn_id == request.conn_id:
                return [ReservationGranted(request, held)]  # a repeat: still held
            return [self._conflict(request, held.holder)]
        refusal = self._check(dn, request.agent_id)
        if refusal is not None:
            return [self._refuse(request, *refusal)]
        window = self._windows.get(dn)
        if window is None:
            window = self._windows[dn] = _Window(now + self.collection_time)
        window.requests.append((next(self._arrival), request))
        if self.collection_time <= 0:
            return self._close(dn, now)
        return []

    def drop_holder(self, holder: str) -> list[Output]:
        """The holder is gone: its reservations end, its gathered requests
        are withdrawn (nothing to answer: the connection is closed)."""
        for dn in [dn for dn, r in self._held.items() if r.holder == holder]:
            del self._held[dn]
        for window in self._windows.values():
            window.requests = [(n, r) for n, r in window.requests if r.holder != holder]
        return []

    def cancel(self, dn: str) -> None:
        """The DN's agent logged out or went out of service: nothing is held."""
        self._held.pop(dn, None)

    # -- time ----------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When the earliest collection window closes (expiry is read lazily)."""
        if not self._windows:
            return None
        return min(w.deadline for w in self._windows.values())

    def handle_timer(self, now: float) -> list[Output]:
        outputs: list[Output] = []
        for dn in [dn for dn, w in self._windows.items() if w.deadline <= now]:
            outputs += self._close(dn, now)
        return outputs

    # -- internals -----------------------------------------------------------------
    def _close(self, dn: str, now: float) -> list[Output]:
        window = self._windows.pop(dn)
        alive = self._alive
        requests = [(n, r) for n, r in window.requests if alive is None or alive(r.token)]
        if not requests:
            return []
        # highest priority first, then arrival
        ordered = sorted(requests, key=lambda item: (-item[1].priority, item[0]))
        winner = ordered[0][1]
        refusal = self._check(dn, winner.agent_id)
        if refusal is not None:
            return [self._refuse(r, *refusal) for _, r in ordered]
        timeout = winner.timeout if winner.timeout else self.default_timeout
        held = Reservation(dn, winner.agent_id, winner.holder, winner.conn_id,
                           winner.priority, now + timeout, self._offered(dn), winner.token)
        self._held[dn] = held
        self.counts["granted"] += 1
        outputs: list[Output] = [ReservationGranted(winner, held)]
        outputs += [self._conflict(r, winner.holder) for _, r in ordered[1:]]
        return outputs

    def _conflict(self, request: ReservationRequest, holder: str) -> Refused:
        self.counts["conflict"] += 1
        return Refused(request, ErrorCode.AGENT_RESERVATION_CONFLICT,
                       f"Agent reservation conflict: the agent of DN {request.dn} is "
                       f"reserved for {holder}")

    def _refuse(self, request: ReservationRequest, code: ErrorCode, text: str) -> Refused:
        self.counts["not-available" if code is ErrorCode.AGENT_NOT_AVAILABLE
                    else "refused"] += 1
        return Refused(request, code, text)
