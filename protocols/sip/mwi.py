"""Message Waiting Indication: the ``message-summary`` event package (RFC 3842)
and the notifier side of a subscription (RFC 6665).

:class:`MessageSummary` is the body of a NOTIFY (RFC 3842 §5.2), parsed and
written. :class:`Subscription` is one subscription's state (RFC 6665 §4.2):
its expiry, the ``Subscription-State`` header every NOTIFY carries, refresh
and unsubscribe (Expires: 0), with its transitions in one table.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from protocols.sip.errors import SipError

__all__ = [
    "CONTENT_TYPE",
    "EVENT_PACKAGE",
    "MessageSummary",
    "MwiError",
    "Subscription",
    "SubscriptionInput",
    "SubscriptionStatus",
    "parse_message_summary",
]

EVENT_PACKAGE = "message-summary"
CONTENT_TYPE = "application/simple-message-summary"


class MwiError(SipError):
    """A malformed message-summary body or a refused subscription (``status``)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """A mailbox's counts for the ``voice-message`` class (RFC 3842 §5.2)."""

    new: int
    old: int
    urgent_new: int = 0
    urgent_old: int = 0
    account: str | None = None

    @property
    def waiting(self) -> bool:
        return self.new > 0

    def serialize(self) -> bytes:
        lines = [f"Messages-Waiting: {'yes' if self.waiting else 'no'}"]
        if self.account:
            lines.append(f"Message-Account: {self.account}")
        lines.append(f"Voice-Message: {self.new}/{self.old} "
                     f"({self.urgent_new}/{self.urgent_old})")
        return ("\r\n".join(lines) + "\r\n").encode()


_COUNTS = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*(?:\(\s*(\d+)\s*/\s*(\d+)\s*\))?\s*$")


def parse_message_summary(body: bytes) -> MessageSummary:
    """Parse a message-summary body (RFC 3842 §5.2); counts of voice-message."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MwiError("message-summary is not UTF-8") from None
    waiting: bool | None = None
    account: str | None = None
    counts = (0, 0, 0, 0)
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MwiError(f"bad message-summary line {line[:40]!r}")
        key = name.strip().lower()
        value = value.strip()
        if key == "messages-waiting":
            if value.lower() not in ("yes", "no"):
                raise MwiError(f"Messages-Waiting: {value!r}")
            waiting = value.lower() == "yes"
        elif key == "message-account":
            account = value
        elif key == "voice-message":
            match = _COUNTS.match(value)
            if match is None:
                raise MwiError(f"Voice-Message: {value!r}")
            counts = tuple(int(g) if g else 0 for g in match.groups())  # type: ignore[assignment]
    if waiting is None:
        raise MwiError("message-summary without Messages-Waiting")
    return MessageSummary(counts[0], counts[1], counts[2], counts[3], account)


class SubscriptionStatus(enum.Enum):
    """RFC 6665 §4.1.2 / §4.2.2 states of a subscription at the notifier."""

    ACTIVE = "active"
    TERMINATED = "terminated"


class SubscriptionInput(enum.Enum):
    REFRESH = "refresh"
    UNSUBSCRIBE = "unsubscribe"
    TIMEOUT = "timeout"
    REJECTED = "rejected"  # the subscriber answered a NOTIFY with 481 or a failure


TRANSITIONS: dict[tuple[SubscriptionStatus, SubscriptionInput], SubscriptionStatus] = {
    (SubscriptionStatus.ACTIVE, SubscriptionInput.REFRESH): SubscriptionStatus.ACTIVE,
    (SubscriptionStatus.ACTIVE, SubscriptionInput.UNSUBSCRIBE): SubscriptionStatus.TERMINATED,
    (SubscriptionStatus.ACTIVE, SubscriptionInput.TIMEOUT): SubscriptionStatus.TERMINATED,
    (SubscriptionStatus.ACTIVE, SubscriptionInput.REJECTED): SubscriptionStatus.TERMINATED,
}


class Subscription:
    """The notifier's view of one subscription (RFC 6665 §4.2).

    Created by an accepted SUBSCRIBE with ``expires`` seconds (clamped to
    ``min_expires``..``max_expires``, §4.2.1.1); each NOTIFY carries
    :meth:`state_header`. Expires: 0 ends it (one last NOTIFY); so does the
    clock passing :attr:`expires_at` (§4.2.2).
    """

    def __init__(self, expires: int, now: float, *, min_expires: int = 60,
                 max_expires: int = 3600) -> None:
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.status = SubscriptionStatus.ACTIVE
        self.reason: str | None = None
        self.expires_at = now
        self._set_expiry(expires, now)

    def _set_expiry(self, expires: int, now: float) -> None:
        if 0 < expires < self.min_expires:
            raise MwiError(f"Expires {expires} below {self.min_expires}", 423)
        self.expires_at = now + min(expires, self.max_expires)

    def _apply(self, trigger: SubscriptionInput, reason: str | None = None) -> None:
        try:
            self.status = TRANSITIONS[self.status, trigger]
        except KeyError:
            raise MwiError(f"the subscription is {self.status.value}", 481) from None
        if self.status is SubscriptionStatus.TERMINATED:
            self.reason = reason

    def refresh(self, expires: int, now: float) -> None:
        """A SUBSCRIBE within the dialog (§4.2.1.2); Expires: 0 unsubscribes."""
        if expires == 0:
            self._apply(SubscriptionInput.UNSUBSCRIBE, "timeout")
            self.expires_at = now
            return
        self._set_expiry(expires, now)
        self._apply(SubscriptionInput.REFRESH)

    def rejected(self) -> None:
        """The subscriber answered a NOTIFY with a failure (§4.2.2)."""
        self._apply(SubscriptionInput.REJECTED, "rejected")

    def handle_timer(self, now: float) -> None:
        if self.status is SubscriptionStatus.ACTIVE and now >= self.expires_at:
            self._apply(SubscriptionInput.TIMEOUT, "timeout")

    def next_timer(self) -> float | None:
        return self.expires_at if self.status is SubscriptionStatus.ACTIVE else None

    @property
    def active(self) -> bool:
        return self.status is SubscriptionStatus.ACTIVE

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))

    def state_header(self, now: float) -> str:
        """The Subscription-State value for a NOTIFY sent at ``now`` (§8.2.3)."""
        if self.active:
            return f"active;expires={self.remaining(now)}"
        return f"terminated;reason={self.reason or 'timeout'}"
