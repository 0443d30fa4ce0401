"""A jitter buffer (RFC 3550 §A.8 sense): reorders RTP packets by sequence
number and releases one frame per sequence number, in order, after a delay.

Driven by ``push(packet, now)`` and ``pop(now)``; a frame is released when it
has waited ``delay`` seconds or when more than ``depth`` frames are held. A
missing frame is released as ``None`` (the caller fills silence). Duplicates
and packets older than what was released are dropped and counted.
"""

from __future__ import annotations

from protocols.rtp.packet import RtpPacket, seq_delta

__all__ = ["JitterBuffer"]

#: a gap this long is a new stream (sender restarted), not lost packets
_RESYNC_GAP = 500


class JitterBuffer:
    """Reordering playout buffer (see module doc)."""

    def __init__(self, *, delay: float = 0.06, depth: int = 10) -> None:
        self.delay = delay
        self.depth = depth
        self._held: dict[int, tuple[bytes, float]] = {}
        self._next: int | None = None
        self.late = 0
        self.duplicates = 0
        self.lost = 0

    def __len__(self) -> int:
        return len(self._held)

    def push(self, packet: RtpPacket, now: float) -> bool:
        """Hold ``packet``; False when it is dropped (late or duplicate)."""
        seq = packet.sequence
        if self._next is None:
            self._next = seq
        delta = seq_delta(seq, self._next)
        if delta < 0:
            if -delta > _RESYNC_GAP:
                self._resync(seq)
            else:
                self.late += 1
                return False
        elif delta > _RESYNC_GAP:
            self._resync(seq)
        if seq in self._held:
            self.duplicates += 1
            return False
        self._held[seq] = (packet.payload, now)
        return True

    def _resync(self, seq: int) -> None:
        self._held.clear()
        self._next = seq

    def pop(self, now: float) -> list[bytes | None]:
        """Frames due at ``now``, in sequence order (``None``: lost)."""
        out: list[bytes | None] = []
        held = self._held
        while held and self._next is not None:
            item = held.get(self._next)
            if item is None:
                oldest = min(t for _, t in held.values())
                if len(held) <= self.depth and oldest + self.delay > now:
                    break
                self.lost += 1
                out.append(None)
            else:
                if len(held) <= self.depth and item[1] + self.delay > now:
                    break
                del held[self._next]
                out.append(item[0])
            self._next = (self._next + 1) & 0xFFFF
        return out

    def flush(self) -> list[bytes | None]:
        """Everything held, gaps included (the stream ended)."""
        return self.pop(float("inf"))

    def next_timer(self) -> float | None:
        """When the oldest held frame becomes due."""
        if not self._held:
            return None
        return min(t for _, t in self._held.values()) + self.delay
