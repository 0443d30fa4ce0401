"""The mailbox store: mailboxes, message metadata and MWI subscriptions, one
interface over two engines (aiosqlite embedded, asyncpg when several
feature-servers share the data). Tables are prefixed ``vm_``.

The audio itself lives in G.711 WAV files beside the database
(:mod:`daemons.feature_server.voicemail.messages`); a row names its file.
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

__all__ = [
    "Mailbox",
    "MailboxStore",
    "StoredMessage",
    "StoredSubscription",
    "open_store",
]


@dataclass(frozen=True, slots=True)
class Mailbox:
    number: str
    pin: str
    greeting: str | None  # file name of the user's greeting, None: the default one
    max_messages: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    mailbox: str
    caller: str
    created: float  # epoch seconds
    duration_ms: int
    codec: str  # PCMU / PCMA
    status: str  # new / saved
    file: str


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """An MWI subscription's dialog, enough to send NOTIFYs after a restart."""

    call_id: str
    mailbox: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: str  # Route URIs joined by newlines
    transport: str
    cseq: int
    expires_at: float  # epoch seconds


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS vm_mailboxes (
        number TEXT PRIMARY KEY, pin TEXT NOT NULL, greeting TEXT,
        max_messages INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS vm_messages (
        id TEXT PRIMARY KEY,
        mailbox TEXT NOT NULL REFERENCES vm_mailboxes(number) ON DELETE CASCADE,
        caller TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
        duration_ms INTEGER NOT NULL, codec TEXT NOT NULL, status TEXT NOT NULL,
        file TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS vm_messages_mailbox ON vm_messages(mailbox, created)",
    """CREATE TABLE IF NOT EXISTS vm_subscriptions (
        call_id TEXT PRIMARY KEY, mailbox TEXT NOT NULL, local_tag TEXT NOT NULL,
        remote_tag TEXT NOT NULL, local_uri TEXT NOT NULL, remote_uri TEXT NOT NULL,
        remote_target TEXT NOT NULL, route_set TEXT NOT NULL, transport TEXT NOT NULL,
        cseq INTEGER NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
)

_MSG_COLUMNS = "id, mailbox, caller, created, duration_ms, codec, status, file"
_SUB_COLUMNS = ("call_id, mailbox, local_tag, remote_tag, local_uri, remote_uri, "
                "remote_target, route_set, transport, cseq, expires_at")


class MailboxStore(abc.ABC):
    """The store's interface; the SQL is shared, the engines differ in placeholders."""

    url: str

    # -- engine --------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    async def _schema(self) -> None:
        for statement in _SCHEMA:
            await self._execute(statement)

    # -- mailboxes -----------------------------------------------------------
    async def create_mailbox(self, number: str, pin: str, max_messages: int = 100) -> bool:
        """False when it exists already."""
        if await self.get_mailbox(number) is not None:
            return False
        try:
            await self._execute(
                "INSERT INTO vm_mailboxes (number, pin, greeting, max_messages) "
                "VALUES (?, ?, NULL, ?)", (number, pin, max_messages))
        except (aiosqlite.IntegrityError, asyncpg.UniqueViolationError):
            return False
        return True

    async def get_mailbox(self, number: str) -> Mailbox | None:
        rows = await self._fetch(
            "SELECT number, pin, greeting, max_messages FROM vm_mailboxes WHERE number = ?",
            (number,))
        return Mailbox(*rows[0]) if rows else None

    async def list_mailboxes(self) -> list[Mailbox]:
        rows = await self._fetch(
            "SELECT number, pin, greeting, max_messages FROM vm_mailboxes ORDER BY number")
        return [Mailbox(*r) for r in rows]

    async def delete_mailbox(self, number: str) -> bool:
        await self._execute("DELETE FROM vm_messages WHERE mailbox = ?", (number,))
        await self._execute("DELETE FROM vm_subscriptions WHERE mailbox = ?", (number,))
        return await self._execute("DELETE FROM vm_mailboxes WHERE number = ?", (number,)) > 0

    async def set_pin(self, number: str, pin: str) -> bool:
        return await self._execute(
            "UPDATE vm_mailboxes SET pin = ? WHERE number = ?", (pin, number)) > 0

    async def set_greeting(self, number: str, file: str | None) -> bool:
        return await self._execute(
            "UPDATE vm_mailboxes SET greeting = ? WHERE number = ?", (file, number)) > 0

    # -- messages ------------------------------------------------------------
    async def add_message(self, message: StoredMessage) -> None:
        await self._execute(
            f"INSERT INTO vm_messages ({_MSG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message.id, message.mailbox, message.caller, message.created,
             message.duration_ms, message.codec, message.status, message.file))

    async def list_messages(self, mailbox: str) -> list[StoredMessage]:
        """New messages first, oldest first within each."""
        rows = await self._fetch(
            f"SELECT {_MSG_COLUMNS} FROM vm_messages WHERE mailbox = ? "
            "ORDER BY CASE status WHEN 'new' THEN 0 ELSE 1 END, created", (mailbox,))
        return [StoredMessage(*r) for r in rows]

    async def get_message(self, message_id: str) -> StoredMessage | None:
        rows = await self._fetch(
            f"SELECT {_MSG_COLUMNS} FROM vm_messages WHERE id = ?", (message_id,))
        return StoredMessage(*rows[0]) if rows else None

    async def delete_message(self, message_id: str) -> bool:
        return await self._execute("DELETE FROM vm_messages WHERE id = ?", (message_id,)) > 0

    async def save_message(self, message_id: str) -> bool:
        return await self._execute(
            "UPDATE vm_messages SET status = 'saved' WHERE id = ? AND status = 'new'",
            (message_id,)) > 0

    async def counts(self, mailbox: str) -> tuple[int, int]:
        """(new, saved) messages of a mailbox."""
        rows = await self._fetch(
            "SELECT status, COUNT(*) FROM vm_messages WHERE mailbox = ? GROUP BY status",
            (mailbox,))
        by = {status: int(n) for status, n in rows}
        return by.get("new", 0), by.get("saved", 0)

    async def message_files(self) -> set[str]:
        """Every file a message or a greeting row names (the rest are orphans)."""
        rows = await self._fetch("SELECT file FROM vm_messages")
        greetings = await self._fetch(
            "SELECT greeting FROM vm_mailboxes WHERE greeting IS NOT NULL")
        return {r[0] for r in rows} | {r[0] for r in greetings}

    # -- subscriptions -------------------------------------------------------
    async def save_subscription(self, sub: StoredSubscription) -> None:
        await self._execute("DELETE FROM vm_subscriptions WHERE call_id = ?", (sub.call_id,))
        await self._execute(
            f"INSERT INTO vm_subscriptions ({_SUB_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sub.call_id, sub.mailbox, sub.local_tag, sub.remote_tag, sub.local_uri,
             sub.remote_uri, sub.remote_target, sub.route_set, sub.transport, sub.cseq,
             sub.expires_at))

    async def update_subscription(self, call_id: str, cseq: int, expires_at: float) -> None:
        await self._execute(
            "UPDATE vm_subscriptions SET cseq = ?, expires_at = ? WHERE call_id = ?",
            (cseq, expires_at, call_id))

    async def delete_subscription(self, call_id: str) -> None:
        await self._execute("DELETE FROM vm_subscriptions WHERE call_id = ?", (call_id,))

    async def list_subscriptions(self, now: float | None = None) -> list[StoredSubscription]:
        """Subscriptions not expired at ``now`` (epoch; default: the wall clock)."""
        now = time.time() if now is None else now
        rows = await self._fetch(
            f"SELECT {_SUB_COLUMNS} FROM vm_subscriptions WHERE expires_at > ?", (now,))
        return [StoredSubscription(*r) for r in rows]


