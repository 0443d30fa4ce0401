"""T-Library framing: a 4-byte big-endian length, then one msgpack map
(docs/tlib.md, "Framing").

Sans-I/O: :class:`FrameDecoder` is fed whatever bytes the transport delivers
and hands back complete maps; :func:`encode_frame` turns a map into bytes.
The length counts the msgpack body only. A length above the maximum frame
size (1 MiB unless configured) is refused from the prefix alone, before any
of the body is buffered.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgpack

from protocols.tlib.errors import FrameTooLarge, MalformedFrame

#: Default maximum size of one frame body, in bytes (docs/tlib.md).
MAX_FRAME_SIZE = 1024 * 1024

#: Size of the big-endian length prefix.
HEADER_SIZE = 4

#: The wire form of one T-Library message: ``{"message": ..., "Attribute...": ...}``.
TMap = dict[str, Any]

_HEADER = struct.Struct(">I")


def _ext_hook(code: int, data: bytes) -> Any:
    # msgpack extension types have no meaning in T-Library. The timestamp
    # extension (-1) is decoded by msgpack itself into a Timestamp; the
    # catalogue refuses it as a value of the wrong type.
    raise MalformedFrame(f"Malformed frame: msgpack extension type {code}")


def encode_frame(message: TMap, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Serialise one map into a frame (length prefix + msgpack body).

    Raises :class:`FrameTooLarge` when the body exceeds ``max_frame_size`` and
    :class:`MalformedFrame` when the map holds a value msgpack cannot encode.
    """
    if not isinstance(message, dict):
        raise MalformedFrame("Malformed frame: a frame holds one map")
    try:
        body: bytes = msgpack.packb(message, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedFrame(f"Malformed frame: cannot encode: {exc}") from exc
    if len(body) > max_frame_size:
        raise FrameTooLarge(len(body), max_frame_size)
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes | memoryview) -> TMap:
    """Decode one frame body into a map; :class:`MalformedFrame` if it is not one."""
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_ext_hook,
            timestamp=0,
        )
    except MalformedFrame:
        raise
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        # ValueError covers ExtraData, FormatError, StackError, bad UTF-8 and
        # non-string map keys (strict_map_key)
        raise MalformedFrame(f"Malformed frame: {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise MalformedFrame(f"Malformed frame: body is {type(value).__name__}, not a map")
    return value


class FrameDecoder:
    """Incremental decoder for a T-Library byte stream (docs/tlib.md, "Framing").

    ``feed(data)`` buffers bytes; iterating (or :meth:`next_frame`) yields each
    complete map in order. Errors, raised when the frame concerned is reached
    (frames before it are still delivered):

    * :class:`FrameTooLarge` for a length prefix above ``max_frame_size``. It
      is spotted by ``feed`` from the 4 prefix bytes alone: the body is never
      buffered, later bytes are discarded, and every later call raises the
      same error (the stream is out of step; the connection must close).
    * :class:`MalformedFrame` for a body that is not a msgpack map with string
      keys; that frame is consumed and decoding can go on with the next one.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._offset = 0  # start of the next frame to return
        self._scan = 0  # start of the first frame whose prefix is not checked yet
        self._failed: FrameTooLarge | None = None

    @property
    def failed(self) -> bool:
        """True once an oversized length prefix has been seen."""
        return self._failed is not None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the transport (never raises)."""
        if self._failed is not None:
            return
        if self._offset and self._offset >= len(self._buffer) // 2:
            del self._buffer[: self._offset]
            self._scan -= self._offset
            self._offset = 0
        self._buffer += data
        self._check_prefixes()

    def _check_prefixes(self) -> None:
        buffer = self._buffer
        size = len(buffer)
        scan = self._scan
        while size - scan >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(buffer, scan)
            if length > self.max_frame_size:
                self._failed = FrameTooLarge(length, self.max_frame_size)
                # keep the good frames before it, nothing of the oversized one
                del buffer[scan:]
                break
            scan += HEADER_SIZE + length
        self._scan = scan

    def next_frame(self) -> TMap | None:
        """The next complete map, or ``None`` when more bytes are needed."""
        if self.buffered < HEADER_SIZE:
            if self._failed is not None:
                raise self._failed
            return None
        (length,) = _HEADER.unpack_from(self._buffer, self._offset)
        start = self._offset + HEADER_SIZE
        end = start + length
        if end > len(self._buffer):
            return None
        body = bytes(self._buffer[start:end])
        self._offset = end  # consumed even when the body turns out malformed
        if self._offset == len(self._buffer):
            self._buffer.clear()
            self._scan -= self._offset
            self._offset = 0
        return decode_body(body)

    def __iter__(self) -> Iterator[TMap]:
        """Yield every complete frame buffered so far."""
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame
