"""Messages of the status-aggregator protocol (docs/status-aggregator.md,
"Messages"): the status record and every frame, as frozen dataclasses with
their wire form.

The status record follows the guide ("What is a status?"): a status key
(persistent or not) with its "until" time and detail string, the "on phone"
flag and the logged-on server (empty: logged off), keyed by the user's
directory identity (e-mail), stamped with the publisher that holds the user,
the publisher's incarnation and its sequence number.

:func:`parse` turns a decoded map into a message or raises
:class:`StatusProtocolError` (``UNKNOWN_MESSAGE``, ``INVALID_FIELD``); one
parser per message name (:data:`PARSERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, NamedTuple

from protocols.status.errors import ErrorCode, StatusProtocolError

PROTOCOL_VERSION: Final = 1

#: longest user identity, status key, detail, server or application name
MAX_TEXT: Final = 256
MAX_DETAIL: Final = 1024
#: most users one Query/Watch/Unwatch names, most records in one frame
MAX_USERS: Final = 50_000
MAX_SEARCH_RESULTS: Final = 500


class Role(StrEnum):
    """What a connection is for, given in ``Hello``."""

    PUBLISHER = "publisher"
    CONSUMER = "consumer"
    MIRROR = "mirror"


class StatusRecord(NamedTuple):
    """One user's status as the aggregator holds it.

    ``status`` is ``None`` in a publish that leaves the status key as it is
    (a publisher that restarted and does not know a persistent status).
    ``until`` is a UNIX time or ``None``. A tuple: cheap to make and compare.
    Being a ``NamedTuple`` (a subclass, not an exact tuple), it stays tracked
    by the garbage collector whatever it holds, so the status table does not
    keep it: it stores each record in its wire form, bytes the collector never
    walks (:data:`protocols.status.table.StoredRecord`), and builds this class
    again where a record is read out.
    """

    user: str
    status: str | None = None
    persistent: bool = False
    until: float | None = None
    detail: str = ""
    on_phone: bool = False
    server: str = ""
    publisher: str = ""
    incarnation: int = 0
    seq: int = 0

    @property
    def logged_on(self) -> bool:
        return bool(self.server)

    def to_wire(self) -> list[Any]:
        """The wire form: an array in field order (docs/status-aggregator.md)."""
        return list(self)

    def to_map(self) -> dict[str, Any]:
        """The record by field name (JSON output, the web page)."""
        return self._asdict()


# -- field readers ----------------------------------------------------------


def _text(m: Mapping[str, Any], key: str, *, limit: int = MAX_TEXT, default: Any = ...) -> Any:
    value = m.get(key, default)
    if value is ...:
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, f"{key} is missing")
    if value is None and default is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise StatusProtocolError(ErrorCode.INVALID_FIELD,
                                  f"{key} must be a string of at most {limit} characters")
    return value


def _int(m: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    value = m.get(key, default)
    if value is ...:
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, f"{key} is missing")
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, f"{key} must be a non-negative integer")
    return value


def _bool(m: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = m.get(key, default)
    if not isinstance(value, bool):
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, f"{key} must be a boolean")
    return value


def _list(m: Mapping[str, Any], key: str, limit: int = MAX_USERS) -> list[Any]:
    value = m.get(key, [])
    if not isinstance(value, list) or len(value) > limit:
        raise StatusProtocolError(ErrorCode.INVALID_FIELD,
                                  f"{key} must be a list of at most {limit} items")
    return value


def _users(m: Mapping[str, Any], key: str = "users") -> tuple[str, ...]:
    users = _list(m, key)
    for user in users:
        if not isinstance(user, str) or not user or len(user) > MAX_TEXT:
            raise StatusProtocolError(ErrorCode.INVALID_FIELD,
                                      f"{key} must hold non-empty strings")
    return tuple(users)


_RECORD_FIELDS: Final = len(StatusRecord._fields)


def _bad(text: str) -> StatusProtocolError:
    return StatusProtocolError(ErrorCode.INVALID_FIELD, text)


def record_from_wire(m: Any) -> StatusRecord:
    """One record array; :class:`StatusProtocolError` (``INVALID_FIELD``) if malformed.

    The hot path of a snapshot: one type check per field, no call per field."""
    if type(m) is not list or len(m) != _RECORD_FIELDS:
        raise _bad(f"a record is an array of {_RECORD_FIELDS} fields")
    user, status, persistent, until, detail, on_phone, server, publisher, incarnation, seq = m
    if type(user) is not str or not user or len(user) > MAX_TEXT:
        raise _bad("user must be a non-empty string of at most 256 characters")
    if status is not None and (type(status) is not str or len(status) > MAX_TEXT):
        raise _bad("status must be a string of at most 256 characters or nil")
    if type(persistent) is not bool or type(on_phone) is not bool:
        raise _bad("persistent and on_phone must be booleans")
    if until is not None:
        if type(until) is int:
            until = float(until)
        elif type(until) is not float:
            raise _bad("until must be a number or nil")
    if type(detail) is not str or len(detail) > MAX_DETAIL:
        raise _bad("detail must be a string of at most 1024 characters")
    if type(server) is not str or len(server) > MAX_TEXT \
            or type(publisher) is not str or len(publisher) > MAX_TEXT:
        raise _bad("server and publisher must be strings of at most 256 characters")
    if type(incarnation) is not int or type(seq) is not int \
            or not 0 <= incarnation < 2**63 or not 0 <= seq < 2**63:
        raise _bad("incarnation and seq must be non-negative integers")
    return StatusRecord(user, status, persistent, until, detail, on_phone, server, publisher,
                        incarnation, seq)


def _records(m: Mapping[str, Any], key: str = "records") -> tuple[StatusRecord, ...]:
    return tuple(record_from_wire(r) for r in _list(m, key))


# -- messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of a client or a mirror: who it is and what for."""

    role: Role
    application: str
    version: int = PROTOCOL_VERSION
    #: a publisher's incarnation (its start time in ms): orders its records across restarts
    incarnation: int = 0
    name = "Hello"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "role": self.role.value, "application": self.application,
                "version": self.version, "incarnation": self.incarnation}


