"""The feature-server's store of provisioned objects (docs/feature-server.md, "Store").

One small interface, two real implementations:

* :class:`SqliteStore` (aiosqlite), the default: one file under the daemon's
  state directory, ``sqlite:///ABS/PATH.db``;
* :class:`PostgresStore` (asyncpg), when several feature-servers share the
  data: ``postgresql://USER@HOST:PORT/DB``.

Every object is a JSON document under ``(kind, name)``: ``partition``,
``calling-profile``, ``assignment`` (name ``KIND/NAME``), ``user``, ``dn``.
Each write raises a generation number in the same transaction, so a
feature-server sharing the store with others sees that something changed
with one cheap query. The voicemail tables (prefix ``vm_``) live in the same
database but are not this module's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiosqlite
import asyncpg

__all__ = ["KINDS", "PostgresStore", "SqliteStore", "Store", "StoreError", "open_store",
           "redacted"]

KINDS = ("partition", "calling-profile", "assignment", "user", "dn")
#: seconds a PostgreSQL connection or query may take
STORE_TIMEOUT = 5.0

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS fs_objects (
    kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS fs_generation (id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL);
INSERT OR IGNORE INTO fs_generation (id, value) VALUES (1, 0);
"""

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS fs_objects (
    kind TEXT NOT NULL, name TEXT NOT NULL, body JSONB NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS fs_generation (id INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL);
INSERT INTO fs_generation (id, value) VALUES (1, 0) ON CONFLICT DO NOTHING;
"""


class StoreError(Exception):
    """The store cannot be opened or used (bad URL, unreachable server)."""


class Store(Protocol):
    """What the feature-server needs from a store."""

    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def all(self) -> dict[str, dict[str, Any]]:
        """Every object, by kind then name."""
        ...

    async def get(self, kind: str, name: str) -> Any | None: ...

    async def put(self, kind: str, name: str, body: Any) -> None: ...

    async def delete(self, kind: str, name: str) -> bool: ...

    async def generation(self) -> int: ...


_SQLITE_ERRORS = (OSError, aiosqlite.Error)
_POSTGRES_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError)


@contextlib.contextmanager
def _failures(errors: tuple[type[BaseException], ...], url: str) -> Iterator[None]:
    """A driver's error as :class:`StoreError`: the daemon answers 503 and keeps the
    plan in force instead of failing the request (or the task) with a traceback."""
    try:
        yield
    except errors as exc:
        raise StoreError(f"{redacted(url)}: {exc}") from exc


def _empty() -> dict[str, dict[str, Any]]:
    return {kind: {} for kind in KINDS}


class SqliteStore:
    """The embedded store: one SQLite file (WAL, so readers do not wait on a writer)."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.executescript(_SQLITE_SCHEMA)
            await self._db.commit()
        except (OSError, aiosqlite.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def all(self) -> dict[str, dict[str, Any]]:
        out = _empty()
        with _failures(_SQLITE_ERRORS, self.url):
            async with self.db.execute("SELECT kind, name, body FROM fs_objects") as cur:
                async for kind, name, body in cur:
                    out.setdefault(kind, {})[name] = json.loads(body)
        return out

    async def get(self, kind: str, name: str) -> Any | None:
        with _failures(_SQLITE_ERRORS, self.url):
            async with self.db.execute(
                    "SELECT body FROM fs_objects WHERE kind = ? AND name = ?",
                    (kind, name)) as cur:
                row = await cur.fetchone()
        return json.loads(row[0]) if row is not None else None

    async def put(self, kind: str, name: str, body: Any) -> None:
        with _failures(_SQLITE_ERRORS, self.url):
            await self.db.execute(
                "INSERT INTO fs_objects (kind, name, body) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body",
                (kind, name, json.dumps(body)))
            await self.db.execute("UPDATE fs_generation SET value = value + 1 WHERE id = 1")
            await self.db.commit()

    async def delete(self, kind: str, name: str) -> bool:
        with _failures(_SQLITE_ERRORS, self.url):
            cur = await self.db.execute("DELETE FROM fs_objects WHERE kind = ? AND name = ?",
                                        (kind, name))
            found = cur.rowcount > 0
            if found:
                await self.db.execute("UPDATE fs_generation SET value = value + 1 WHERE id = 1")
            await self.db.commit()
        return found

    async def generation(self) -> int:
        with _failures(_SQLITE_ERRORS, self.url):
            async with self.db.execute("SELECT value FROM fs_generation WHERE id = 1") as cur:
                row = await cur.fetchone()
        return int(row[0]) if row is not None else 0


class PostgresStore:
    """The shared store: PostgreSQL through an asyncpg pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            # a query, or a connection to a server that went away, fails within
            # STORE_TIMEOUT seconds instead of holding the request that waits on it
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4,
                                                   timeout=STORE_TIMEOUT,
                                                   command_timeout=STORE_TIMEOUT)
            async with self._pool.acquire() as conn:
                # two feature-servers starting together create the tables once
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(5160)")
                    await conn.execute(_POSTGRES_SCHEMA)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError(f"cannot open {redacted(self.url)}: {exc}") from exc

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def all(self) -> dict[str, dict[str, Any]]:
        out = _empty()
        with _failures(_POSTGRES_ERRORS, self.url):
            rows = await self.pool.fetch("SELECT kind, name, body::text AS body FROM fs_objects")
        for row in rows:
            out.setdefault(row["kind"], {})[row["name"]] = json.loads(row["body"])
        return out

    async def get(self, kind: str, name: str) -> Any | None:
        with _failures(_POSTGRES_ERRORS, self.url):
            body = await self.pool.fetchval(
                "SELECT body::text FROM fs_objects WHERE kind = $1 AND name = $2", kind, name)
        return json.loads(body) if body is not None else None

    async def put(self, kind: str, name: str, body: Any) -> None:
        with _failures(_POSTGRES_ERRORS, self.url):
            async with self.pool.acquire(timeout=STORE_TIMEOUT) as conn, \
                    conn.transaction():
                await conn.execute(
                    "INSERT INTO fs_objects (kind, name, body) VALUES ($1, $2, $3::jsonb) "
                    "ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body",
                    kind, name, json.dumps(body))
                await conn.execute("UPDATE fs_generation SET value = value + 1 WHERE id = 1")

    async def delete(self, kind: str, name: str) -> bool:
        with _failures(_POSTGRES_ERRORS, self.url):
            async with self.pool.acquire(timeout=STORE_TIMEOUT) as conn, \
                    conn.transaction():
                status = await conn.execute(
                    "DELETE FROM fs_objects WHERE kind = $1 AND name = $2", kind, name)
                found = bool(status != "DELETE 0")
                if found:
                    await conn.execute(
                        "UPDATE fs_generation SET value = value + 1 WHERE id = 1")
        return found

    async def generation(self) -> int:
        with _failures(_POSTGRES_ERRORS, self.url):
            value = await self.pool.fetchval("SELECT value FROM fs_generation WHERE id = 1")
        return int(value or 0)


def redacted(url: str) -> str:
    """``url`` without its password, for logs and pages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def open_store(url: str) -> Store:
    """The store a URL names (not yet opened); ValueError for a URL of no known kind."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path
        if not path.startswith("/") or parts.netloc:
            raise ValueError(f"store {url!r}: expected sqlite:///ABSOLUTE/PATH.db")
        return SqliteStore(url, Path(path))
    if parts.scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ValueError(f"store {url!r}: expected sqlite:///PATH or postgresql://...")
