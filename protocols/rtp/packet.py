"""RTP data packets (RFC 3550 §5.1): parse and build, sequence arithmetic.

The fixed header is 12 bytes; CSRCs (§5.1), a header extension (§5.3.1) and
padding (§5.1, P bit) are parsed and skipped so the payload is exact.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocols.rtp.errors import RtpError

__all__ = ["RtpPacket", "build_rtp", "parse_rtp", "seq_delta", "seq_newer"]

_HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet as the receiver needs it (RFC 3550 §5.1)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet; :class:`RtpError` when it is not a valid RTP v2 packet."""
    if len(data) < 12:
        raise RtpError(f"RTP packet of {len(data)} bytes is shorter than its header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words (§5.3.1)
        if len(data) < offset + 4:
            raise RtpError("truncated RTP header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if b0 & 0x20:  # padding: the last octet counts the padding octets
        if end <= offset:
            raise RtpError("padding bit set on a packet without payload")
        pad = data[-1]
        if pad == 0 or pad > end - offset:
            raise RtpError(f"bad RTP padding count {pad}")
        end -= pad
    if offset > end:
        raise RtpError("RTP header longer than the packet")
    pt = b1 & 0x7F
    if 72 <= pt <= 76:  # RTCP packet types 200-204 land here (RFC 5761 §4)
        raise RtpError(f"payload type {pt} is reserved (RTCP)")
    return RtpPacket(pt, seq, ts, ssrc, bytes(data[offset:end]), bool(b1 & 0x80))


def build_rtp(payload_type: int, sequence: int, timestamp: int, ssrc: int,
              payload: bytes, *, marker: bool = False) -> bytes:
    """An RTP v2 packet without CSRCs, extension or padding."""
    return _HEADER.pack(0x80, (0x80 if marker else 0) | (payload_type & 0x7F),
                        sequence & 0xFFFF, timestamp & 0xFFFFFFFF,
                        ssrc & 0xFFFFFFFF) + payload


def seq_delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in -32768..32767 (RFC 3550 App. A.1)."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_newer(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes after ``b`` (modulo 2**16)."""
    return seq_delta(a, b) > 0
