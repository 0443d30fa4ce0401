"""SIP transaction timers (RFC 3261 §17, Table 4 in Appendix A; RFC 6026 §8).

The values and names, and :class:`TimerQueue`, the ordered set of deadlines
the transaction layer keeps; the layer receives the current time as ``now``
and reports its next deadline.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Container
from dataclasses import dataclass

__all__ = ["RELIABLE_TRANSPORTS", "TimerName", "TimerQueue", "TimerSettings", "is_reliable"]

#: Transports that deliver reliably, for which RFC 3261 §17 disables request and
#: response retransmission and sets timers D, I, J and K to zero.
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    """True when ``transport`` (a Via transport token such as ``"TCP"``) is reliable."""
    return transport.upper() in RELIABLE_TRANSPORTS


class IdentityEnum(enum.Enum):
    """An enum hashed by identity: members are singletons, so this is correct
    and, unlike Enum's name-based ``__hash__``, runs in C (states and timers
    key the transaction layer's hot dictionaries)."""

    __hash__ = object.__hash__


class TimerName(IdentityEnum):
    """The transaction timers of RFC 3261 Appendix A (and L, M of RFC 6026 §8)."""

    A = "A"  # INVITE request retransmit interval, unreliable transports only
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait time for response retransmits (INVITE client, Completed)
    E = "E"  # non-INVITE request retransmit interval, unreliable only
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE response retransmit interval
    H = "H"  # wait time for ACK receipt
    I = "I"  # wait time for ACK retransmits  # noqa: E741
    J = "J"  # wait time for non-INVITE request retransmits
    K = "K"  # wait time for response retransmits (non-INVITE client)
    L = "L"  # wait time for accepted INVITE request retransmits (RFC 6026)
    M = "M"  # wait time for retransmission of 2xx to INVITE (RFC 6026)
    TRYING = "100"  # INVITE server: send 100 Trying if the TU is silent (§17.2.1)


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """T1, T2, T4 and the timers derived from them (RFC 3261 Appendix A).

    ``t1`` is the RTT estimate (default 500 ms), ``t2`` the maximum retransmit
    interval for non-INVITE requests and INVITE responses (4 s), ``t4`` the
    maximum duration a message remains in the network (5 s). ``trying_delay``
    is how long an INVITE server transaction waits for the TU before it sends
    100 Trying itself (§17.2.1 says 200 ms); ``None`` disables it.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    trying_delay: float | None = 0.2

    def __post_init__(self) -> None:
        if self.t1 <= 0 or self.t2 < self.t1 or self.t4 < 0:
            raise ValueError(f"invalid SIP timers T1={self.t1} T2={self.t2} T4={self.t4}")
        if self.trying_delay is not None and self.trying_delay < 0:
            raise ValueError(f"invalid 100 Trying delay {self.trying_delay}")

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, J (unreliable), L and M."""
        return 64.0 * self.t1

    def timer_d(self, reliable: bool) -> float:
        """Timer D: > 32 s for unreliable transports, 0 for reliable (§17.1.1.2)."""
        return 0.0 if reliable else max(32.0, self.timeout)

    def timer_i(self, reliable: bool) -> float:
        """Timer I: T4 for unreliable transports, 0 for reliable (§17.2.1)."""
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        """Timer J: 64*T1 for unreliable transports, 0 for reliable (§17.2.2)."""
        return 0.0 if reliable else self.timeout

    def timer_k(self, reliable: bool) -> float:
        """Timer K: T4 for unreliable transports, 0 for reliable (§17.1.2.2)."""
        return 0.0 if reliable else self.t4


class _Fifo:
    """Entries of one duration in deadline order: a list and the index of its head.

    Taking the head moves the index; the taken part is cut off once it is both
    long and most of the list, so each entry is copied at most once more.
    """

    __slots__ = ("entries", "head")

    def __init__(self) -> None:
        self.entries: list[tuple[float, int]] = []
        self.head = 0

    def popleft(self) -> None:
        head = self.head + 1
        entries = self.entries
        if head >= len(entries):
            entries.clear()
            head = 0
        elif head >= 1024 and 2 * head >= len(entries):
            del entries[:head]
            head = 0
        self.head = head


