"""Framing of the status-aggregator protocol: the T-Library family's 4-byte
big-endian length followed by one msgpack map (docs/status-aggregator.md,
"Framing"; docs/tlib.md, "Framing").

The byte-level decoder is T-Library's (:class:`protocols.tlib.framing.FrameDecoder`):
one implementation of the framing, its limits and its refusal of an
oversized length from the prefix alone. This module sets the status
protocol's own default maximum.
"""

from __future__ import annotations

from typing import Any

from protocols.tlib.errors import FrameTooLarge, MalformedFrame
from protocols.tlib.framing import HEADER_SIZE, FrameDecoder, encode_frame

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_SIZE",
    "FrameDecoder",
    "FrameTooLarge",
    "MalformedFrame",
    "encode",
]

#: Default maximum frame body: 1 MiB. A publisher splits a larger snapshot
#: into parts (``Snapshot{final: false}`` ... ``Snapshot{final: true}``).
MAX_FRAME_SIZE = 1024 * 1024


def encode(message: dict[str, Any], max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """One map as a frame; :class:`FrameTooLarge` over ``max_frame_size``."""
    return encode_frame(message, max_frame_size=max_frame_size)
