"""The collective's store of users: this site's own (home) users and the
spanning users replicated from the peer sites (docs/collective.md, "Store").

One small interface, two real implementations, as the other daemons' stores:

* :class:`SqliteStore` (aiosqlite, WAL), the default: ``sqlite:PATH``;
* :class:`PostgresStore` (asyncpg), when the site's data lives in a
  database server: ``postgresql://USER@HOST:PORT/DB`` (one database per
  site: a site's copy of a peer's user has the same key as the peer's own).

One row per user, keyed by (home site, user id); ``sync_gen`` is the
generation of the last full sync that carried the row, so the users a peer no
longer has are found when its sync ends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiosqlite
import asyncpg  # type: ignore[import-untyped]

from daemons.collective.messages import SpanningUser

__all__ = ["PostgresStore", "SqliteStore", "Store", "StoreError", "UserRow", "open_store",
           "redacted"]

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS collective_users (
    home_site INTEGER NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    extension TEXT NOT NULL, workgroups TEXT NOT NULL, spanning INTEGER NOT NULL,
    version INTEGER NOT NULL, sync_gen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (home_site, id));
CREATE INDEX IF NOT EXISTS collective_users_extension ON collective_users (extension);
CREATE TABLE IF NOT EXISTS collective_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS collective_users (
    home_site INTEGER NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    extension TEXT NOT NULL, workgroups TEXT NOT NULL, spanning BOOLEAN NOT NULL,
    version BIGINT NOT NULL, sync_gen BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (home_site, id));
CREATE INDEX IF NOT EXISTS collective_users_extension ON collective_users (extension);
CREATE TABLE IF NOT EXISTS collective_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
"""

_UPSERT_TAIL = ("ON CONFLICT (home_site, id) DO UPDATE SET name = excluded.name, "
                "extension = excluded.extension, workgroups = excluded.workgroups, "
                "spanning = excluded.spanning, version = excluded.version, "
                "sync_gen = excluded.sync_gen")

#: seconds a PostgreSQL connection or query may take
STORE_TIMEOUT = 5.0

#: (user, spanning): a home user that is in no spanning workgroup stays at home
UserRow = tuple[SpanningUser, bool]


class StoreError(Exception):
    """The store cannot be opened or written."""


class Store(Protocol):
    """What the collective needs from a store."""

    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def load(self) -> list[UserRow]: ...

    async def put(self, rows: Sequence[UserRow], *, sync_gen: int = 0) -> None:
        """Insert or replace users, in one transaction."""
        ...

    async def delete(self, home_site: int, ids: Sequence[str]) -> None: ...

    async def stale(self, home_site: int, sync_gen: int) -> list[str]:
        """Users of ``home_site`` the full sync ``sync_gen`` did not carry."""
        ...

    async def meta(self, key: str, default: int = 0) -> int: ...

    async def set_meta(self, key: str, value: int) -> None: ...


@contextlib.contextmanager
def _failures(errors: tuple[type[BaseException], ...], url: str) -> Iterator[None]:
    try:
        yield
    except errors as exc:
        raise StoreError(f"{redacted(url)}: {exc}") from exc


_SQLITE_ERRORS = (OSError, aiosqlite.Error)
_POSTGRES_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError)


def _user(home_site: Any, user_id: Any, name: Any, extension: Any, workgroups: Any,
          version: Any) -> SpanningUser:
    return SpanningUser(id=str(user_id), name=str(name), extension=str(extension),
                        workgroups=tuple(json.loads(workgroups)), home_site=int(home_site),
                        version=int(version))


