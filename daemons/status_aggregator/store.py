"""Persistent statuses across a restart of the aggregator (docs/status-aggregator.md,
"Store"; guide: "Persistent values are expected to survive across a server
restart"), behind one interface, two engines: embedded SQLite (the
single-host default) and PostgreSQL (``store = "postgresql://..."``, when the
aggregators of a group share one database).

Only persistent statuses are kept, one row per user (status key, detail,
until, the publisher with its incarnation and sequence number). A row is
replaced only by a newer ``(incarnation, seq)``, so mirrors writing the same
database converge. At start the aggregator loads them as records of users
logged off; the publishers' snapshots then bring the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg  # type: ignore[import-untyped]

from protocols.status.messages import StatusRecord

__all__ = ["PostgresStore", "SqliteStore", "Store", "open_store", "state_dir"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS persistent_status (
    user_id TEXT PRIMARY KEY, status TEXT NOT NULL, detail TEXT NOT NULL,
    until DOUBLE PRECISION, publisher TEXT NOT NULL, incarnation BIGINT NOT NULL,
    seq BIGINT NOT NULL)"""

_COLUMNS = "user_id, status, detail, until, publisher, incarnation, seq"

#: an upsert that keeps the newer record ({p}: the engine's placeholders)
_UPSERT = (
    f"INSERT INTO persistent_status ({_COLUMNS}) VALUES ({{p}}) "
    "ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, "
    "detail = excluded.detail, until = excluded.until, publisher = excluded.publisher, "
    "incarnation = excluded.incarnation, seq = excluded.seq "
    "WHERE (excluded.incarnation, excluded.seq) >= "
    "(persistent_status.incarnation, persistent_status.seq)"
)


def state_dir(name: str) -> Path:
    """``$SIPCLUSTER_STATE_DIR/NAME`` (the lab), else ``/var/lib/sipcluster/NAME``
    (the systemd unit's StateDirectory)."""
    return Path(os.environ.get("SIPCLUSTER_STATE_DIR") or "/var/lib/sipcluster") / name


class Store(Protocol):
    """What the aggregator needs of a store."""

    engine: str

    async def open(self) -> None: ...

    async def load(self) -> list[StatusRecord]:
        """Every persistent status, as a record of a user logged off."""

    async def save(self, kept: Sequence[StatusRecord], dropped: Sequence[str]) -> None:
        """Keep the persistent statuses of ``kept``; forget the users of ``dropped``."""

    async def close(self) -> None: ...


def _row(record: StatusRecord) -> tuple[Any, ...]:
    return (record.user, record.status or "", record.detail, record.until, record.publisher,
            record.incarnation, record.seq)


def _record(row: Sequence[Any]) -> StatusRecord:
    return StatusRecord(user=row[0], status=row[1], persistent=True,
                        until=None if row[3] is None else float(row[3]), detail=row[2],
                        publisher=row[4], incarnation=int(row[5]), seq=int(row[6]))


class SqliteStore:
    """Embedded SQLite, WAL."""

    engine = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute(_SCHEMA)
        await self._db.commit()

    async def load(self) -> list[StatusRecord]:
        assert self._db is not None
        async with self._db.execute(f"SELECT {_COLUMNS} FROM persistent_status") as cursor:
            return [_record(row) for row in await cursor.fetchall()]

    async def save(self, kept: Sequence[StatusRecord], dropped: Sequence[str]) -> None:
        assert self._db is not None
        await self._db.executemany(_UPSERT.format(p=", ".join("?" * 7)),
                                   [_row(r) for r in kept])
        await self._db.executemany("DELETE FROM persistent_status WHERE user_id = ?",
                                   [(u,) for u in dropped])
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None


class PostgresStore:
    """PostgreSQL (asyncpg), shared by the aggregators of a group."""

    engine = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None

    async def open(self) -> None:
        self._conn = await asyncpg.connect(self.dsn)
        await self._conn.execute(_SCHEMA)

    async def load(self) -> list[StatusRecord]:
        rows = await self._conn.fetch(f"SELECT {_COLUMNS} FROM persistent_status")
        return [_record(tuple(row)) for row in rows]

    async def save(self, kept: Sequence[StatusRecord], dropped: Sequence[str]) -> None:
        async with self._conn.transaction():
            if kept:
                await self._conn.executemany(
                    _UPSERT.format(p=", ".join(f"${i}" for i in range(1, 8))),
                    [_row(r) for r in kept])
            if dropped:
                await self._conn.execute(
                    "DELETE FROM persistent_status WHERE user_id = ANY($1::text[])",
                    list(dropped))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def open_store(spec: str) -> Store:
    """``sqlite:PATH`` or ``postgresql://...`` (``postgres://`` too)."""
    if spec.startswith(("postgresql://", "postgres://")):
        return PostgresStore(spec)
    if spec.startswith("sqlite:"):
        return SqliteStore(spec[len("sqlite:"):])
    raise ValueError(f"store {spec!r}: expected sqlite:PATH or postgresql://...")


def split(records: Iterable[StatusRecord]) -> tuple[list[StatusRecord], list[str]]:
    """Records to keep (a persistent status) and users to forget."""
    kept: list[StatusRecord] = []
    dropped: list[str] = []
    for record in records:
        if record.persistent and record.status:
            kept.append(record)
        else:
            dropped.append(record.user)
    return kept, dropped
