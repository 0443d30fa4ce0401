"""RTM refusal codes and the typed exceptions of the protocol (docs/rtm.md,
"Errors").

A code is a short string carried in ``Refused`` (the hub closes after it),
``Rejected`` (one ``Send`` refused, acknowledged all the same) and ``Error``
(a frame the hub or the site could not use; the session goes on unless the
stream is out of step).
"""

from __future__ import annotations

from enum import StrEnum


class RtmCode(StrEnum):
    """Every refusal code of the protocol (docs/rtm.md, "Errors")."""

    VERSION_MISMATCH = "version-mismatch"
    AUTH_FAILED = "auth-failed"
    ALREADY_CONNECTED = "already-connected"
    STANDBY = "standby"
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    MALFORMED_FRAME = "malformed-frame"
    FRAME_TOO_LARGE = "frame-too-large"
    UNKNOWN_MESSAGE = "unknown-message"
    UNEXPECTED_MESSAGE = "unexpected-message"
    BAD_FIELD = "bad-field"
    BAD_ELEMENT = "bad-element"
    OUT_OF_ORDER = "out-of-order"
    FLOOD = "flood"
    UNKNOWN_DESTINATION = "unknown-destination"
    SHUTTING_DOWN = "shutting-down"


class RtmError(Exception):
    """Base of the protocol's exceptions: a code and a text for the peer."""

    def __init__(self, code: RtmCode, text: str) -> None:
        super().__init__(f"{code.value}: {text}")
        self.code = code
        self.text = text


class BadMessage(RtmError):
    """A frame that is not a valid RTM message (unknown name, missing or wrong field)."""


class ElementError(RtmError):
    """An element list that does not decode (wire form), code ``bad-element``."""

    def __init__(self, text: str) -> None:
        super().__init__(RtmCode.BAD_ELEMENT, text)


class ElementTypeError(Exception):
    """A reader asked for one element type and the next element is another
    (guide: "Multi-Site Get Integer ... Failure: the element read from the
    message is not the correct type"), or the message has no more elements."""
