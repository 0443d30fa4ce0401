"""T-Library error codes and the typed exceptions of the framing, catalogue
and session layers (docs/tlib.md, "Error codes").

Every exception carries the :class:`ErrorCode` a server puts in
``AttributeErrorCode`` of the ``EventError`` it answers with, and a text for
``AttributeErrorMessage``. Codes below 50 are protocol errors raised by
``protocols/tlib`` itself; codes from 50 up are for the daemons' policy
(DN ownership, agent state, calls) and are listed here so that the table in
the documentation has one source.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Values of ``AttributeErrorCode`` (docs/tlib.md, "Error codes")."""

    UNKNOWN_MESSAGE = 40
    INVALID_ATTRIBUTE = 41
    MISSING_ATTRIBUTE = 42
    CLIENT_NOT_REGISTERED = 43
    CLIENT_TYPE_NOT_ACCEPTED = 44
    UNSUPPORTED_PROTOCOL_VERSION = 45
    MALFORMED_FRAME = 46
    FRAME_TOO_LARGE = 47
    ALREADY_REGISTERED = 48
    UNEXPECTED_MESSAGE = 49
    UNKNOWN_DN = 50
    DN_NOT_OWNED = 51
    DN_OUT_OF_SERVICE = 52
    AGENT_ALREADY_LOGGED_IN = 53
    AGENT_NOT_LOGGED_IN = 54
    INVALID_AGENT_STATE = 55
    INVALID_PASSWORD = 56
    UNKNOWN_AGENT = 57
    UNKNOWN_CONNID = 58
    INVALID_CALL_STATE = 59
    REQUEST_NOT_SUPPORTED = 60
    ROUTE_TIMEOUT = 61
    AGENT_RESERVATION_CONFLICT = 62
    AGENT_NOT_AVAILABLE = 63
    TREATMENT_NOT_APPLIED = 64
    INTERNAL_ERROR = 70


#: The default ``AttributeErrorMessage`` text for each code.
ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.UNKNOWN_MESSAGE: "Unknown message",
    ErrorCode.INVALID_ATTRIBUTE: "Invalid attribute",
    ErrorCode.MISSING_ATTRIBUTE: "Missing attribute",
    ErrorCode.CLIENT_NOT_REGISTERED: "Client not registered",
    ErrorCode.CLIENT_TYPE_NOT_ACCEPTED: "Client type not accepted on this port",
    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
    ErrorCode.MALFORMED_FRAME: "Malformed frame",
    ErrorCode.FRAME_TOO_LARGE: "Frame too large",
    ErrorCode.ALREADY_REGISTERED: "Client already registered",
    ErrorCode.UNEXPECTED_MESSAGE: "Unexpected message",
    ErrorCode.UNKNOWN_DN: "Unknown DN",
    ErrorCode.DN_NOT_OWNED: "DN not owned by this node",
    ErrorCode.DN_OUT_OF_SERVICE: "DN out of service",
    ErrorCode.AGENT_ALREADY_LOGGED_IN: "Agent already logged in",
    ErrorCode.AGENT_NOT_LOGGED_IN: "Agent not logged in",
    ErrorCode.INVALID_AGENT_STATE: "Invalid agent state",
    ErrorCode.INVALID_PASSWORD: "Invalid password",
    ErrorCode.UNKNOWN_AGENT: "Unknown agent",
    ErrorCode.UNKNOWN_CONNID: "Unknown ConnID",
    ErrorCode.INVALID_CALL_STATE: "Invalid call state",
    ErrorCode.REQUEST_NOT_SUPPORTED: "Request not supported on this port",
    ErrorCode.ROUTE_TIMEOUT: "Routing timeout",
    ErrorCode.AGENT_RESERVATION_CONFLICT: "Agent reserved for another request",
    ErrorCode.AGENT_NOT_AVAILABLE: "Agent not available for routing",
    ErrorCode.TREATMENT_NOT_APPLIED: "Treatment not applied",
    ErrorCode.INTERNAL_ERROR: "Internal error",
}


class TLibError(Exception):
    """Base of every T-Library error: ``code`` and ``text`` for ``EventError``."""

    default_code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, text: str | None = None, *, code: ErrorCode | None = None) -> None:
        self.code: ErrorCode = code if code is not None else self.default_code
        self.text: str = text if text is not None else ERROR_TEXT[self.code]
        super().__init__(f"{int(self.code)} {self.text}")


class FramingError(TLibError):
    """The byte stream does not hold a valid frame (docs/tlib.md, "Framing")."""

    default_code = ErrorCode.MALFORMED_FRAME


class FrameTooLarge(FramingError):
    """A frame's length prefix (or an encoded map) exceeds the maximum frame size.

    Raised from the 4-byte length prefix alone, before the body is buffered.
    The stream cannot be resynchronised afterwards: the connection must close.
    """

    default_code = ErrorCode.FRAME_TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"Frame too large: {size} bytes, limit {limit}")


class MalformedFrame(FramingError):
    """A frame body that is not one msgpack map with string keys.

    The length prefix was valid, so the stream stays in step and the next
    frame can be decoded.
    """

    default_code = ErrorCode.MALFORMED_FRAME


class ValidationError(TLibError):
    """A message that does not match the catalogue (docs/tlib.md, "Catalogue")."""

    default_code = ErrorCode.INVALID_ATTRIBUTE

    def __init__(
        self,
        text: str | None = None,
        *,
        code: ErrorCode | None = None,
        message: str | None = None,
        attribute: str | None = None,
    ) -> None:
        self.message_name = message
        self.attribute = attribute
        super().__init__(text, code=code)


class UnknownMessage(ValidationError):
    """``message`` is missing, not a string or not in the catalogue."""

    default_code = ErrorCode.UNKNOWN_MESSAGE


class UnexpectedMessage(ValidationError):
    """A known message sent in the wrong direction (an event from a client)."""

    default_code = ErrorCode.UNEXPECTED_MESSAGE


class MissingAttribute(ValidationError):
    """A required attribute is absent."""

    default_code = ErrorCode.MISSING_ATTRIBUTE


class InvalidAttribute(ValidationError):
    """An attribute with the wrong type or value, or not allowed in this message."""

    default_code = ErrorCode.INVALID_ATTRIBUTE


class SessionError(TLibError):
    """A session used against its state (sending on a closed session ...)."""

    default_code = ErrorCode.INTERNAL_ERROR