@dataclass(frozen=True, slots=True)
class Welcome:
    """The aggregator's answer to an accepted ``Hello``; ``mirrors`` lists the
    aggregators of the mirror group in fail-over order."""

    application: str
    version: int = PROTOCOL_VERSION
    mirrors: tuple[str, ...] = ()
    name = "Welcome"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "application": self.application, "version": self.version,
                "mirrors": list(self.mirrors)}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A publisher's full set of users, in parts; the part with ``final`` replaces
    the publisher's previous set."""

    ref: int
    records: tuple[StatusRecord, ...]
    final: bool = True
    name = "Snapshot"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref, "final": self.final,
                "records": list(self.records)}


@dataclass(frozen=True, slots=True)
class Publish:
    """Changed statuses of users the publisher holds (a batch)."""

    ref: int
    records: tuple[StatusRecord, ...]
    name = "Publish"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref,
                "records": list(self.records)}


@dataclass(frozen=True, slots=True)
class Query:
    ref: int
    users: tuple[str, ...]
    name = "Query"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref, "users": list(self.users)}


@dataclass(frozen=True, slots=True)
class Watch:
    """Watch users (``["*"]``: every user); answered by a ``Result`` holding
    their current records, then ``Event`` frames for each change."""

    ref: int
    users: tuple[str, ...]
    name = "Watch"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref, "users": list(self.users)}


@dataclass(frozen=True, slots=True)
class Unwatch:
    ref: int
    users: tuple[str, ...]
    name = "Unwatch"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref, "users": list(self.users)}


@dataclass(frozen=True, slots=True)
class Search:
    """Directory search: entries whose identity or name contains ``text``."""

    ref: int
    text: str
    limit: int = 50
    name = "Search"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref, "text": self.text, "limit": self.limit}


@dataclass(frozen=True, slots=True)
class Result:
    """The answer to a request: records (query, watch), the users it did not
    take and why (``refused``: user -> error code)."""

    ref: int
    records: tuple[StatusRecord, ...] = ()
    refused: Mapping[str, int] = field(default_factory=dict)
    accepted: int = 0
    name = "Result"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref, "accepted": self.accepted,
                "records": list(self.records), "refused": dict(self.refused)}


@dataclass(frozen=True, slots=True)
class SearchResult:
    ref: int
    entries: tuple[Mapping[str, Any], ...]
    name = "SearchResult"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "ref": self.ref, "entries": [dict(e) for e in self.entries]}


