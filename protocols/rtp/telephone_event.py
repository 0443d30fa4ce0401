"""DTMF as RTP telephone-events (RFC 4733 §2.3): payload encode/decode and the
receiver that reports each key press exactly once.

An event keeps one RTP timestamp from its first packet to its last; the
sender repeats the packets while the key is held and sends the end packet
(E bit) three times (§2.5.1.4). The receiver reports a digit on the first
packet of an event (§2.5.2.1), ignores the repetitions and retransmitted end
packets, and drops digits above a rate (a flood) with a count.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from protocols.rtp.errors import RtpError
from protocols.rtp.packet import RtpPacket, seq_newer

__all__ = [
    "DIGITS",
    "DigitReceived",
    "DtmfReceiver",
    "TelephoneEvent",
    "digit_payloads",
    "encode_event",
    "parse_event",
]

#: Event codes 0-15 (§3.2): 0-9, *, #, A-D.
DIGITS = "0123456789*#ABCD"
_EVENT = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event block."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def parse_event(payload: bytes) -> TelephoneEvent:
    """The (last, current) event block of a telephone-event payload (§2.3)."""
    if not payload or len(payload) % 4:
        raise RtpError(f"telephone-event payload of {len(payload)} bytes")
    event, flags, duration = _EVENT.unpack_from(payload, len(payload) - 4)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)


def encode_event(event: int, *, end: bool, volume: int = 10, duration: int) -> bytes:
    """One event block (§2.3); ``duration`` in timestamp units."""
    if not 0 <= event <= 255 or not 0 <= volume <= 63:
        raise RtpError(f"event {event} volume {volume} out of range")
    return _EVENT.pack(event, (0x80 if end else 0) | volume, min(duration, 0xFFFF))


def digit_payloads(digit: str, *, packets: int = 5, step: int = 160) -> list[bytes]:
    """The payloads a sender puts on the wire for one key press: ``packets``
    updates then the end packet three times (§2.5.1.4)."""
    event = DIGITS.index(digit.upper())
    out = [encode_event(event, end=False, duration=step * (i + 1)) for i in range(packets)]
    out += [encode_event(event, end=True, duration=step * (packets + 1))] * 3
    return out


@dataclass(frozen=True, slots=True)
class DigitReceived:
    """A key press, reported once."""

    digit: str
    timestamp: int


class DtmfReceiver:
    """Turns telephone-event packets into key presses, each reported once.

    A packet starts a new event when its RTP timestamp differs from the
    current event's, or, with the same timestamp, when the current event has
    ended and this packet is a newer, non-end packet (a sender that reuses
    timestamps). At most ``max_digits`` digits per ``window`` seconds are
    reported; the rest are counted in ``flood_dropped``.
    """

    def __init__(self, *, max_digits: int = 10, window: float = 1.0) -> None:
        self.max_digits = max_digits
        self.window = window
        self._timestamp: int | None = None
        self._ended = False
        self._last_seq = 0
        self._recent: deque[float] = deque()
        self.flood_dropped = 0
        self.duplicates = 0

    def receive(self, packet: RtpPacket, now: float) -> DigitReceived | None:
        """Feed one telephone-event packet; the digit when it starts a key press."""
        event = parse_event(packet.payload)
        digit = event.digit
        if digit is None:
            raise RtpError(f"telephone-event {event.event} is not a DTMF key")
        same = packet.timestamp == self._timestamp
        new = not same or (self._ended and not event.end
                           and seq_newer(packet.sequence, self._last_seq))
        if not new:
            self.duplicates += 1
            if event.end:
                self._ended = True
            if seq_newer(packet.sequence, self._last_seq):
                self._last_seq = packet.sequence
            return None
        self._timestamp = packet.timestamp
        self._ended = event.end
        self._last_seq = packet.sequence
        recent = self._recent
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if len(recent) >= self.max_digits:
            self.flood_dropped += 1
            return None
        recent.append(now)
        return DigitReceived(digit, packet.timestamp)
