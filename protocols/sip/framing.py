"""Message framing on stream transports (TCP, TLS, WebSocket-less streams).

RFC 3261 §18.3: on a stream, Content-Length is mandatory and delimits the
body; the header section ends at the first empty line. RFC 3261 §7.5: CRLFs
before a start line are ignored. RFC 5626 §3.5.1: a double CRLF is a
keep-alive "ping" that the receiver answers with a single CRLF "pong".

:class:`StreamFramer` is sans-I/O: feed it the bytes read from the
connection, then call :meth:`StreamFramer.next_message` until it returns
``None``. A :class:`ParseError` from it is a framing error the stream cannot
recover from: answer it if possible, then close the connection.
"""

from __future__ import annotations

from typing import Final

from protocols.sip.errors import LineTooLong, MessageTooLarge, ParseError
from protocols.sip.message import Request, Response, _parse_head

__all__ = ["KEEPALIVE_PING", "PONG", "KeepAlivePing", "StreamFramer"]

#: What a transport sends back for a :data:`KEEPALIVE_PING` (RFC 5626 §3.5.1).
PONG: Final = b"\r\n"


class KeepAlivePing:
    """The CRLFCRLF keep-alive ping of RFC 5626 §3.5.1; answer it with :data:`PONG`."""

    _instance: KeepAlivePing | None = None

    def __new__(cls) -> KeepAlivePing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEPALIVE_PING"


KEEPALIVE_PING: Final = KeepAlivePing()


class StreamFramer:
    """Cut a byte stream into SIP messages and keep-alive pings (RFC 3261 §18.3)."""

    def __init__(
        self, *, max_size: int = 65536, max_headers: int = 256, max_line: int = 8192
    ) -> None:
        self.max_size = max_size
        self.max_headers = max_headers
        self.max_line = max_line
        self._buf = bytearray()
        self._pending: tuple[Request | Response, int, int] | None = None
        self._failed: ParseError | None = None

    @property
    def buffered(self) -> int:
        """Octets received and not yet returned as a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Add bytes read from the connection."""
        self._buf += data

    def next_message(self) -> Request | Response | KeepAlivePing | None:
        """The next complete message or ping, or ``None`` until more data is fed.

        Raises :class:`ParseError` (or :class:`MessageTooLarge`, :class:`LineTooLong`)
        on a framing error; the framer then stays failed and raises it again.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._next()
        except ParseError as exc:
            self._failed = exc
            raise

    def _next(self) -> Request | Response | KeepAlivePing | None:
        buf = self._buf
        if self._pending is None:
            # Leading CRLFs: a CRLFCRLF is a ping; a lone CRLF (a pong, or the
            # §7.5 padding) is skipped.
            while buf[:1] == b"\r" or buf[:1] == b"\n":
                if buf[:4] == b"\r\n\r\n":
                    del buf[:4]
                    return KEEPALIVE_PING
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    return None
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    continue
                raise ParseError("bare CR or LF between messages")
            end = buf.find(b"\r\n\r\n")
            if end == -1:
                if len(buf) > self.max_size:
                    raise MessageTooLarge(f"header section exceeds {self.max_size} octets")
                last_nl = buf.rfind(b"\r\n")
                if len(buf) - (last_nl + 2 if last_nl != -1 else 0) > self.max_line:
                    raise LineTooLong(f"line longer than {self.max_line} octets")
                return None
            if end + 4 > self.max_size:
                raise MessageTooLarge(f"header section exceeds {self.max_size} octets")
            msg, content_length = _parse_head(bytes(buf[:end]), self.max_headers, self.max_line)
            if content_length is None:
                raise ParseError("missing Content-Length on a stream transport (§18.3)")
            if end + 4 + content_length > self.max_size:
                raise MessageTooLarge(
                    f"message of {end + 4 + content_length} octets exceeds {self.max_size}"
                )
            self._pending = (msg, end + 4, content_length)
        msg, body_start, content_length = self._pending
        total = body_start + content_length
        if len(buf) < total:
            return None
        msg._raw = bytes(buf[:body_start])
        msg._body = bytes(buf[body_start:total])
        del buf[:total]
        self._pending = None
        return msg
