"""Session timers (RFC 4028): the Session-Expires and Min-SE headers, the
``timer`` option tag, what a UAS answers to an INVITE (§9), what a UAC learns
from the 2xx (§7.2), and one dialog's refresh / expiry clock (§10).

Sans-I/O: :class:`SessionTimer` is driven by ``refreshed(now)`` and
``handle_timer(now)``, so a 30-minute session is tested in no time.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

from protocols.sip.errors import ParseError
from protocols.sip.headers import Headers
from protocols.sip.reliable import option_tags

__all__ = [
    "MIN_SE",
    "OPTION_TAG",
    "SessionExpires",
    "SessionTimer",
    "TimerAction",
    "UasAnswer",
    "answer_request",
    "parse_min_se",
    "parse_session_expires",
    "read_response",
]

OPTION_TAG: Final = "timer"
#: the lowest Min-SE allowed (§4: "MUST NOT be less than 90 seconds")
MIN_SE: Final = 90
_MAX_DELTA: Final = 2**32 - 1


def _delta(text: str, what: str) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) > _MAX_DELTA:
        raise ParseError(f"bad {what} {text!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """``Session-Expires: INTERVAL[;refresher=uac|uas]`` (§4)."""

    interval: int
    refresher: str | None = None

    def __str__(self) -> str:
        return f"{self.interval};refresher={self.refresher}" if self.refresher \
            else str(self.interval)


def parse_session_expires(text: str) -> SessionExpires:
    """A Session-Expires value (compact ``x``); ParseError (400) when malformed."""
    head, *params = text.split(";")
    interval = _delta(head, "Session-Expires")
    if interval < 1:
        raise ParseError(f"bad Session-Expires {text!r}")
    refresher: str | None = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "refresher":
            refresher = value.strip().lower()
            if refresher not in ("uac", "uas"):
                raise ParseError(f"bad Session-Expires refresher {value!r}")
    return SessionExpires(interval, refresher)


def parse_min_se(text: str) -> int:
    """A Min-SE value (delta-seconds, parameters ignored); ParseError (400)."""
    return _delta(text.split(";", 1)[0], "Min-SE")


def _header(headers: Headers, name: str) -> str | None:
    return headers.get(name)


@dataclass(frozen=True, slots=True)
class UasAnswer:
    """What a UAS does with a session-timer request (§9).

    ``reject_min_se``: answer 422 with this Min-SE. Else ``session`` is the
    Session-Expires of the 2xx (None: no session timer), ``require`` whether
    the 2xx carries ``Require: timer`` (the UAC supports it), and
    ``we_refresh`` whether the UAS is the refresher.
    """

    reject_min_se: int | None = None
    session: SessionExpires | None = None
    require: bool = False
    we_refresh: bool = False


def answer_request(headers: Headers, *, interval: int, min_se: int) -> UasAnswer:
    """The UAS's answer (§9) to a request with ``headers``, for a UAS whose own
    session interval is ``interval`` (0: it asks for none) and smallest
    acceptable one ``min_se``. ParseError for a malformed Session-Expires / Min-SE."""
    raw = _header(headers, "Session-Expires")
    asked = parse_session_expires(raw) if raw is not None else None
    raw_min = _header(headers, "Min-SE")
    their_min = parse_min_se(raw_min) if raw_min is not None else MIN_SE
    supports = OPTION_TAG in option_tags(headers, "Supported") \
        or OPTION_TAG in option_tags(headers, "Require")
    floor = max(min_se, their_min, MIN_SE)
    if asked is not None and asked.interval < min_se:
        return UasAnswer(reject_min_se=min_se)  # §8.1: 422 Session Interval Too Small
    if asked is None:
        if not supports or interval <= 0:
            return UasAnswer()
        chosen = max(interval, floor)
    else:
        # the UAS may shorten the interval, never below either side's Min-SE (§9)
        chosen = max(min(asked.interval, interval), floor) if interval > 0 else asked.interval
    if not supports:
        # a proxy asked on behalf of a UAC without timers: the UAS refreshes (§9)
        return UasAnswer(session=SessionExpires(chosen, "uas"), require=False, we_refresh=True)
    refresher = asked.refresher if asked is not None and asked.refresher else "uac"
    return UasAnswer(session=SessionExpires(chosen, refresher), require=True,
                     we_refresh=refresher == "uas")


def read_response(headers: Headers) -> SessionExpires | None:
    """The session a UAC got in the 2xx (§7.2): None means no session timer.
    A Session-Expires without refresher leaves the refreshing to the UAC."""
    raw = _header(headers, "Session-Expires")
    if raw is None:
        return None
    se = parse_session_expires(raw)
    return se if se.refresher else SessionExpires(se.interval, "uac")


class TimerAction(enum.Enum):
    """What a :class:`SessionTimer` asks of its dialog's user agent."""

    REFRESH = "refresh"  # send a session refresh (re-INVITE or UPDATE) now
    EXPIRE = "expire"  # no refresh came in time: send BYE (§10)


class SessionTimer:
    """One dialog's session timer (§10).

    The refresher refreshes at half the interval; either side considers the
    session expired when ``interval - min(32, interval / 3)`` seconds pass
    without a successful refresh (the refresher too, so it gives up before
    the other side does).
    """

    __slots__ = ("expires_at", "interval", "refresh_at", "we_refresh")

    def __init__(self, interval: int, we_refresh: bool, now: float) -> None:
        self.interval = interval
        self.we_refresh = we_refresh
        self.refresh_at = math.inf
        self.expires_at = math.inf
        self.refreshed(now)

    def refreshed(self, now: float, session: SessionExpires | None = None,
                  we_refresh: bool | None = None) -> None:
        """A refresh succeeded at ``now`` (a 2xx to a re-INVITE / UPDATE, sent or
        received), possibly with a new interval and refresher."""
        if session is not None:
            self.interval = session.interval
        if we_refresh is not None:
            self.we_refresh = we_refresh
        self.refresh_at = now + self.interval / 2 if self.we_refresh else math.inf
        self.expires_at = now + self.interval - min(32.0, self.interval / 3)

    def next_timer(self) -> float:
        return min(self.refresh_at, self.expires_at)

    def handle_timer(self, now: float) -> TimerAction | None:
        if now >= self.expires_at:
            self.refresh_at = self.expires_at = math.inf
            return TimerAction.EXPIRE
        if now >= self.refresh_at:
            self.refresh_at = math.inf  # once per interval; a success re-arms it
            return TimerAction.REFRESH
        return None
