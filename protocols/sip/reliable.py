"""Reliable provisional responses (RFC 3262): the ``100rel`` option tag, the
RSeq and RAck headers, the UAS's retransmission of a reliable 1xx until its
PRACK arrives (§3) and the UAC's order check on the RSeq it receives (§4).

Sans-I/O: :class:`ReliableSender` is driven by ``send(response, now)``,
``acknowledge(rack, now)`` and ``handle_timer(now)``; the caller puts what
they return on the wire.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Final

from protocols.sip.errors import ParseError
from protocols.sip.headers import Headers
from protocols.sip.message import Response

__all__ = [
    "MAX_RSEQ",
    "OPTION_TAG",
    "RAck",
    "ReliableReceiver",
    "ReliableSender",
    "is_reliable",
    "option_tags",
    "parse_rack",
    "parse_rseq",
]

#: the option tag of RFC 3262 (§10)
OPTION_TAG: Final = "100rel"
#: RSeq is a 32-bit number; the first one is chosen below 2**31 (§3, §7.1)
MAX_RSEQ: Final = 2**32 - 1
_FIRST_RSEQ_MAX: Final = 2**31 - 1


def option_tags(headers: Headers, name: str) -> frozenset[str]:
    """The option tags of a Supported / Require / Unsupported header (RFC 3261 §20),
    lower-cased (compact forms: ``k`` is Supported)."""
    return frozenset(tag.lower() for tag in headers.get_all(name) if tag)


def parse_rseq(text: str | None) -> int:
    """An RSeq value (§7.1): 1 to 2**32-1; ParseError (400) otherwise."""
    value = (text or "").strip()
    if not value.isdigit() or not 0 < int(value) <= MAX_RSEQ:
        raise ParseError(f"bad RSeq {text!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class RAck:
    """The RAck of a PRACK (§7.2): the RSeq, CSeq number and method it acknowledges."""

    rseq: int
    cseq: int
    method: str

    def __str__(self) -> str:
        return f"{self.rseq} {self.cseq} {self.method}"


def parse_rack(text: str | None) -> RAck:
    """``RSEQ CSEQ METHOD`` (§7.2); ParseError (400) otherwise."""
    parts = (text or "").split()
    if len(parts) != 3 or not parts[1].isdigit() or not 0 <= int(parts[1]) < 2**31:
        raise ParseError(f"bad RAck {text!r}")
    return RAck(parse_rseq(parts[0]), int(parts[1]), parts[2].upper())


def is_reliable(response: Response) -> bool:
    """A 101-199 sent reliably: ``Require: 100rel`` and an RSeq (§4)."""
    return (100 < response.status < 200 and "rseq" in response.headers
            and OPTION_TAG in option_tags(response.headers, "Require"))


@dataclass(slots=True)
class _Outstanding:
    response: Response
    rseq: int
    interval: float
    next_send: float
    deadline: float


class ReliableSender:
    """The UAS side of RFC 3262 §3 for one INVITE server transaction.

    :meth:`send` numbers a 1xx (RSeq, ``Require: 100rel``) and returns it to
    put on the wire, or queues it while an earlier one waits for its PRACK
    (one reliable 1xx at a time). :meth:`handle_timer` gives the outstanding
    response again at T1, 2*T1, 4*T1 ... until 64*T1 has passed; then
    :attr:`expired` is set (the UAS should reject the INVITE with a 5xx).
    """

    def __init__(self, t1: float = 0.5, first_rseq: int | None = None,
                 rng: random.Random | None = None) -> None:
        self.t1 = t1
        self._next = first_rseq if first_rseq is not None else \
            (rng or random.SystemRandom()).randint(1, _FIRST_RSEQ_MAX)
        self.outstanding: _Outstanding | None = None
        self._queue: deque[Response] = deque()
        self.expired = False

    @property
    def pending(self) -> bool:
        """A reliable 1xx is waiting for its PRACK (or queued behind one)."""
        return self.outstanding is not None or bool(self._queue)

    def send(self, response: Response, now: float) -> Response | None:
        """Number ``response`` and return it to send now, or None when it waits its turn."""
        if not 100 < response.status < 200:
            raise ValueError("only a 101-199 response is sent reliably")
        rseq = self._next
        self._next = rseq + 1 if rseq < MAX_RSEQ else 1
        response.headers.set("RSeq", str(rseq))
        if OPTION_TAG not in option_tags(response.headers, "Require"):
            response.headers.add("Require", OPTION_TAG)
        if self.outstanding is not None:
            self._queue.append(response)
            return None
        self._start(response, now)
        return response

    def _start(self, response: Response, now: float) -> None:
        rseq = int(response.headers.get("RSeq") or 0)
        self.outstanding = _Outstanding(response, rseq, self.t1, now + self.t1,
                                        now + 64 * self.t1)

    def acknowledge(self, rack: RAck, cseq: int, now: float) -> tuple[bool, Response | None]:
        """A PRACK's RAck for the INVITE whose CSeq number is ``cseq``: whether it
        acknowledges the outstanding response (else the PRACK gets 481, §3), and
        the next queued response to send now."""
        out = self.outstanding
        if out is None or rack.rseq != out.rseq or rack.cseq != cseq or rack.method != "INVITE":
            return False, None
        self.outstanding = None
        if self._queue:
            nxt = self._queue.popleft()
            self._start(nxt, now)
            return True, nxt
        return True, None

    def next_timer(self) -> float | None:
        out = self.outstanding
        if out is None:
            return None
        return min(out.next_send, out.deadline)

    def handle_timer(self, now: float) -> Response | None:
        """The outstanding response when it is due again; None otherwise. Past 64*T1
        without a PRACK :attr:`expired` is set and nothing more is sent."""
        out = self.outstanding
        if out is None:
            return None
        if now >= out.deadline:
            self.expired = True
            self.close()
            return None
        if now < out.next_send:
            return None
        out.interval *= 2
        out.next_send = now + out.interval
        return out.response

    def close(self) -> None:
        """The INVITE got its final response: nothing more is sent reliably."""
        self.outstanding = None
        self._queue.clear()


class ReliableReceiver:
    """The UAC side of RFC 3262 §4 for one early dialog: which reliable 1xx to take.

    The first takes any RSeq; after it only the next number in order.
    Retransmissions and responses out of order are not passed on (nor PRACKed).
    """

    def __init__(self) -> None:
        self.last: int | None = None

    def accept(self, rseq: int) -> bool:
        if self.last is not None and rseq != (self.last % MAX_RSEQ) + 1:
            return False
        self.last = rseq
        return True
