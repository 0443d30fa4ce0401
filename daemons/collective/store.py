"""The collective's store of users: this site's own (home) users and the
spanning users replicated from the peer sites (docs/collective.md, "Store").

Embedded SQLite (aiosqlite, WAL), like the other daemons' default stores:
``store = "sqlite:PATH"``. One row per user, keyed by (home site, user id);
``sync_gen`` is the generation of the last full sync that carried the row, so
the users a peer no longer has are found when its sync ends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from daemons.collective.messages import SpanningUser

__all__ = ["StoreError", "UserRow", "UserStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collective_users (
    home_site INTEGER NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    extension TEXT NOT NULL, workgroups TEXT NOT NULL, spanning INTEGER NOT NULL,
    version INTEGER NOT NULL, sync_gen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (home_site, id));
CREATE INDEX IF NOT EXISTS collective_users_extension ON collective_users (extension);
CREATE TABLE IF NOT EXISTS collective_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: (user, spanning): a home user that is in no spanning workgroup stays at home
UserRow = tuple[SpanningUser, bool]


class StoreError(Exception):
    """The store cannot be opened or written."""


@contextlib.contextmanager
def _failures(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, aiosqlite.Error) as exc:
        raise StoreError(f"{path}: {exc}") from exc


class UserStore:
    """The users of this site's directory, in one SQLite file."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url[len("sqlite:"):])
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        with _failures(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path)
            self._db = db
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(_SCHEMA)
            await db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: not open")
        return self._db

    async def load(self) -> list[UserRow]:
        with _failures(self.path):
            rows = await self.db.execute_fetchall(
                "SELECT home_site, id, name, extension, workgroups, spanning, version "
                "FROM collective_users")
        return [(SpanningUser(id=r[1], name=r[2], extension=r[3],
                              workgroups=tuple(json.loads(r[4])), home_site=int(r[0]),
                              version=int(r[6])), bool(r[5])) for r in rows]

    async def put(self, rows: Sequence[UserRow], *, sync_gen: int = 0) -> None:
        """Insert or replace users, in one transaction."""
        with _failures(self.path):
            await self.db.executemany(
                "INSERT INTO collective_users (home_site, id, name, extension, workgroups, "
                "spanning, version, sync_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (home_site, id) DO UPDATE SET name = excluded.name, "
                "extension = excluded.extension, workgroups = excluded.workgroups, "
                "spanning = excluded.spanning, version = excluded.version, "
                "sync_gen = excluded.sync_gen",
                [(u.home_site, u.id, u.name, u.extension, json.dumps(list(u.workgroups)),
                  int(spanning), u.version, sync_gen) for u, spanning in rows])
            await self.db.commit()

    async def delete(self, home_site: int, ids: Sequence[str]) -> None:
        with _failures(self.path):
            await self.db.executemany(
                "DELETE FROM collective_users WHERE home_site = ? AND id = ?",
                [(home_site, i) for i in ids])
            await self.db.commit()

    async def stale(self, home_site: int, sync_gen: int) -> list[str]:
        """Users of ``home_site`` the full sync ``sync_gen`` did not carry."""
        with _failures(self.path):
            rows = await self.db.execute_fetchall(
                "SELECT id FROM collective_users WHERE home_site = ? AND sync_gen != ?",
                (home_site, sync_gen))
        return [str(r[0]) for r in rows]

    async def meta(self, key: str, default: int = 0) -> int:
        with _failures(self.path):
            rows = list(await self.db.execute_fetchall(
                "SELECT value FROM collective_meta WHERE key = ?", (key,)))
        return int(rows[0][0]) if rows else default

    async def set_meta(self, key: str, value: int) -> None:
        with _failures(self.path):
            await self.db.execute(
                "INSERT INTO collective_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
            await self.db.commit()

    def describe(self) -> dict[str, Any]:
        return {"engine": "sqlite", "path": str(self.path)}
