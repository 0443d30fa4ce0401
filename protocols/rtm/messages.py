"""The RTM frames (docs/rtm.md, "Messages"): one msgpack map each, named by
its ``message`` key, in the T-Library framing (4-byte big-endian length, then
the map; :mod:`protocols.tlib.framing`).

:func:`parse` checks a received map against :data:`SCHEMAS` (one table: message
name -> its fields, their types and whether they are required) and returns a
frozen dataclass; :func:`to_map` is the reverse. Bad input raises
:class:`BadMessage` with the code the peer is told.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from protocols.rtm.elements import MAX_INT, Element, decode_elements, encode_elements
from protocols.rtm.errors import BadMessage, ElementError, RtmCode

__all__ = [
    "KINDS",
    "PROTOCOL_VERSION",
    "SCHEMAS",
    "Accepted",
    "Ack",
    "Busy",
    "Challenge",
    "Deliver",
    "Error",
    "Hello",
    "Login",
    "Ping",
    "Pong",
    "Refused",
    "Rejected",
    "RtmMessage",
    "Send",
    "Welcome",
    "parse",
    "to_map",
]

#: The protocol version this code speaks (``Hello.version``).
PROTOCOL_VERSION: Final = 1
#: Message kinds a site may send; the hub also delivers ``timeout``.
KINDS: Final = ("event", "request", "response")
DELIVERY_KINDS: Final = ("event", "request", "response", "timeout")
#: Longest object id / event id.
MAX_ID_LENGTH: Final = 256


@dataclass(frozen=True)
class RtmMessage:
    """Base of every frame."""

    NAME = ""


@dataclass(frozen=True)
class Hello(RtmMessage):
    """Site -> hub, first frame: version, site id, mode (``site``: a session;
    ``check``: the guide's Check Site, authenticate and report), client nonce."""

    NAME = "Hello"
    version: int
    site: int
    cnonce: bytes
    mode: str = "site"


@dataclass(frozen=True)
class Challenge(RtmMessage):
    NAME = "Challenge"
    version: int
    nonce: bytes
    hub: str


@dataclass(frozen=True)
class Login(RtmMessage):
    NAME = "Login"
    proof: bytes


@dataclass(frozen=True)
class Welcome(RtmMessage):
    """Hub -> site: authenticated. ``last_seq``: the highest ``Send.seq`` of this
    site the hub holds durably (the outbox drops up to it and resends the rest);
    ``status``: the check-mode report."""

    NAME = "Welcome"
    site: int
    hub: str
    proof: bytes
    last_seq: int
    keepalive: float
    window: int
    status: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Refused(RtmMessage):
    """Hub -> site: the session is refused (the hub closes)."""

    NAME = "Refused"
    code: str
    reason: str


@dataclass(frozen=True)
class Send(RtmMessage):
    """Site -> hub: one message. ``seq`` counts up by one per message of the site;
    ``to`` is a site id as a string or ``*`` (guide: "Destination ... must be a
    string"). Requests carry ``timeout_ms`` (0: wait forever); responses carry
    the ``correlation`` and ``reply_to`` the request was delivered with."""

    NAME = "Send"
    seq: int
    kind: str
    to: str
    object: str
    event: str
    elements: tuple[Element, ...]
    timeout_ms: int = 0
    correlation: int = 0
    reply_to: int = 0


@dataclass(frozen=True)
class Accepted(RtmMessage):
    """Hub -> site: every ``Send`` up to ``seq`` is durably held (cumulative)."""

    NAME = "Accepted"
    seq: int


@dataclass(frozen=True)
class Rejected(RtmMessage):
    """Hub -> site: ``Send`` ``seq`` was refused (and counts as handled)."""

    NAME = "Rejected"
    seq: int
    code: str
    reason: str


@dataclass(frozen=True)
class Busy(RtmMessage):
    """Hub -> site: ``Send`` from ``seq`` on were not taken (flood); resend
    them after ``retry_ms``."""

    NAME = "Busy"
    seq: int
    retry_ms: int


@dataclass(frozen=True)
class Deliver(RtmMessage):
    """Hub -> site: one message for the site. ``id`` is the delivery id (grows
    per destination); ``correlation`` / ``reply_to`` are non-zero for a request;
    a response or timeout carries ``in_reply_to``, the request's ``Send.seq``."""

    NAME = "Deliver"
    id: int
    origin: int
    kind: str
    object: str
    event: str
    elements: tuple[Element, ...]
    correlation: int = 0
    reply_to: int = 0
    in_reply_to: int = 0
    at: float = 0.0


@dataclass(frozen=True)
class Ack(RtmMessage):
    """Site -> hub: every delivery up to ``id`` is handled (cumulative)."""

    NAME = "Ack"
    id: int


@dataclass(frozen=True)
class Ping(RtmMessage):
    NAME = "Ping"
    t: float


@dataclass(frozen=True)
class Pong(RtmMessage):
    NAME = "Pong"
    t: float


@dataclass(frozen=True)
class Error(RtmMessage):
    """Either side: a frame that could not be used."""

    NAME = "Error"
    code: str
    reason: str


Check = Callable[[Any], bool]


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _str(limit: int) -> Check:
    return lambda v: isinstance(v, str) and len(v) <= limit


def _bytes(size: int) -> Check:
    return lambda v: isinstance(v, bytes) and len(v) == size


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _one_of(*choices: str) -> Check:
    return lambda v: v in choices


def _map(value: Any) -> bool:
    return isinstance(value, dict)


def _any_list(value: Any) -> bool:
    return isinstance(value, list)


#: message name -> (class, {field: (check, required)}). Elements are checked by
#: :func:`protocols.rtm.elements.decode_elements`.
SCHEMAS: Final[dict[str, tuple[type[RtmMessage], dict[str, tuple[Check, bool]]]]] = {
    "Hello": (Hello, {"version": (_uint, True), "site": (_uint, True),
                      "cnonce": (_bytes(16), True), "mode": (_one_of("site", "check"), False)}),
    "Challenge": (Challenge, {"version": (_uint, True), "nonce": (_bytes(32), True),
                              "hub": (_str(256), True)}),
    "Login": (Login, {"proof": (_bytes(32), True)}),
    "Welcome": (Welcome, {"site": (_uint, True), "hub": (_str(256), True),
                          "proof": (_bytes(32), True), "last_seq": (_uint, True),
                          "keepalive": (_number, True), "window": (_uint, True),
                          "status": (_map, False)}),
    "Refused": (Refused, {"code": (_str(64), True), "reason": (_str(1024), True)}),
    "Send": (Send, {"seq": (_uint, True), "kind": (_one_of(*KINDS), True),
                    "to": (_str(8), True), "object": (_str(MAX_ID_LENGTH), True),
                    "event": (_str(MAX_ID_LENGTH), True), "elements": (_any_list, True),
                    "timeout_ms": (_uint, False), "correlation": (_uint, False),
                    "reply_to": (_uint, False)}),
    "Accepted": (Accepted, {"seq": (_uint, True)}),
    "Rejected": (Rejected, {"seq": (_uint, True), "code": (_str(64), True),
                            "reason": (_str(1024), True)}),
    "Busy": (Busy, {"seq": (_uint, True), "retry_ms": (_uint, True)}),
    "Deliver": (Deliver, {"id": (_uint, True), "origin": (_uint, True),
                          "kind": (_one_of(*DELIVERY_KINDS), True),
                          "object": (_str(MAX_ID_LENGTH), True),
                          "event": (_str(MAX_ID_LENGTH), True),
                          "elements": (_any_list, True), "correlation": (_uint, False),
                          "reply_to": (_uint, False), "in_reply_to": (_uint, False),
                          "at": (_number, False)}),
    "Ack": (Ack, {"id": (_uint, True)}),
    "Ping": (Ping, {"t": (_number, True)}),
    "Pong": (Pong, {"t": (_number, True)}),
    "Error": (Error, {"code": (_str(64), True), "reason": (_str(1024), True)}),
}


def parse(frame: Mapping[str, Any]) -> RtmMessage:
    """The typed message of a received map; :class:`BadMessage` if it is not one.

    A ``Send`` whose elements do not decode raises :class:`BadMessage` with
    code ``bad-element`` and ``seq`` readable from the frame (the hub rejects
    that one message and goes on).
    """
    name = frame.get("message")
    entry = SCHEMAS.get(name) if isinstance(name, str) else None
    if entry is None:
        shown = name[:64] if isinstance(name, str) else repr(name)[:64]
        raise BadMessage(RtmCode.UNKNOWN_MESSAGE, f"unknown message {shown}")
    cls, schema = entry
    values: dict[str, Any] = {}
    for key, (check, required) in schema.items():
        if key not in frame:
            if required:
                raise BadMessage(RtmCode.BAD_FIELD, f"{name}: missing {key}")
            continue
        value = frame[key]
        if not check(value):
            raise BadMessage(RtmCode.BAD_FIELD, f"{name}: bad {key} ({type(value).__name__})")
        values[key] = value
    if "elements" in values:
        try:
            values["elements"] = decode_elements(values["elements"])
        except ElementError as exc:
            raise BadMessage(RtmCode.BAD_ELEMENT, f"{name}: {exc.text}") from None
    return cls(**values)


def to_map(message: RtmMessage) -> dict[str, Any]:
    """The wire map of ``message`` (optional fields at their default are left out)."""
    out: dict[str, Any] = {"message": message.NAME}
    for f in fields(message):
        value = getattr(message, f.name)
        if f.name == "elements":
            out["elements"] = encode_elements(value)
        elif f.name == "status":
            if value is not None:
                out["status"] = dict(value)
        else:
            out[f.name] = value
    return out
