"""The hub's durable state behind one interface, two engines (docs/rtm-server.md,
"Store"): embedded SQLite (WAL, one file, the single-host default) and
PostgreSQL (two hubs on two hosts share it; the active one holds a session
advisory lock on the connection it writes with, so a hub that lost the lock
cannot write).

What is kept:

* ``messages``: one row per (message, destination) not yet handled by the
  destination: the per-destination queues, ordered by ``id`` (the delivery id);
* ``dead_letters``: rows taken out of a queue (``queue-full``,
  ``ttl-expired``, ``request-timeout``, ``unknown-destination``) with the reason;
* ``origins``: per site, the highest ``Send.seq`` held (what makes a resent
  message a duplicate);
* ``pending``: requests waiting for their response (correlation id,
  requester, responder, deadline as Unix time or none);
* ``meta``: the last delivery id and correlation id handed out (never reused,
  even once the queues are empty).

Writes come in :class:`Batch` objects, each one transaction (the hub's group
commit). Only the active hub writes, from one connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

__all__ = [
    "Batch",
    "HubState",
    "PendingRequest",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoredMessage",
    "open_store",
]

#: Columns of a queued message, in table order.
MESSAGE_COLUMNS = ("id", "dest", "origin", "kind", "object", "event", "elements",
                   "correlation", "reply_to", "in_reply_to", "at", "expires", "size")


class StoreError(Exception):
    """The store cannot be used (connection lost, lock lost, disk full ...)."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One queued delivery. ``elements`` is the msgpack body of the element list,
    kept as received."""

    id: int
    dest: int
    origin: int
    kind: str
    object: str
    event: str
    elements: bytes
    correlation: int
    reply_to: int
    in_reply_to: int
    at: float
    expires: float | None
    size: int

    def row(self) -> tuple[Any, ...]:
        return (self.id, self.dest, self.origin, self.kind, self.object, self.event,
                self.elements, self.correlation, self.reply_to, self.in_reply_to, self.at,
                self.expires, self.size)


@dataclass(frozen=True, slots=True)
class PendingRequest:
    correlation: int
    requester: int
    responder: int
    request_seq: int
    deadline: float | None
    delivery_id: int


@dataclass
class Batch:
    """Writes that go in one transaction."""

    messages: list[StoredMessage] = field(default_factory=list)
    #: destination -> every delivery id up to this one is handled
    acks: dict[int, int] = field(default_factory=dict)
    #: origin site -> highest Send.seq held
    origins: dict[int, int] = field(default_factory=dict)
    dead: list[tuple[StoredMessage, str]] = field(default_factory=list)
    #: (delivery id, reason): move a queued row to the dead letters if still queued
    kill: list[tuple[int, str]] = field(default_factory=list)
    pending_add: list[PendingRequest] = field(default_factory=list)
    pending_done: list[int] = field(default_factory=list)
    last_id: int | None = None
    last_correlation: int | None = None
    at: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.messages or self.acks or self.origins or self.dead or self.kill
                    or self.pending_add or self.pending_done or self.last_id is not None
                    or self.last_correlation is not None)


@dataclass
class HubState:
    """What the active hub loads when it starts serving."""

    last_id: int
    last_correlation: int
    origins: dict[int, int]
    #: destination -> (queued messages, bytes)
    queues: dict[int, tuple[int, int]]
    pending: list[PendingRequest]
    dead_letters: int


class Store(Protocol):
    """The interface both engines implement."""

    engine: str

    async def open(self) -> None: ...

    async def acquire(self) -> bool:
        """Try to become the writer (the active hub); True when this store may write."""
        ...

    async def load(self) -> HubState: ...

    async def commit(self, batch: Batch) -> list[tuple[int, int, int, str]]:
        """Write ``batch`` in one transaction; the rows ``kill`` moved, as
        (id, dest, size, reason)."""
        ...

    async def fetch(self, dest: int, after: int, limit: int) -> list[StoredMessage]: ...

    async def expire(self, now: float, skip: Iterable[int],
                     limit: int) -> list[tuple[int, int, int, str]]:
        """Move messages whose TTL passed to the dead letters (destinations in
        ``skip`` are left alone); the rows moved, as (id, dest, size, reason)."""
        ...

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]: ...

    async def ping(self) -> None:
        """Raise :class:`StoreError` when the store is gone (and with it the lock)."""
        ...

    async def close(self) -> None: ...


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS messages (
        id BIGINT PRIMARY KEY, dest INTEGER NOT NULL, origin INTEGER NOT NULL,
        kind TEXT NOT NULL, object TEXT NOT NULL, event TEXT NOT NULL, elements {blob} NOT NULL,
        correlation BIGINT NOT NULL, reply_to INTEGER NOT NULL, in_reply_to BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION, size INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS messages_dest ON messages (dest, id)",
    "CREATE INDEX IF NOT EXISTS messages_expires ON messages (expires)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id BIGINT PRIMARY KEY, dest INTEGER NOT NULL, origin INTEGER NOT NULL,
        kind TEXT NOT NULL, object TEXT NOT NULL, event TEXT NOT NULL, elements {blob} NOT NULL,
        correlation BIGINT NOT NULL, reply_to INTEGER NOT NULL, in_reply_to BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION, size INTEGER NOT NULL,
        reason TEXT NOT NULL, dead_at DOUBLE PRECISION NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS origins (site INTEGER PRIMARY KEY, last_seq BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS pending (
        correlation BIGINT PRIMARY KEY, requester INTEGER NOT NULL, responder INTEGER NOT NULL,
        request_seq BIGINT NOT NULL, deadline DOUBLE PRECISION, delivery_id BIGINT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
]

_COLS = ", ".join(MESSAGE_COLUMNS)


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5],
                         bytes(row[6]), int(row[7]), int(row[8]), int(row[9]), float(row[10]),
                         None if row[11] is None else float(row[11]), int(row[12]))


class SqliteStore:
    """Embedded SQLite in WAL mode (``synchronous``: ``normal`` survives a
    crash of the process, ``full`` also a loss of power). A lock file next to
    the database keeps a second hub off the same file."""

    engine = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "normal") -> None:
        self.path = Path(path)
        if synchronous not in ("normal", "full"):
            raise ValueError(f"store-sync must be normal or full, got {synchronous!r}")
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        for statement in _SCHEMA:
            await self._db.execute(statement.format(blob="BLOB"))

    async def acquire(self) -> bool:
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    async def load(self) -> HubState:
        db = self.db
        meta = {str(k): int(v) for k, v in
                await db.execute_fetchall("SELECT key, value FROM meta")}
        origins = {int(s): int(q) for s, q in
                   await db.execute_fetchall("SELECT site, last_seq FROM origins")}
        queues = {int(d): (int(c), int(b or 0)) for d, c, b in await db.execute_fetchall(
            "SELECT dest, count(*), sum(size) FROM messages GROUP BY dest")}
        pending = [PendingRequest(int(r[0]), int(r[1]), int(r[2]), int(r[3]),
                                  None if r[4] is None else float(r[4]), int(r[5]))
                   for r in await db.execute_fetchall(
                       "SELECT correlation, requester, responder, request_seq, deadline, "
                       "delivery_id FROM pending")]
        (dead,), = await db.execute_fetchall("SELECT count(*) FROM dead_letters")
        return HubState(int(meta.get("last_id", 0)), int(meta.get("last_correlation", 0)),
                        origins, queues, pending, int(dead))

    async def commit(self, batch: Batch) -> list[tuple[int, int, int, str]]:
        db = self.db
        moved: list[tuple[int, int, int, str]] = []
        try:
            await db.execute("BEGIN IMMEDIATE")
            if batch.messages:
                await db.executemany(
                    f"INSERT INTO messages ({_COLS}) VALUES ({', '.join('?' * 13)})",
                    [m.row() for m in batch.messages])
            if batch.acks:
                await db.executemany("DELETE FROM messages WHERE dest = ? AND id <= ?",
                                     list(batch.acks.items()))
            if batch.origins:
                await db.executemany(
                    "INSERT INTO origins (site, last_seq) VALUES (?, ?) ON CONFLICT (site) "
                    "DO UPDATE SET last_seq = excluded.last_seq", list(batch.origins.items()))
            if batch.dead:
                await db.executemany(
                    f"INSERT OR IGNORE INTO dead_letters ({_COLS}, reason, dead_at) "
                    f"VALUES ({', '.join('?' * 15)})",
                    [(*m.row(), reason, batch.at) for m, reason in batch.dead])
            for delivery_id, reason in batch.kill:
                rows = list(await db.execute_fetchall(
                    "SELECT dest, size FROM messages WHERE id = ?", (delivery_id,)))
                if not rows:
                    continue
                await db.execute(
                    f"INSERT OR IGNORE INTO dead_letters ({_COLS}, reason, dead_at) "
                    f"SELECT {_COLS}, ?, ? FROM messages WHERE id = ?",
                    (reason, batch.at, delivery_id))
                await db.execute("DELETE FROM messages WHERE id = ?", (delivery_id,))
                moved.append((delivery_id, int(rows[0][0]), int(rows[0][1]), reason))
            if batch.pending_add:
                await db.executemany(
                    "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?)",
                    [(p.correlation, p.requester, p.responder, p.request_seq, p.deadline,
                      p.delivery_id) for p in batch.pending_add])
            if batch.pending_done:
                await db.executemany("DELETE FROM pending WHERE correlation = ?",
                                     [(c,) for c in batch.pending_done])
            meta = [(k, v) for k, v in (("last_id", batch.last_id),
                                        ("last_correlation", batch.last_correlation))
                    if v is not None]
            if meta:
                await db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value", meta)
            await db.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            raise StoreError(f"sqlite commit failed: {exc}") from exc
        return moved

    async def fetch(self, dest: int, after: int, limit: int) -> list[StoredMessage]:
        rows = await self.db.execute_fetchall(
            f"SELECT {_COLS} FROM messages WHERE dest = ? AND id > ? ORDER BY id LIMIT ?",
            (dest, after, limit))
        return [_message(r) for r in rows]

    async def expire(self, now: float, skip: Iterable[int],
                     limit: int) -> list[tuple[int, int, int, str]]:
        skipped = set(skip)
        rows = await self.db.execute_fetchall(
            "SELECT id, dest, size FROM messages WHERE expires IS NOT NULL AND expires < ? "
            "ORDER BY id LIMIT ?", (now, limit))
        victims = [(int(i), int(d), int(s)) for i, d, s in rows if int(d) not in skipped]
        if not victims:
            return []
        batch = Batch(kill=[(i, "ttl-expired") for i, _, _ in victims], at=now)
        return await self.commit(batch)

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        rows = await self.db.execute_fetchall(
            "SELECT id, dest, origin, kind, object, event, reason, dead_at FROM dead_letters "
            "ORDER BY id DESC LIMIT ?", (limit,))
        keys = ("id", "dest", "origin", "kind", "object", "event", "reason", "dead_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    async def ping(self) -> None:
        try:
            await self.db.execute_fetchall("SELECT 1")
        except Exception as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


#: The advisory lock key the active hub holds ("rtm" in ASCII).
ADVISORY_KEY = 0x72746D


class PostgresStore:
    """PostgreSQL through asyncpg: one connection, which holds the session
    advisory lock of the active hub (:data:`ADVISORY_KEY`) and does every write,
    so a hub whose connection is gone has lost both."""

    engine = "postgresql"

    def __init__(self, dsn: str, *, synchronous: str = "normal") -> None:
        self.dsn = dsn
        self.synchronous = synchronous
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            raise StoreError("postgresql connection lost")
        return self._conn

    async def open(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        try:
            self._conn = await asyncpg.connect(self.dsn, timeout=5)
            for statement in _SCHEMA:
                await self._conn.execute(statement.format(blob="BYTEA"))
            # normal: a commit returns before the WAL is flushed (like SQLite's NORMAL)
            await self._conn.execute(
                "SET synchronous_commit = " + ("on" if self.synchronous == "full" else "off"))
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            await self.close()
            raise StoreError(f"postgresql: {exc}") from exc

    async def acquire(self) -> bool:
        try:
            got = await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_KEY)
        except Exception as exc:
            raise StoreError(f"postgresql: {exc}") from exc
        return bool(got)

    async def load(self) -> HubState:
        c = self.conn
        meta = {r[0]: r[1] for r in await c.fetch("SELECT key, value FROM meta")}
        origins = {int(r[0]): int(r[1]) for r in await c.fetch(
            "SELECT site, last_seq FROM origins")}
        queues = {int(r[0]): (int(r[1]), int(r[2] or 0)) for r in await c.fetch(
            "SELECT dest, count(*), sum(size) FROM messages GROUP BY dest")}
        pending = [PendingRequest(int(r[0]), int(r[1]), int(r[2]), int(r[3]),
                                  None if r[4] is None else float(r[4]), int(r[5]))
                   for r in await c.fetch(
                       "SELECT correlation, requester, responder, request_seq, deadline, "
                       "delivery_id FROM pending")]
        dead = await c.fetchval("SELECT count(*) FROM dead_letters")
        return HubState(int(meta.get("last_id", 0)), int(meta.get("last_correlation", 0)),
                        origins, queues, pending, int(dead))

    async def commit(self, batch: Batch) -> list[tuple[int, int, int, str]]:
        moved: list[tuple[int, int, int, str]] = []
        c = self.conn
        try:
            async with c.transaction():
                if batch.messages:
                    await c.executemany(
                        f"INSERT INTO messages ({_COLS}) VALUES "
                        f"({', '.join(f'${i}' for i in range(1, 14))})",
                        [m.row() for m in batch.messages])
                if batch.acks:
                    await c.executemany("DELETE FROM messages WHERE dest = $1 AND id <= $2",
                                        list(batch.acks.items()))
                if batch.origins:
                    await c.executemany(
                        "INSERT INTO origins (site, last_seq) VALUES ($1, $2) "
                        "ON CONFLICT (site) DO UPDATE SET last_seq = excluded.last_seq",
                        list(batch.origins.items()))
                if batch.dead:
                    await c.executemany(
                        f"INSERT INTO dead_letters ({_COLS}, reason, dead_at) VALUES "
                        f"({', '.join(f'${i}' for i in range(1, 16))}) "
                        "ON CONFLICT (id) DO NOTHING",
                        [(*m.row(), reason, batch.at) for m, reason in batch.dead])
                for delivery_id, reason in batch.kill:
                    row = await c.fetchrow(
                        "DELETE FROM messages WHERE id = $1 RETURNING " + _COLS, delivery_id)
                    if row is None:
                        continue
                    await c.execute(
                        f"INSERT INTO dead_letters ({_COLS}, reason, dead_at) VALUES "
                        f"({', '.join(f'${i}' for i in range(1, 16))}) "
                        "ON CONFLICT (id) DO NOTHING", *row, reason, batch.at)
                    moved.append((delivery_id, int(row[1]), int(row[12]), reason))
                if batch.pending_add:
                    await c.executemany(
                        "INSERT INTO pending VALUES ($1, $2, $3, $4, $5, $6) "
                        "ON CONFLICT (correlation) DO NOTHING",
                        [(p.correlation, p.requester, p.responder, p.request_seq, p.deadline,
                          p.delivery_id) for p in batch.pending_add])
                if batch.pending_done:
                    await c.executemany("DELETE FROM pending WHERE correlation = $1",
                                        [(x,) for x in batch.pending_done])
                meta = [(k, v) for k, v in (("last_id", batch.last_id),
                                            ("last_correlation", batch.last_correlation))
                        if v is not None]
                if meta:
                    await c.executemany(
                        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) "
                        "DO UPDATE SET value = excluded.value", meta)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"postgresql commit failed: {exc}") from exc
        return moved

    async def fetch(self, dest: int, after: int, limit: int) -> list[StoredMessage]:
        try:
            rows = await self.conn.fetch(
                f"SELECT {_COLS} FROM messages WHERE dest = $1 AND id > $2 ORDER BY id "
                "LIMIT $3", dest, after, limit)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"postgresql: {exc}") from exc
        return [_message(r) for r in rows]

    async def expire(self, now: float, skip: Iterable[int],
                     limit: int) -> list[tuple[int, int, int, str]]:
        skipped = set(skip)
        try:
            rows = await self.conn.fetch(
                "SELECT id, dest, size FROM messages WHERE expires IS NOT NULL "
                "AND expires < $1 ORDER BY id LIMIT $2", now, limit)
        except Exception as exc:
            raise StoreError(f"postgresql: {exc}") from exc
        victims = [int(r[0]) for r in rows if int(r[1]) not in skipped]
        if not victims:
            return []
        return await self.commit(Batch(kill=[(i, "ttl-expired") for i in victims], at=now))

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        rows = await self.conn.fetch(
            "SELECT id, dest, origin, kind, object, event, reason, dead_at FROM dead_letters "
            "ORDER BY id DESC LIMIT $1", limit)
        return [dict(r) for r in rows]

    async def ping(self) -> None:
        try:
            await self.conn.fetchval("SELECT 1")
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"postgresql: {exc}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None


def open_store(spec: str, *, synchronous: str = "normal") -> Store:
    """The store an option names: ``sqlite:PATH`` (or a bare path) or a
    ``postgresql://`` DSN."""
    if spec.startswith(("postgresql://", "postgres://")):
        return PostgresStore(spec, synchronous=synchronous)
    path = spec[len("sqlite:"):] if spec.startswith("sqlite:") else spec
    if not path:
        raise ValueError("store: expected sqlite:PATH or postgresql://...")
    return SqliteStore(path, synchronous=synchronous)