class TimerQueue:
    """Deadlines of running timers, earliest first; ties in the order they were set.

    Entries are ``(deadline, seq)`` with ``seq`` increasing from 1. Almost every timer
    runs for one of a few durations (T1 and its doublings up to T2, T4,
    64*T1), and ``now`` does not go back, so the entries of one duration are
    set in deadline order: each duration gets a FIFO, and setting or taking a
    timer costs O(1) instead of O(log n) in one heap of every transaction's
    timers. A deadline that would break a FIFO's order (``now`` went back)
    goes to a small heap instead.

    Stopping a timer is lazy: the caller passes ``live``, the sequence numbers
    still running, and entries not in it are dropped when they come up.
    """

    __slots__ = ("_best_deadline", "_best_seq", "_by_delay", "_fifos", "_heap")

    #: Beyond this many distinct durations, entries go to the heap.
    MAX_FIFOS = 64

    def __init__(self) -> None:
        self._by_delay: dict[float, _Fifo] = {}
        self._fifos: list[_Fifo] = []
        self._heap: list[tuple[float, int]] = []
        self._best_deadline = 0.0
        self._best_seq = 0

    def push(self, delay: float, deadline: float, seq: int) -> None:
        """Add the timer ``seq`` of duration ``delay`` due at ``deadline``."""
        fifo = self._by_delay.get(delay)
        if fifo is None:
            if len(self._fifos) >= self.MAX_FIFOS:
                heapq.heappush(self._heap, (deadline, seq))
                return
            fifo = self._by_delay[delay] = _Fifo()
            self._fifos.append(fifo)
        else:
            entries = fifo.entries
            if len(entries) > fifo.head and entries[-1][0] > deadline:
                heapq.heappush(self._heap, (deadline, seq))
                return
        fifo.entries.append((deadline, seq))

    def _first(self, live: Container[int]) -> _Fifo | None:
        """Find the earliest live entry: its deadline and number go to
        ``_best_deadline`` and ``_best_seq`` (0: none), its FIFO is returned
        (``None``: the heap). Plain fields rather than a returned tuple: this
        runs after every message, and compiled code keeps them unboxed."""
        best_deadline = 0.0
        best_seq = 0
        source: _Fifo | None = None
        for fifo in self._fifos:
            entries = fifo.entries
            while fifo.head < len(entries):
                deadline, seq = entries[fifo.head]
                if seq in live:
                    if best_seq == 0 or deadline < best_deadline or (
                            deadline == best_deadline and seq < best_seq):
                        best_deadline = deadline
                        best_seq = seq
                        source = fifo
                    break
                fifo.popleft()
        heap = self._heap
        while heap:
            deadline, seq = heap[0]
            if seq in live:
                if best_seq == 0 or deadline < best_deadline or (
                        deadline == best_deadline and seq < best_seq):
                    best_deadline = deadline
                    best_seq = seq
                    source = None
                break
            heapq.heappop(heap)
        self._best_deadline = best_deadline
        self._best_seq = best_seq
        return source

    def first(self, live: Container[int]) -> tuple[float, int] | None:
        """The earliest live entry (deadline, sequence number), or ``None``."""
        self._first(live)
        return None if self._best_seq == 0 else (self._best_deadline, self._best_seq)

    def next_deadline(self, live: Container[int]) -> float | None:
        """The earliest deadline of a live timer, or ``None``."""
        self._first(live)
        return None if self._best_seq == 0 else self._best_deadline

    def pop_due(self, now: float, live: Container[int]) -> int | None:
        """Remove and return the earliest live timer due at ``now``, or ``None``."""
        source = self._first(live)
        seq = self._best_seq
        if seq == 0 or self._best_deadline > now:
            return None
        if source is None:
            heapq.heappop(self._heap)
        else:
            source.popleft()
        return seq

    def __len__(self) -> int:
        """Entries held, stopped ones included until they come up."""
        return sum(len(fifo.entries) - fifo.head for fifo in self._fifos) + len(self._heap)
