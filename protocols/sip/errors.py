"""Typed errors of the SIP stack (RFC 3261 §7, §21).

Every malformed input raises a :class:`ParseError` (or a subclass) carrying
``reason``, a human-readable explanation, and ``status``, the SIP response
code a server should answer with (RFC 3261 §21: 400, 505, 513 ...).
"""

from __future__ import annotations


class SipError(Exception):
    """Base class of all errors raised by ``protocols.sip``."""


class ParseError(SipError):
    """A message (or a part of it) does not follow the RFC 3261 §25 grammar.

    ``status`` is the answer a UAS or proxy should send (RFC 3261 §21.4);
    ``reason`` says what is wrong and is suitable for a reason phrase or a log line.
    """

    default_status = 400

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = self.default_status if status is None else status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, status={self.status})"


class MessageTooLarge(ParseError):
    """The message exceeds the configured size limit (RFC 3261 §21.5.14, 513)."""

    default_status = 513


class TooManyHeaders(ParseError):
    """The message has more header fields than the configured limit (400)."""


class LineTooLong(ParseError):
    """A start line or header line exceeds the configured length limit (400)."""


class VersionNotSupported(ParseError):
    """The SIP-Version is not ``SIP/2.0`` (RFC 3261 §21.5.7, 505)."""

    default_status = 505
