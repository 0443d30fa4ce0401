"""SIP transaction timer values (RFC 3261 §17, Table 4 in Appendix A; RFC 6026 §8).

Only values and names live here; scheduling is done by the transaction layer,
which receives the current time as ``now`` and reports its next deadline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["RELIABLE_TRANSPORTS", "TimerName", "TimerSettings", "is_reliable"]

#: Transports that deliver reliably, for which RFC 3261 §17 disables request and
#: response retransmission and sets timers D, I, J and K to zero.
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    """True when ``transport`` (a Via transport token such as ``"TCP"``) is reliable."""
    return transport.upper() in RELIABLE_TRANSPORTS


class TimerName(enum.Enum):
    """The transaction timers of RFC 3261 Appendix A (and L, M of RFC 6026 §8)."""

    # Members are singletons: identity hashing is correct and, unlike Enum's
    # name-based __hash__, runs in C (states and timers key hot dictionaries).
    __hash__ = object.__hash__

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