class SqliteStore:
    """The embedded store: one SQLite file (WAL)."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        with _failures(_SQLITE_ERRORS, self.url):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path)
            self._db = db
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(_SQLITE_SCHEMA)
            await db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"{self.url}: not open")
        return self._db

    async def load(self) -> list[UserRow]:
        with _failures(_SQLITE_ERRORS, self.url):
            rows = await self.db.execute_fetchall(
                "SELECT home_site, id, name, extension, workgroups, version, spanning "
                "FROM collective_users")
        return [(_user(*r[:6]), bool(r[6])) for r in rows]

    async def put(self, rows: Sequence[UserRow], *, sync_gen: int = 0) -> None:
        with _failures(_SQLITE_ERRORS, self.url):
            await self.db.executemany(
                "INSERT INTO collective_users (home_site, id, name, extension, workgroups, "
                "spanning, version, sync_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) " + _UPSERT_TAIL,
                [(u.home_site, u.id, u.name, u.extension, json.dumps(list(u.workgroups)),
                  int(spanning), u.version, sync_gen) for u, spanning in rows])
            await self.db.commit()

    async def delete(self, home_site: int, ids: Sequence[str]) -> None:
        with _failures(_SQLITE_ERRORS, self.url):
            await self.db.executemany(
                "DELETE FROM collective_users WHERE home_site = ? AND id = ?",
                [(home_site, i) for i in ids])
            await self.db.commit()

    async def stale(self, home_site: int, sync_gen: int) -> list[str]:
        with _failures(_SQLITE_ERRORS, self.url):
            rows = await self.db.execute_fetchall(
                "SELECT id FROM collective_users WHERE home_site = ? AND sync_gen != ?",
                (home_site, sync_gen))
        return [str(r[0]) for r in rows]

    async def meta(self, key: str, default: int = 0) -> int:
        with _failures(_SQLITE_ERRORS, self.url):
            rows = list(await self.db.execute_fetchall(
                "SELECT value FROM collective_meta WHERE key = ?", (key,)))
        return int(rows[0][0]) if rows else default

    async def set_meta(self, key: str, value: int) -> None:
        with _failures(_SQLITE_ERRORS, self.url):
            await self.db.execute(
                "INSERT INTO collective_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
            await self.db.commit()


class PostgresStore:
    """The site's users in a PostgreSQL database (asyncpg pool)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2,
                                                   timeout=STORE_TIMEOUT,
                                                   command_timeout=STORE_TIMEOUT)
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(5170)")
                await conn.execute(_POSTGRES_SCHEMA)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError(f"cannot open {redacted(self.url)}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{redacted(self.url)}: not open")
        return self._pool

    async def load(self) -> list[UserRow]:
        with _failures(_POSTGRES_ERRORS, self.url):
            rows = await self.pool.fetch(
                "SELECT home_site, id, name, extension, workgroups, version, spanning "
                "FROM collective_users")
        return [(_user(*tuple(r)[:6]), bool(r["spanning"])) for r in rows]

    async def put(self, rows: Sequence[UserRow], *, sync_gen: int = 0) -> None:
        with _failures(_POSTGRES_ERRORS, self.url):
            async with self.pool.acquire(timeout=STORE_TIMEOUT) as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO collective_users (home_site, id, name, extension, "
                    "workgroups, spanning, version, sync_gen) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) " + _UPSERT_TAIL,
                    [(u.home_site, u.id, u.name, u.extension, json.dumps(list(u.workgroups)),
                      spanning, u.version, sync_gen) for u, spanning in rows])

    async def delete(self, home_site: int, ids: Sequence[str]) -> None:
        with _failures(_POSTGRES_ERRORS, self.url):
            await self.pool.execute(
                "DELETE FROM collective_users WHERE home_site = $1 AND id = ANY($2::text[])",
                home_site, list(ids))

    async def stale(self, home_site: int, sync_gen: int) -> list[str]:
        with _failures(_POSTGRES_ERRORS, self.url):
            rows = await self.pool.fetch(
                "SELECT id FROM collective_users WHERE home_site = $1 AND sync_gen != $2",
                home_site, sync_gen)
        return [str(r["id"]) for r in rows]

    async def meta(self, key: str, default: int = 0) -> int:
        with _failures(_POSTGRES_ERRORS, self.url):
            value = await self.pool.fetchval(
                "SELECT value FROM collective_meta WHERE key = $1", key)
        return int(value) if value is not None else default

    async def set_meta(self, key: str, value: int) -> None:
        with _failures(_POSTGRES_ERRORS, self.url):
            await self.pool.execute(
                "INSERT INTO collective_meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)


def redacted(url: str) -> str:
    """``url`` without its password, for logs and pages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def open_store(url: str) -> Store:
    """The store a URL names (not yet opened); ValueError for a URL of no known kind."""
    if url.startswith("sqlite:") and len(url) > len("sqlite:"):
        return SqliteStore(url, Path(url[len("sqlite:"):]))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"expected sqlite:PATH or postgresql://USER@HOST/DB, got {redacted(url)!r}")
