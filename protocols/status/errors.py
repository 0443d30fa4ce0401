"""Error codes of the status-aggregator protocol and the typed exceptions that
carry them (docs/status-aggregator.md, "Errors").

A daemon answers each exception with an ``Error`` frame holding the code and
the text, logs it and counts it by code name; only a frame over the maximum
size or a refused hello closes the connection.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Values of ``code`` in an ``Error`` frame."""

    MALFORMED_FRAME = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_MESSAGE = 3
    INVALID_FIELD = 4
    UNEXPECTED_MESSAGE = 5
    UNSUPPORTED_VERSION = 6
    ROLE_NOT_ALLOWED = 7
    NOT_A_PUBLISHER = 8
    UNKNOWN_USER = 9
    NOT_OWNER = 10
    STALE_SEQUENCE = 11


class StatusProtocolError(Exception):
    """Bad input: the peer gets ``Error{code, text}`` (and ``ref`` when known)."""

    def __init__(self, code: ErrorCode, text: str, ref: int | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.ref = ref


class SessionError(Exception):
    """The owner drove a session in a way its transition table does not allow."""
