"""The director store: routing strategies and agent skills changed through the
HTTP API, kept across a restart (docs/director.md, "Director store"). One
interface, two engines: embedded SQLite (``sqlite:PATH``, the single-host
default, in the daemon's state directory) and PostgreSQL
(``store = "postgresql://..."``, when the directors of several hosts share
one database).

The store holds the *changes* made over the API on top of the cluster file:
one row per virtual queue or AgentID, its table as JSON (the same keys as the
cluster file's), or no table for a strategy deleted over the API. At start
the director lays them over the file's strategies and skills.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg  # type: ignore[import-untyped]

__all__ = ["PostgresStore", "SqliteStore", "Store", "StoredChanges", "default_store",
           "open_store"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS director_change (
    kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT, changed DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, name))"""
_UPSERT = ("INSERT INTO director_change (kind, name, body, changed) VALUES ({p}) "
           "ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, "
           "changed = excluded.changed")
STRATEGY, SKILLS = "strategy", "skills"


def default_store(name: str) -> str:
    """``sqlite:$SIPCLUSTER_STATE_DIR/NAME/director.db`` (the lab), else under
    ``/var/lib/sipcluster/NAME`` (the systemd unit's StateDirectory)."""
    base = Path(os.environ.get("SIPCLUSTER_STATE_DIR") or "/var/lib/sipcluster")
    return f"sqlite:{base / name / 'director.db'}"


@dataclass(frozen=True, slots=True)
class StoredChanges:
    """What the store holds: strategy tables by queue (None: deleted) and
    skill levels by AgentID."""

    strategies: Mapping[str, Mapping[str, Any] | None]
    skills: Mapping[str, Mapping[str, int]]


class Store(Protocol):
    """What the director needs of a store."""

    engine: str

    async def open(self) -> None: ...

    async def load(self) -> StoredChanges: ...

    async def put(self, kind: str, name: str, body: Mapping[str, Any] | None,
                  now: float) -> None:
        """Keep one change (``body`` None: a strategy deleted)."""

    async def close(self) -> None: ...


def _changes(rows: list[tuple[str, str, str | None]]) -> StoredChanges:
    strategies: dict[str, Mapping[str, Any] | None] = {}
    skills: dict[str, Mapping[str, int]] = {}
    for kind, name, body in rows:
        value = json.loads(body) if body is not None else None
        if kind == STRATEGY:
            strategies[name] = value
        elif kind == SKILLS and isinstance(value, dict):
            skills[name] = value
    return StoredChanges(strategies, skills)


def _body(body: Mapping[str, Any] | None) -> str | None:
    return json.dumps(dict(body), sort_keys=True) if body is not None else None


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
        await self._db.execute(_SCHEMA)
        await self._db.commit()

    async def load(self) -> StoredChanges:
        assert self._db is not None
        async with self._db.execute("SELECT kind, name, body FROM director_change "
                                    "ORDER BY changed") as cursor:
            return _changes([(row[0], row[1], row[2]) for row in await cursor.fetchall()])

    async def put(self, kind: str, name: str, body: Mapping[str, Any] | None,
                  now: float) -> None:
        assert self._db is not None
        await self._db.execute(_UPSERT.format(p="?, ?, ?, ?"), (kind, name, _body(body), now))
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None


class PostgresStore:
    """PostgreSQL (asyncpg), shared by the directors of several hosts."""

    engine = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None

    async def open(self) -> None:
        self._conn = await asyncpg.connect(self.dsn)
        await self._conn.execute(_SCHEMA)

    async def load(self) -> StoredChanges:
        rows = await self._conn.fetch("SELECT kind, name, body FROM director_change "
                                      "ORDER BY changed")
        return _changes([(r["kind"], r["name"], r["body"]) for r in rows])

    async def put(self, kind: str, name: str, body: Mapping[str, Any] | None,
                  now: float) -> None:
        await self._conn.execute(_UPSERT.format(p="$1, $2, $3, $4"), kind, name, _body(body),
                                 now)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def open_store(spec: str) -> Store | None:
    """``sqlite:PATH``, ``postgresql://...`` (``postgres://`` too) or ``none``."""
    if spec == "none":
        return None
    if spec.startswith(("postgresql://", "postgres://")):
        return PostgresStore(spec)
    if spec.startswith("sqlite:"):
        return SqliteStore(spec[len("sqlite:"):])
    raise ValueError(f"store {spec!r}: expected sqlite:PATH, postgresql://... or none")