class SqliteStore(MailboxStore):
    """Embedded store (aiosqlite), WAL journal with synchronous=NORMAL: a
    committed row survives a crash of the process; a power cut may lose the
    last rows, never the file's consistency (a message whose row is lost is an
    orphan file, removed at the next start)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._schema()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        assert self._db is not None, "store not open"
        cursor = await self._db.execute(sql, tuple(args))
        await self._db.commit()
        return cursor.rowcount

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None, "store not open"
        async with self._db.execute(sql, tuple(args)) as cursor:
            return [tuple(r) for r in await cursor.fetchall()]


_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 1000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresStore(MailboxStore):
    """Shared store (asyncpg pool) for feature-servers on several hosts."""

    def __init__(self, dsn: str) -> None:
        self.url = dsn
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
        async with self._pool.acquire() as conn:
            # several feature-servers may create the schema at once
            await conn.execute("SELECT pg_advisory_lock(4242)")
            try:
                for statement in _SCHEMA:
                    await conn.execute(statement)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(4242)")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        assert self._pool is not None, "store not open"
        status = await self._pool.execute(_numbered(sql), *args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        assert self._pool is not None, "store not open"
        rows = await self._pool.fetch(_numbered(sql), *args)
        return [tuple(r) for r in rows]


def open_store(url: str) -> MailboxStore:
    """A store for ``sqlite:///abs/path.db`` or ``postgresql://...`` (not yet opened)."""
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url[len("sqlite://"):]))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"store URL {url!r} is neither sqlite:///PATH nor postgresql://...")
