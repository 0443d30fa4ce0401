"""Latency polls between T-Controllers (guide: "Troubleshooting T-Controllers
communication issues"; SIP Cluster Node DN option ``tc-latency-poll-interval``).

Every ``tc-latency-poll-interval`` seconds a t-controller sends each peer a
T-Library poll (``RequestQueryServer`` on its link to the peer) and keeps, per
peer:

* ``RTT`` -- round-trip time: poll request sent -> answering event received
  (monotonic clock of the poll initiator);
* ``TXT`` -- request latency: poll sent (initiator's wall clock) -> answer
  stamped by the destination (``AttributeTimeinSecs`` / ``AttributeTimeinuSecs``,
  the destination's wall clock);
* ``RXT`` -- response latency: answer stamped by the destination -> answer
  received (initiator's wall clock);
* ``LAST_TS`` -- Unix time of the most recent answered poll;
* ``TX_QUEUE_LEN`` -- bytes queued for the peer on this t-controller's client
  connection (this TC -> the peer's TCport);
* ``RX_QUEUE_LEN`` -- bytes queued for the peer on the server connection
  (the peer's link to this TC's TCport).

TXT and RXT compare two hosts' clocks, as the guide's do; on one host they
add up to RTT. This module is sans-I/O: times come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LatencyStats", "PendingPoll"]

#: Polls without an answer kept at most (older ones are dropped as lost).
MAX_PENDING_POLLS = 16


@dataclass(frozen=True)
class PendingPoll:
    """A poll sent: wall and monotonic time of the send."""

    reference_id: int
    sent_wall: float
    sent_mono: float


@dataclass
class LatencyStats:
    """The latency statistics of one peer, as the guide names them."""

    peer: str
    rtt: float | None = None
    txt: float | None = None
    rxt: float | None = None
    last_ts: float | None = None
    tx_queue_len: int = 0
    rx_queue_len: int = 0
    polls_sent: int = 0
    polls_answered: int = 0
    polls_lost: int = 0
    _pending: dict[int, PendingPoll] = field(default_factory=dict)

    def poll_sent(self, reference_id: int, wall: float, mono: float) -> None:
        self.polls_sent += 1
        self._pending[reference_id] = PendingPoll(reference_id, wall, mono)
        while len(self._pending) > MAX_PENDING_POLLS:
            oldest = min(self._pending)
            del self._pending[oldest]
            self.polls_lost += 1

    def is_poll(self, reference_id: int | None) -> bool:
        return reference_id is not None and reference_id in self._pending

    def poll_answered(self, reference_id: int, stamped_wall: float | None, wall: float,
                      mono: float) -> bool:
        """The answer to a poll arrived; ``stamped_wall`` is the event's own
        time (None when it carries none). False for an unknown poll."""
        poll = self._pending.pop(reference_id, None)
        if poll is None:
            return False
        self.polls_answered += 1
        self.rtt = max(0.0, mono - poll.sent_mono)
        if stamped_wall is not None:
            self.txt = stamped_wall - poll.sent_wall
            self.rxt = wall - stamped_wall
        self.last_ts = wall
        return True

    def link_lost(self) -> None:
        """Unanswered polls of a closed link will never be answered."""
        self.polls_lost += len(self._pending)
        self._pending.clear()

    def to_dict(self) -> dict[str, Any]:
        """The guide's names, times in milliseconds (LAST_TS in Unix seconds)."""
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {
            "RTT": ms(self.rtt),
            "TXT": ms(self.txt),
            "RXT": ms(self.rxt),
            "LAST_TS": self.last_ts,
            "TX_QUEUE_LEN": self.tx_queue_len,
            "RX_QUEUE_LEN": self.rx_queue_len,
            "polls_sent": self.polls_sent,
            "polls_answered": self.polls_answered,
            "polls_lost": self.polls_lost,
        }


def event_wall_time(event: dict[str, Any]) -> float | None:
    """The time a T-Library event was stamped by its sender (docs/tlib.md)."""
    secs = event.get("AttributeTimeinSecs")
    usecs = event.get("AttributeTimeinuSecs")
    if not isinstance(secs, int):
        return None
    return secs + (usecs / 1e6 if isinstance(usecs, int) else 0.0)
