"""G.711 µ-law (PCMU) and A-law (PCMA) by table (ITU-T G.711; the segment
search of the classic Sun reference implementation).

``audioop`` is gone from Python 3.13: encoding is one 65,536-entry table per
law indexed by the 16-bit sample, decoding a 256-entry table of samples.
"""

from __future__ import annotations

import array
from collections.abc import Iterable
from enum import Enum

__all__ = [
    "Codec",
    "alaw_to_linear",
    "decode",
    "encode",
    "linear_to_alaw",
    "linear_to_ulaw",
    "transcode",
    "ulaw_to_linear",
]

_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for i, end in enumerate(ends):
        if value <= end:
            return i
    return len(ends)


def linear_to_ulaw(sample: int) -> int:
    """One 16-bit linear sample to a µ-law code (G.711 Table 2a)."""
    pcm = sample >> 2
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (0x84 >> 2)
    seg = _segment(pcm, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask


def ulaw_to_linear(code: int) -> int:
    """One µ-law code to a 16-bit linear sample."""
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - t if code & 0x80 else t - 0x84


def linear_to_alaw(sample: int) -> int:
    """One 16-bit linear sample to an A-law code (G.711 Table 1a)."""
    pcm = sample >> 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = _segment(pcm, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
    return aval ^ mask


def alaw_to_linear(code: int) -> int:
    """One A-law code to a 16-bit linear sample."""
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


class Codec(Enum):
    """The two G.711 laws with their static RTP payload types (RFC 3551 §6)."""

    PCMU = 0
    PCMA = 8

    @property
    def payload_type(self) -> int:
        return self.value

    @property
    def silence(self) -> int:
        """The code of a zero sample (what fills a lost packet)."""
        return _ENC[self][0]


def _build_encoder(fn: object) -> bytes:
    assert callable(fn)
    return bytes(fn(s - 65536 if s >= 32768 else s) for s in range(65536))


_ENC: dict[Codec, bytes] = {
    Codec.PCMU: _build_encoder(linear_to_ulaw),
    Codec.PCMA: _build_encoder(linear_to_alaw),
}
_DEC: dict[Codec, array.array[int]] = {
    Codec.PCMU: array.array("h", (ulaw_to_linear(c) for c in range(256))),
    Codec.PCMA: array.array("h", (alaw_to_linear(c) for c in range(256))),
}


def encode(samples: Iterable[int], codec: Codec) -> bytes:
    """16-bit linear samples to G.711 codes, one byte per sample."""
    table = _ENC[codec]
    return bytes([table[s & 0xFFFF] for s in samples])


def decode(data: bytes, codec: Codec) -> array.array[int]:
    """G.711 codes to 16-bit linear samples."""
    table = _DEC[codec]
    return array.array("h", [table[b] for b in data])


_TRANSCODE: dict[tuple[Codec, Codec], bytes] = {
    (Codec.PCMU, Codec.PCMA): bytes(linear_to_alaw(ulaw_to_linear(c)) for c in range(256)),
    (Codec.PCMA, Codec.PCMU): bytes(linear_to_ulaw(alaw_to_linear(c)) for c in range(256)),
}


def transcode(data: bytes, source: Codec, target: Codec) -> bytes:
    """G.711 codes of one law to the other (G.711 Tables 3 and 4 by way of linear)."""
    if source is target:
        return data
    return data.translate(_TRANSCODE[source, target])
