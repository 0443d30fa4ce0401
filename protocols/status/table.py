"""The aggregator's status table: every user's record, who publishes it, who
watches it, and what a silent publisher means (docs/status-aggregator.md,
"Status table"; guide: "How Status Aggregator works").

The table keeps each publisher's last record per user as published (the
*raw* record) and derives what consumers see (:meth:`StatusTable.view`):
while its publisher is silent, a user is logged off and not on the phone and
only a persistent status is left. Keeping the raw record is what lets a
mirror that heard the publisher restore the user after a partition heals.

Rules (each refusal is an :class:`ErrorCode` per user):

* a record names a user of the directory (``known_user``), else ``UNKNOWN_USER``;
* a publisher publishes only for itself, and not for a user logged on
  through another publisher that is online (``NOT_OWNER``);
* its records are ordered by ``(incarnation, seq)``; an older one is
  ``STALE_SEQUENCE``;
* ``status = None`` keeps a persistent status the table holds (a restarted
  publisher that does not know it); a log-off (empty ``server``) clears a
  non-persistent status;
* a snapshot replaces the publisher's set: its users not in the snapshot
  are logged off (:meth:`retire_before`).

Memory (docs/status-aggregator.md, "Memory"): the table holds nothing per
user that the garbage collector tracks, so a full collection does not walk
500,000 users. A record is stored in its wire form (:data:`StoredRecord`,
the msgpack array an ``Event`` carries): bytes are not a container, and the
dict holding them, like each publisher's ``users`` (a dict of ``None``, not
a set, which the collector always tracks), stays untracked. A
:class:`StatusRecord` would not do: a ``NamedTuple`` (not an exact tuple)
stays tracked for ever, and so would the dict holding it; a plain tuple of
its fields is untracked only at the collector's next pass, after the dict
holding it was tracked again. A :class:`StatusRecord` is built again where
a record is read out (:attr:`StatusTable.raw`, :meth:`StatusTable.view`);
:meth:`StatusTable.view_wire` gives the stored bytes as they are.

Sans-I/O: time is ``now``; :meth:`next_timer` / :meth:`handle_timer` run the
``publisher-timeout``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from protocols.status.errors import ErrorCode
from protocols.status.messages import StatusRecord

DEFAULT_PUBLISHER_TIMEOUT: Final = 30.0

#: ``Watch`` of every user
ALL_USERS: Final = "*"

_intern = sys.intern

_NOT_OWNER: Final = int(ErrorCode.NOT_OWNER)
_UNKNOWN_USER: Final = int(ErrorCode.UNKNOWN_USER)
_STALE: Final = int(ErrorCode.STALE_SEQUENCE)

#: floor of a snapshot that has no record yet: every older record is retired
_NO_FLOOR: Final = (2**63, 0)

#: a record as the table stores it: its wire form, the msgpack array of the
#: fields of a :class:`StatusRecord` in their order (not a container: the
#: garbage collector never tracks it, nor the dict that holds only such)
StoredRecord = bytes

_pack: Final[Callable[[Any], bytes]] = msgpack.packb
_unpack: Final = msgpack.unpackb

# field positions in a record's fields
_STATUS: Final = 1
_PERSISTENT: Final = 2
_UNTIL: Final = 3
_DETAIL: Final = 4
_ON_PHONE: Final = 5
_SERVER: Final = 6
_PUBLISHER: Final = 7
_INCARNATION: Final = 8
_SEQ: Final = 9

_record: Final = StatusRecord._make


@dataclass(slots=True)
class PublisherState:
    """A publisher as this aggregator knows it (directly or through a mirror)."""

    name: str
    incarnation: int = 0
    online: bool = False
    last_heard: float = 0.0
    #: the users it publishes, in a dict (their values None): untracked by the
    #: garbage collector, which tracks every set
    users: dict[str, None] = field(default_factory=dict)
    #: lowest ``(incarnation, seq)`` of the snapshot being received
    snapshot_floor: tuple[int, int] | None = None


class RawRecords(Mapping[str, StatusRecord]):
    """The raw records by user, read-only: each read builds the
    :class:`StatusRecord` from the stored bytes."""

    __slots__ = ("_stored",)

    def __init__(self, stored: dict[str, StoredRecord]) -> None:
        self._stored = stored

    def __getitem__(self, user: str) -> StatusRecord:
        return _record(_unpack(self._stored[user]))

    def __contains__(self, user: object) -> bool:
        return user in self._stored

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)


class StatusTable:
    """Records by user, publishers, watchers; see the module docstring."""

    def __init__(
        self,
        *,
        publisher_timeout: float = DEFAULT_PUBLISHER_TIMEOUT,
        known_user: Callable[[str], bool] | None = None,
    ) -> None:
        self.publisher_timeout = publisher_timeout
        self.known_user = known_user
        #: the raw record of each user, as stored
        self.stored: dict[str, StoredRecord] = {}
        #: the raw record of each user, as read
        self.raw: Mapping[str, StatusRecord] = RawRecords(self.stored)
        self.publishers: dict[str, PublisherState] = {}
        self._watchers: dict[str, set[int]] = {}
        self._watching: dict[int, set[str]] = {}
        self._watch_all: set[int] = set()

    # -- reading ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stored)

    def view(self, user: str) -> StatusRecord:
        """What consumers see of ``user`` (an empty record if none is held)."""
        stored = self.stored.get(user)
        if stored is None:
            return StatusRecord(user=user, status="")
        fields = _unpack(stored)
        publisher = self.publishers.get(fields[_PUBLISHER])
        if publisher is not None and publisher.online:
            return _record(fields)
        return _record(_silenced(fields))

    def view_wire(self, user: str) -> bytes:
        """:meth:`view` in its wire form, the msgpack array of its fields (the
        stored bytes themselves while the publisher is online)."""
        stored = self.stored.get(user)
        if stored is None:
            return _pack(StatusRecord(user=user, status=""))
        fields = _unpack(stored)
        publisher = self.publishers.get(fields[_PUBLISHER])
        if publisher is not None and publisher.online:
            return stored
        return _pack(_silenced(fields))

    def is_known(self, user: str) -> bool:
        return user in self.stored or self.known_user is None or self.known_user(user)

    def publisher(self, name: str) -> PublisherState:
        state = self.publishers.get(name)
        if state is None:
            state = self.publishers[name] = PublisherState(_intern(name))
        return state

    # -- publishers ---------------------------------------------------------
    def heard(self, name: str, incarnation: int, now: float) -> list[str]:
        """The publisher (or a mirror on its behalf) was heard; users whose
        view changed because it came back online."""
        state = self.publisher(name)
        if incarnation < state.incarnation:
            return []
        state.incarnation = incarnation
        state.last_heard = max(state.last_heard, now)
        if state.online:
            return []
        state.online = True
        return sorted(state.users)

    def publish(
        self, publisher: str, incarnation: int, records: Iterable[StatusRecord], now: float
    ) -> tuple[list[StatusRecord], dict[str, int]]:
        """Records from ``publisher``'s own connection (heard first, with
        :meth:`heard`): (accepted as stored, refused user -> code).

        The hot path of a snapshot: the rules of the module docstring, checked
        inline."""
        state = self.publisher(publisher)
        name = state.name
        stored = self.stored
        known = self.known_user
        accepted: list[StatusRecord] = []
        refused: dict[str, int] = {}
        for record in records:
            user = record.user
            if record.publisher and record.publisher != name:
                refused[user] = _NOT_OWNER
                continue
            packed = stored.get(user)
            held = None if packed is None else _unpack(packed)
            inc = record.incarnation or incarnation
            if held is None:
                if known is not None and not known(user):
                    refused[user] = _UNKNOWN_USER
                    continue
            elif held[_PUBLISHER] != name:
                owner = self.publishers.get(held[_PUBLISHER])
                if held[_SERVER] and owner is not None and owner.online:
                    refused[user] = _NOT_OWNER
                    continue
            elif inc < held[_INCARNATION] or (inc == held[_INCARNATION]
                                              and record.seq <= held[_SEQ]):
                refused[user] = _STALE
                continue
            accepted.append(self._store(state, record, inc, held))
        if accepted and state.snapshot_floor is not None:
            state.snapshot_floor = min(state.snapshot_floor,
                                       min((r.incarnation, r.seq) for r in accepted))
        return accepted, refused

    def begin_snapshot(self, publisher: str) -> None:
        """A snapshot starts: its records, up to :meth:`end_snapshot`, are the
        publisher's whole set."""
        self.publisher(publisher).snapshot_floor = _NO_FLOOR

    def end_snapshot(self, publisher: str) -> tuple[tuple[int, int], list[StatusRecord]]:
        """The snapshot is complete: its floor (the oldest record it holds) and
        the records of the users it logged off (every user it did not name)."""
        state = self.publisher(publisher)
        floor = state.snapshot_floor or _NO_FLOOR
        state.snapshot_floor = None
        return floor, self.retire_before(publisher, floor)

    def retire_before(self, publisher: str, floor: tuple[int, int]) -> list[StatusRecord]:
        """Log off ``publisher``'s users whose record is older than ``floor``
        (not in its latest snapshot); the records changed."""
        state = self.publisher(publisher)
        retired = []
        for user in list(state.users):
            held = _unpack(self.stored[user])
            if (held[_INCARNATION], held[_SEQ]) < floor and (
                    held[_SERVER] or held[_ON_PHONE]
                    or (held[_STATUS] and not held[_PERSISTENT])):
                retired.append(self._put(state, _silenced(held), held))
        return retired

    def _store(self, state: PublisherState, record: StatusRecord, incarnation: int,
               held: Sequence[Any] | None) -> StatusRecord:
        status = record.status
        persistent = record.persistent
        detail, until = record.detail, record.until
        if status is None:
            if held is not None and held[_PERSISTENT] and held[_STATUS]:
                status, persistent, detail, until = (held[_STATUS], True, held[_DETAIL],
                                                     held[_UNTIL])
            else:
                status = ""
        server = record.server
        if not server and not persistent:
            status, detail, until = "", "", None
        return self._put(state, (record.user, status, persistent, until, detail,
                                 record.on_phone and bool(server), server, state.name,
                                 incarnation, record.seq), held)

    def _put(self, state: PublisherState, fields: tuple[Any, ...],
             held: Sequence[Any] | None) -> StatusRecord:
        """Store a record of ``state``'s (``held``: the user's record before, if any)."""
        user = _intern(fields[0])
        self.stored[user] = _pack(fields)
        if held is not None and held[_PUBLISHER] != state.name:
            previous = self.publishers.get(held[_PUBLISHER])
            if previous is not None:
                previous.users.pop(user, None)
        state.users[user] = None
        return _record(fields)

    # -- mirrors ------------------------------------------------------------
    def merge(self, records: Iterable[StatusRecord]) -> list[StatusRecord]:
        """Records a mirror accepted: keep each that is newer than ours (same
        publisher: later ``(incarnation, seq)``; another publisher: the user is
        logged on there and not here, or later ``(incarnation, seq)``)."""
        taken = []
        for record in records:
            packed = self.stored.get(record.user)
            held = None if packed is None else _unpack(packed)
            if held is not None and not _newer(record, held):
                continue
            state = self.publisher(record.publisher)
            if state.incarnation < record.incarnation:
                state.incarnation = record.incarnation
            taken.append(self._put(state, (
                record.user, record.status or "", record.persistent, record.until,
                record.detail, record.on_phone, record.server, state.name,
                record.incarnation, record.seq), held))
        return taken

    def merge_publishers(self, publishers: dict[str, dict[str, Any]], now: float) -> list[str]:
        """A mirror's publisher table: online ones count as heard."""
        changed: list[str] = []
        for name, info in publishers.items():
            incarnation = info.get("incarnation", 0)
            if info.get("online") and isinstance(incarnation, int):
                changed.extend(self.heard(name, incarnation, now))
        return changed

    def publisher_summary(self) -> dict[str, dict[str, Any]]:
        return {p.name: {"incarnation": p.incarnation, "online": p.online}
                for p in self.publishers.values()}

    # -- the publisher timeout ----------------------------------------------
    def next_timer(self) -> float | None:
        deadlines = [p.last_heard + self.publisher_timeout
                     for p in self.publishers.values() if p.online]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[str]:
        """Publishers silent for ``publisher-timeout`` go offline; the users
        whose view changed."""
        changed: list[str] = []
        for state in self.publishers.values():
            if state.online and now >= state.last_heard + self.publisher_timeout:
                state.online = False
                changed.extend(sorted(state.users))
        return changed

    # -- watchers -----------------------------------------------------------
    def watch(
        self, watcher: int, users: Iterable[str]
    ) -> tuple[list[StatusRecord], dict[str, int]]:
        """Add watches; the watched users' views and the users refused."""
        records: list[StatusRecord] = []
        refused: dict[str, int] = {}
        watching = self._watching.setdefault(watcher, set())
        for user in users:
            if user == ALL_USERS:
                self._watch_all.add(watcher)
                records.extend(self.view(u) for u in self.stored)
                continue
            if not self.is_known(user):
                refused[user] = int(ErrorCode.UNKNOWN_USER)
                continue
            self._watchers.setdefault(user, set()).add(watcher)
            watching.add(user)
            records.append(self.view(user))
        return records, refused

    def unwatch(self, watcher: int, users: Iterable[str]) -> None:
        watching = self._watching.get(watcher, set())
        for user in users:
            if user == ALL_USERS:
                self._watch_all.discard(watcher)
                continue
            watching.discard(user)
            holders = self._watchers.get(user)
            if holders is not None:
                holders.discard(watcher)
                if not holders:
                    del self._watchers[user]

    def drop_watcher(self, watcher: int) -> None:
        self.unwatch(watcher, list(self._watching.pop(watcher, ())))
        self._watch_all.discard(watcher)

    @property
    def watch_count(self) -> int:
        return sum(len(w) for w in self._watching.values()) + len(self._watch_all)

    def watchers_of(self, users: Iterable[str]) -> dict[int, list[str]]:
        """Who is told of a change of ``users``: watcher -> its users."""
        fan: dict[int, list[str]] = {}
        every = self._watch_all
        for user in users:
            for watcher in self._watchers.get(user, ()):
                fan.setdefault(watcher, []).append(user)
            for watcher in every:
                fan.setdefault(watcher, []).append(user)
        return fan


def _silenced(held: Sequence[Any]) -> tuple[Any, ...]:
    """A record as it is when its user is logged off: not on the phone, only a
    persistent status left."""
    user, status, persistent, until, detail, _, _, publisher, incarnation, seq = held
    if persistent:
        return (user, status, True, until, detail, False, "", publisher, incarnation, seq)
    return (user, "", False, None, "", False, "", publisher, incarnation, seq)


def _newer(record: StatusRecord, held: Sequence[Any]) -> bool:
    """Whether a mirror's ``record`` replaces the ``held`` one (:meth:`StatusTable.merge`)."""
    order = (record.incarnation, record.seq)
    if record.publisher == held[_PUBLISHER]:
        return order > (held[_INCARNATION], held[_SEQ])
    if bool(record.server) != bool(held[_SERVER]):
        return bool(record.server)
    return order > (held[_INCARNATION], held[_SEQ])
