"""WAV files of G.711 audio (RIFF WAVE, format tags 6 = A-law and 7 = µ-law,
8 kHz mono, 8 bits, with the ``fact`` chunk non-PCM formats carry) and of
16-bit linear PCM, as bytes: parse and build, no file I/O."""

from __future__ import annotations

import array
import struct
import sys

from protocols.rtp.errors import RtpError
from protocols.rtp.g711 import Codec

__all__ = ["build_pcm16_wav", "build_wav", "parse_pcm16_wav", "parse_wav", "wav_header"]

_TAGS = {Codec.PCMA: 6, Codec.PCMU: 7}
_CODECS = {v: k for k, v in _TAGS.items()}
RATE = 8000


def wav_header(codec: Codec, data_length: int) -> bytes:
    """The header of a G.711 WAV file whose data chunk holds ``data_length`` bytes."""
    fmt = struct.pack("<HHIIHHH", _TAGS[codec], 1, RATE, RATE, 1, 8, 0)
    fact = struct.pack("<I", data_length)
    riff_size = 4 + (8 + len(fmt)) + (8 + len(fact)) + 8 + data_length + (data_length & 1)
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"fact" + struct.pack("<I", len(fact)) + fact
            + b"data" + struct.pack("<I", data_length))


def build_wav(codec: Codec, data: bytes) -> bytes:
    """A complete G.711 WAV file."""
    return wav_header(codec, len(data)) + data + (b"\0" if len(data) & 1 else b"")


def _chunks(data: bytes) -> dict[bytes, bytes]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RtpError("not a RIFF WAVE file")
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset + 8 <= len(data):
        name = data[offset:offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = data[offset + 8:offset + 8 + size]
        if len(body) < size and name != b"data":
            raise RtpError(f"truncated WAV chunk {name!r}")
        chunks.setdefault(name, body)
        offset += 8 + size + (size & 1)
    if b"fmt " not in chunks or b"data" not in chunks:
        raise RtpError("WAV file without fmt or data chunk")
    return chunks


def parse_wav(data: bytes) -> tuple[Codec, bytes]:
    """(codec, G.711 codes) of an 8 kHz mono G.711 WAV file."""
    chunks = _chunks(data)
    fmt = chunks[b"fmt "]
    if len(fmt) < 16:
        raise RtpError("short WAV fmt chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag not in _CODECS or channels != 1 or rate != RATE or bits != 8:
        raise RtpError(f"WAV format {tag}/{channels}ch/{rate}Hz/{bits}bit is not G.711 8 kHz mono")
    return _CODECS[tag], chunks[b"data"]


def build_pcm16_wav(samples: array.array[int], rate: int = RATE) -> bytes:
    """A 16-bit linear PCM mono WAV file (what a softphone plays and records)."""
    pcm = array.array("h", samples)
    if sys.byteorder == "big":
        pcm.byteswap()
    body = pcm.tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(body)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(body)) + body)


def parse_pcm16_wav(data: bytes) -> tuple[int, int, array.array[int]]:
    """(rate, channels, samples interleaved) of a 16-bit linear PCM WAV file."""
    chunks = _chunks(data)
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunks[b"fmt "])
    if tag not in (1, 0xFFFE) or bits != 16:
        raise RtpError(f"WAV format {tag}/{bits}bit is not 16-bit PCM")
    body = chunks[b"data"]
    pcm = array.array("h", body[: len(body) & ~1])
    if sys.byteorder == "big":
        pcm.byteswap()
    return rate, channels, pcm
