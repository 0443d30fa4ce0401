"""What a T-Library session tells its owner (docs/tlib.md, "Session").

:meth:`ServerSession.next_event <protocols.tlib.session.ServerSession.next_event>`
and :meth:`ClientSession.next_event <protocols.tlib.session.ClientSession.next_event>`
return these. Every one is a small frozen dataclass deriving from
:class:`SessionEvent`, so an owner can dispatch on the class.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.tlib.errors import ErrorCode
from protocols.tlib.framing import TMap

__all__ = [
    "ClientRegistered",
    "EventReceived",
    "HandshakeFailed",
    "PeerLost",
    "ProtocolViolation",
    "RequestReceived",
    "RequestRejected",
    "ServerInfoReceived",
    "SessionClosed",
    "SessionEvent",
]


@dataclass(frozen=True)
class SessionEvent:
    """Base of every event a T-Library session reports."""


# -- server side ----------------------------------------------------------------


@dataclass(frozen=True)
class ClientRegistered(SessionEvent):
    """Server side: a valid ``RequestRegisterClient`` was accepted."""

    application_name: str
    client_type: str
    protocol_version: int
    addp_timeout: float | None
    addp_remote_timeout: float | None


@dataclass(frozen=True)
class RequestReceived(SessionEvent):
    """Server side: a valid request for the daemon to answer (``answer``)."""

    name: str
    reference_id: int
    message: TMap


@dataclass(frozen=True)
class RequestRejected(SessionEvent):
    """Server side: the session itself answered ``EventError`` (bad frame or request)."""

    name: str | None
    reference_id: int | None
    code: ErrorCode
    text: str


# -- client side ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfoReceived(SessionEvent):
    """Client side: the handshake is complete."""

    application_name: str
    server_version: str
    protocol_version: int
    message: TMap


@dataclass(frozen=True)
class HandshakeFailed(SessionEvent):
    """Client side: the server refused ``RequestRegisterClient``; the session is closed."""

    code: int
    text: str


@dataclass(frozen=True)
class EventReceived(SessionEvent):
    """Client side: an event from the server (answer or unsolicited)."""

    name: str
    reference_id: int | None
    sequence: int | None
    message: TMap


@dataclass(frozen=True)
class ProtocolViolation(SessionEvent):
    """Client side: a frame from the server that breaks the rules; it was dropped
    unless the violation is only about ordering."""

    code: ErrorCode
    text: str


# -- both sides -----------------------------------------------------------------


@dataclass(frozen=True)
class PeerLost(SessionEvent):
    """The peer is gone: ``addp-timeout``, ``registration-timeout`` or
    ``connection-closed``. The session is closed."""

    reason: str


@dataclass(frozen=True)
class SessionClosed(SessionEvent):
    """This side closed the session after a protocol error (code and text)."""

    code: ErrorCode
    text: str