@dataclass(frozen=True, slots=True)
class Event:
    """Changed records for a watcher; ``seq`` counts the events of this
    connection from 1, without gaps."""

    seq: int
    records: tuple[StatusRecord, ...]
    name = "Event"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "seq": self.seq,
                "records": list(self.records)}


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Sent when nothing else was sent for ``keep-alive-interval``; ``publishers``
    (mirror links only) names the publishers connected to the sender."""

    publishers: Mapping[str, int] = field(default_factory=dict)
    name = "KeepAlive"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"message": self.name}
        if self.publishers:
            wire["publishers"] = dict(self.publishers)
        return wire


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    text: str
    ref: int | None = None
    name = "Error"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "code": self.code, "text": self.text, "ref": self.ref}


@dataclass(frozen=True, slots=True)
class MirrorSync:
    """A mirror's whole table, in parts (raw publisher records and the
    publishers it knows with their incarnation and whether they are online);
    sent when a mirror link opens, so two aggregators converge after a partition."""

    records: tuple[StatusRecord, ...]
    publishers: Mapping[str, Mapping[str, Any]]
    final: bool = True
    name = "MirrorSync"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "final": self.final,
                "records": list(self.records),
                "publishers": {k: dict(v) for k, v in self.publishers.items()}}


@dataclass(frozen=True, slots=True)
class MirrorUpdate:
    """Records a mirror accepted from its own publishers, passed on as accepted;
    ``replaced`` names a publisher whose snapshot just replaced its set, and
    ``floor`` is that snapshot's oldest ``(incarnation, seq)``: the publisher's
    users with older records were not in it and are logged off."""

    records: tuple[StatusRecord, ...]
    replaced: str | None = None
    floor: tuple[int, int] | None = None
    name = "MirrorUpdate"

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.name, "records": list(self.records),
                "replaced": self.replaced,
                "floor": list(self.floor) if self.floor is not None else None}


Message = (Hello | Welcome | Snapshot | Publish | Query | Watch | Unwatch | Search | Result
           | SearchResult | Event | KeepAlive | Error | MirrorSync | MirrorUpdate)


def _parse_hello(m: Mapping[str, Any]) -> Message:
    role = _text(m, "role")
    if role not in {r.value for r in Role}:
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, f"unknown role {role!r}")
    return Hello(role=Role(role), application=_text(m, "application"),
                 version=_int(m, "version"), incarnation=_int(m, "incarnation", 0))


def _parse_publishers(m: Mapping[str, Any]) -> dict[str, Any]:
    value = m.get("publishers", {})
    if not isinstance(value, dict):
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, "publishers must be a map")
    return value


def _parse_keepalive(m: Mapping[str, Any]) -> Message:
    publishers = _parse_publishers(m)
    for name, incarnation in publishers.items():
        if isinstance(incarnation, bool) or not isinstance(incarnation, int):
            raise StatusProtocolError(ErrorCode.INVALID_FIELD, f"publishers.{name}: not an integer")
    return KeepAlive(publishers=publishers)


def _parse_refused(m: Mapping[str, Any]) -> dict[str, int]:
    value = m.get("refused", {})
    if not isinstance(value, dict) or not all(isinstance(v, int) for v in value.values()):
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, "refused must map users to codes")
    return value


def _parse_search(m: Mapping[str, Any]) -> Message:
    limit = _int(m, "limit", 50)
    return Search(ref=_int(m, "ref"), text=_text(m, "text"),
                  limit=min(limit, MAX_SEARCH_RESULTS))


def _parse_entries(m: Mapping[str, Any]) -> Message:
    entries = _list(m, "entries")
    if not all(isinstance(e, dict) for e in entries):
        raise StatusProtocolError(ErrorCode.INVALID_FIELD, "entries must be maps")
    return SearchResult(ref=_int(m, "ref"), entries=tuple(entries))


def _parse_mirror_update(m: Mapping[str, Any]) -> Message:
    floor = m.get("floor")
    if floor is not None:
        if (not isinstance(floor, list) or len(floor) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in floor)):
            raise StatusProtocolError(ErrorCode.INVALID_FIELD, "floor must be [incarnation, seq]")
        floor = (floor[0], floor[1])
    return MirrorUpdate(records=_records(m), replaced=_text(m, "replaced", default=None),
                        floor=floor)


#: message name -> parser of its map
PARSERS: Final[dict[str, Callable[[Mapping[str, Any]], Message]]] = {
    "Hello": _parse_hello,
    "Welcome": lambda m: Welcome(application=_text(m, "application"), version=_int(m, "version"),
                                 mirrors=_users(m, "mirrors")),
    "Snapshot": lambda m: Snapshot(ref=_int(m, "ref"), records=_records(m),
                                   final=_bool(m, "final", True)),
    "Publish": lambda m: Publish(ref=_int(m, "ref"), records=_records(m)),
    "Query": lambda m: Query(ref=_int(m, "ref"), users=_users(m)),
    "Watch": lambda m: Watch(ref=_int(m, "ref"), users=_users(m)),
    "Unwatch": lambda m: Unwatch(ref=_int(m, "ref"), users=_users(m)),
    "Search": _parse_search,
    "Result": lambda m: Result(ref=_int(m, "ref"), records=_records(m),
                               refused=_parse_refused(m), accepted=_int(m, "accepted", 0)),
    "SearchResult": _parse_entries,
    "Event": lambda m: Event(seq=_int(m, "seq"), records=_records(m)),
    "KeepAlive": _parse_keepalive,
    "Error": lambda m: Error(code=_int(m, "code"), text=_text(m, "text", limit=MAX_DETAIL),
                             ref=_int(m, "ref", None)),
    "MirrorSync": lambda m: MirrorSync(records=_records(m), publishers=_parse_publishers(m),
                                       final=_bool(m, "final", True)),
    "MirrorUpdate": _parse_mirror_update,
}


def parse(m: Mapping[str, Any]) -> Message:
    """A decoded frame as a message; :class:`StatusProtocolError` for an unknown
    name or a bad field (its ``ref`` set when the frame had a usable one)."""
    name = m.get("message")
    parser = PARSERS.get(name) if isinstance(name, str) else None
    ref = m.get("ref")
    ref = ref if isinstance(ref, int) and not isinstance(ref, bool) else None
    if parser is None:
        shown = name[:64] if isinstance(name, str) else repr(name)[:64]
        raise StatusProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message {shown}", ref)
    try:
        return parser(m)
    except StatusProtocolError as exc:
        exc.ref = ref
        raise
