"""What an RTM session tells its owner (docs/rtm.md, "Session").

Small frozen dataclasses deriving from :class:`SessionEvent`; the owner
dispatches on the class (one table per role).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.rtm.messages import Deliver, Send, Welcome

__all__ = [
    "AcceptedReceived",
    "AckReceived",
    "BusyReceived",
    "DeliveryReceived",
    "HandshakeRefused",
    "PeerLost",
    "PongReceived",
    "ProtocolViolation",
    "RejectedReceived",
    "SendInvalid",
    "SendReceived",
    "SessionClosed",
    "SessionEvent",
    "SiteAuthenticated",
    "Welcomed",
]


@dataclass(frozen=True)
class SessionEvent:
    """Base of every event an RTM session reports."""


# -- hub side ---------------------------------------------------------------------


@dataclass(frozen=True)
class SiteAuthenticated(SessionEvent):
    """The site proved its password; the owner answers with ``welcome()`` or
    ``refuse()`` (one live session per site is the owner's rule)."""

    site: int
    mode: str


@dataclass(frozen=True)
class SendReceived(SessionEvent):
    """A valid ``Send``; ``elements`` is its element list packed (msgpack) as
    the hub stores and forwards it."""

    send: Send
    elements: bytes


@dataclass(frozen=True)
class SendInvalid(SessionEvent):
    """A ``Send`` whose seq is readable but whose content is not valid."""

    seq: int
    code: str
    reason: str


@dataclass(frozen=True)
class AckReceived(SessionEvent):
    id: int


# -- site side --------------------------------------------------------------------


@dataclass(frozen=True)
class Welcomed(SessionEvent):
    welcome: Welcome


@dataclass(frozen=True)
class AcceptedReceived(SessionEvent):
    seq: int


@dataclass(frozen=True)
class RejectedReceived(SessionEvent):
    seq: int
    code: str
    reason: str


@dataclass(frozen=True)
class BusyReceived(SessionEvent):
    seq: int
    retry_ms: int


@dataclass(frozen=True)
class DeliveryReceived(SessionEvent):
    deliver: Deliver


# -- both -------------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeRefused(SessionEvent):
    """The handshake failed: refused by the hub (site side) or by the session
    itself (hub side: version, unknown site, bad proof). ``site`` is None when
    the peer never named one."""

    site: int | None
    code: str
    reason: str


@dataclass(frozen=True)
class ProtocolViolation(SessionEvent):
    """A frame the session could not use (answered with ``Error``)."""

    code: str
    reason: str


@dataclass(frozen=True)
class PongReceived(SessionEvent):
    rtt: float


@dataclass(frozen=True)
class PeerLost(SessionEvent):
    """Nothing arrived for three keep-alive intervals."""


@dataclass(frozen=True)
class SessionClosed(SessionEvent):
    reason: str
