"""The collective's messages on the hub: object id ``Collective``, one event id
per message, typed elements (docs/collective.md, "Messages"; guide: "User
information propagates automatically", "Company-wide directory, extensions,
and agent status indicators").

Sans-I/O: users and statuses to elements and back. A site sends only its own
home users; the receiver takes the home site from the delivery's origin, so a
site cannot change another site's users.

* ``UserChanged`` (event to ``*``): note ``users`` with ``id``, ``name``,
  ``extension``, ``workgroups``, ``version``;
* ``UserDeleted`` (event to ``*``): note ``users`` with ``id``, ``version``;
* ``SyncRequest`` (event to ``*``): integer, the requester's sync generation;
* ``SyncUsers`` (event to one site or ``*``): integer generation, note ``users``;
* ``SyncDone`` (event to one site or ``*``): integer generation, integer users sent;
* ``UserStatus`` (event to ``*``): note ``status`` with ``home``, ``id``,
  ``status``, ``detail``, ``on_phone``, ``logged_on``, ``server``, ``at``;
* ``SetStatus`` (request to the home site): integer home, string id, string
  status, string detail, integer persistent; the answer: integer ok, string reason.
* ``SetAgentState`` (request to the site an agent is logged on at through a
  t-controller): integer home, string id, string status, string detail; the
  answer: integer ok, string reason.

Workgroups travel as one string per user, names separated by ``\\n``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocols.rtm.elements import Element, MessageBuilder, MessageReader, Note, NoteAttribute

__all__ = [
    "OBJECT",
    "SpanningUser",
    "UserStatus",
    "decode_deleted",
    "decode_statuses",
    "decode_users",
    "encode_deleted",
    "encode_statuses",
    "encode_users",
]

OBJECT = "Collective"
_SEP = "\n"


@dataclass(frozen=True)
class SpanningUser:
    """A user of the collective: defined at ``home_site``; ``version`` counts
    its changes there."""

    id: str
    name: str
    extension: str
    workgroups: tuple[str, ...]
    home_site: int
    version: int = 1

    def to_map(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "extension": self.extension,
                "workgroups": list(self.workgroups), "home_site": self.home_site,
                "version": self.version}


@dataclass(frozen=True)
class UserStatus:
    """A user's status as the site it is logged on at (or its home) reports it."""

    home_site: int
    id: str
    status: str
    detail: str
    on_phone: bool
    logged_on: bool
    server: str
    site: int
    at: float

    def to_map(self) -> dict[str, object]:
        return {"status": self.status, "detail": self.detail, "on_phone": self.on_phone,
                "logged_on": self.logged_on, "server": self.server,
                "logged_on_site": self.site if self.logged_on else None, "at": self.at}


def _s(values: Iterable[str]) -> NoteAttribute:
    return NoteAttribute("s", tuple(values))


def _i(values: Iterable[int]) -> NoteAttribute:
    return NoteAttribute("i", tuple(values))


def encode_users(users: Sequence[SpanningUser], *, generation: int | None = None
                 ) -> tuple[Element, ...]:
    """``UserChanged`` (or ``SyncUsers`` with ``generation``) elements."""
    note = Note("users", {
        "id": _s(u.id for u in users),
        "name": _s(u.name for u in users),
        "extension": _s(u.extension for u in users),
        "workgroups": _s(_SEP.join(u.workgroups) for u in users),
        "version": _i(u.version for u in users),
    })
    builder = MessageBuilder()
    if generation is not None:
        builder.put_integer(generation)
    return builder.put_note(note).elements


def decode_users(elements: Sequence[Element], home_site: int, *, with_generation: bool = False
                 ) -> tuple[int, list[SpanningUser]]:
    """The users of a ``UserChanged`` / ``SyncUsers``; ElementTypeError when the
    elements are not of that form."""
    reader = MessageReader(elements)
    generation = reader.get_integer() if with_generation else 0
    note = reader.get_note()
    ids, names, extensions = note.strings("id"), note.strings("name"), note.strings("extension")
    workgroups, versions = note.strings("workgroups"), note.integers("version")
    if not len(ids) == len(names) == len(extensions) == len(workgroups) == len(versions):
        raise ValueError("note attributes of different lengths")
    users = [SpanningUser(id=i, name=n, extension=e,
                          workgroups=tuple(w for w in wg.split(_SEP) if w),
                          home_site=home_site, version=v)
             for i, n, e, wg, v in zip(ids, names, extensions, workgroups, versions, strict=True)]
    return generation, users


def encode_deleted(users: Sequence[tuple[str, int]]) -> tuple[Element, ...]:
    """``UserDeleted``: (id, version) of each user gone from the collective."""
    note = Note("users", {"id": _s(u for u, _ in users), "version": _i(v for _, v in users)})
    return MessageBuilder().put_note(note).elements


def decode_deleted(elements: Sequence[Element]) -> list[tuple[str, int]]:
    note = MessageReader(elements).get_note()
    ids, versions = note.strings("id"), note.integers("version")
    if len(ids) != len(versions):
        raise ValueError("note attributes of different lengths")
    return list(zip(ids, versions, strict=True))


def encode_statuses(statuses: Sequence[UserStatus]) -> tuple[Element, ...]:
    note = Note("status", {
        "home": _i(s.home_site for s in statuses),
        "id": _s(s.id for s in statuses),
        "status": _s(s.status for s in statuses),
        "detail": _s(s.detail for s in statuses),
        "on_phone": _i(int(s.on_phone) for s in statuses),
        "logged_on": _i(int(s.logged_on) for s in statuses),
        "server": _s(s.server for s in statuses),
        "at": NoteAttribute("t", tuple(s.at for s in statuses)),
    })
    return MessageBuilder().put_note(note).elements


def decode_statuses(elements: Sequence[Element], site: int) -> list[UserStatus]:
    note = MessageReader(elements).get_note()
    columns = (note.integers("home"), note.strings("id"), note.strings("status"),
               note.strings("detail"), note.integers("on_phone"), note.integers("logged_on"),
               note.strings("server"), note.datetimes("at"))
    if len({len(c) for c in columns}) != 1:
        raise ValueError("note attributes of different lengths")
    return [UserStatus(home_site=h, id=i, status=st, detail=d, on_phone=bool(p),
                       logged_on=bool(lo), server=sv, site=site, at=at)
            for h, i, st, d, p, lo, sv, at in zip(*columns, strict=True)]
