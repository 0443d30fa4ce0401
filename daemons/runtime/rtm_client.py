"""The site side of RTM (docs/rtm.md, "Client library"; guide: "Multi-Site
RTM Client ... is middleware for messages between CIC and the RTM Server"):
a durable outbox, a durable handler journal, reconnection across a pair of
hubs.

    client = RtmClient(site=1, password="Boca-secret", hubs=[("10.0.0.5", 7500)],
                       state="/var/lib/sipcluster/boca/rtm-Multisite.db", handler=on_message)
    await client.start()
    seq = await client.send_event("2", "Multisite", "UserChanged",
                                  MessageBuilder().put_string("jdoe").elements)
    answer = await client.send_request("2", "Multisite", "WhereIs", elements, timeout_ms=5000)
    await client.close()

* **Outbox** — ``send_*`` returns once the message is committed to the state
  file (a group commit); it stays there until the hub's ``Accepted`` says the
  hub holds it durably, and is sent again in order after any reconnection.
  ``seq`` counts up by one per message, so the hub recognises a resend.
* **Handler journal** — every delivery is handled once: the handler runs, then
  the delivery is written to the journal (with the response a request
  handler returned, in the same transaction), then acknowledged. A delivery
  whose id is already in the journal is acknowledged again and not handled.
  A handler's own side effects outside the state file may run twice if the
  process dies between the handler and the commit; effects kept in the
  journal's transaction cannot.
* Requests: the hub assigns the correlation id; the response (or the hub's
  ``timeout``) comes back as a delivery carrying ``in_reply_to``, the
  request's ``seq``, and resolves :meth:`RtmClient.send_request`. A response
  that finds no waiter (the process restarted) goes to the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiosqlite
import msgpack

from daemons.runtime.driver import StreamDriver
from daemons.runtime.logs import get_logger
from daemons.runtime.service import cancel_and_wait
from protocols.rtm.elements import Element, MessageReader, encode_elements
from protocols.rtm.events import (
    AcceptedReceived,
    BusyReceived,
    DeliveryReceived,
    HandshakeRefused,
    PeerLost,
    PongReceived,
    ProtocolViolation,
    RejectedReceived,
    SessionClosed,
    SessionEvent,
    Welcomed,
)
from protocols.rtm.messages import PROTOCOL_VERSION, Deliver
from protocols.rtm.session import SiteSession
from protocols.tlib.framing import MAX_FRAME_SIZE

__all__ = [
    "Delivery",
    "Handler",
    "HandlerTable",
    "RequestRejected",
    "RequestTimeout",
    "RtmClient",
    "RtmRefused",
    "check_site",
]


#: what the outbox adds to a message's map (message name and seq)
_SEND_OVERHEAD = 32


class RequestTimeout(Exception):
    """The hub timed the request out before its response came."""


class RequestRejected(Exception):
    """The hub refused the request (``Rejected``: unknown destination ...)."""


class RtmRefused(ConnectionError):
    """The hub refused the session: ``code`` and ``reason`` as it said them."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """One message handed to a handler (guide: "Multi-Site Message Received":
    object id, event id, the message, and for a request its response
    correlation id and response destination id)."""

    id: int
    origin: int
    kind: str
    object: str
    event: str
    elements: tuple[Element, ...]
    correlation: int = 0
    reply_to: int = 0
    in_reply_to: int = 0
    at: float = 0.0

    def reader(self) -> MessageReader:
        return MessageReader(self.elements)

    def to_json(self) -> dict[str, Any]:
        def value(e: Element) -> Any:
            if e.kind == "note":
                note = e.value
                return {"note": note.name,  # type: ignore[union-attr]
                        "attributes": {k: [a.type, list(a.values)]
                                       for k, a in note.attributes.items()}}  # type: ignore[union-attr]
            return e.value
        return {"id": self.id, "origin": self.origin, "kind": self.kind,
                "object": self.object, "event": self.event,
                "elements": [[e.kind, value(e)] for e in self.elements],
                "correlation": self.correlation, "reply_to": self.reply_to,
                "in_reply_to": self.in_reply_to, "at": self.at}


#: A handler gets each delivery once; for a request it may return the elements
#: of the response (sent in the journal's transaction), None for no response.
Handler = Callable[[Delivery], "Awaitable[Sequence[Element] | None] | Sequence[Element] | None"]

class HandlerTable:
    """Message handlers by (object id, event id), the guide's "Multi-Site Message
    Received" initiator: a handler starts for the messages whose object and event
    ids match. Use it as an :class:`RtmClient` handler::

        handlers = HandlerTable()

        @handlers.on("Multisite", "WhereIs")
        def where_is(delivery: Delivery) -> Sequence[Element]:
            ...

    A message no handler matches goes to ``default`` (None: it is logged and
    counted in ``unhandled``, and journaled like any other, so it is not
    delivered again).
    """

    def __init__(self, default: Handler | None = None) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}
        self.default = default
        self.unhandled = 0
        self.log = get_logger("rtm_handlers")

    def on(self, object_: str, event: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._handlers[(object_, event)] = handler
            return handler
        return register

    def __call__(self, delivery: Delivery) -> Any:
        handler = self._handlers.get((delivery.object, delivery.event), self.default)
        if handler is None:
            self.unhandled += 1
            self.log.warning("rtm_no_handler", object_id=delivery.object, event_id=delivery.event,
                             origin=delivery.origin, id=delivery.id)
            return None
        return handler(delivery)


_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, frame BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS journal (
        id INTEGER PRIMARY KEY, origin INTEGER NOT NULL, kind TEXT NOT NULL,
        object TEXT NOT NULL, event TEXT NOT NULL, elements BLOB NOT NULL,
        correlation INTEGER NOT NULL, reply_to INTEGER NOT NULL, in_reply_to INTEGER NOT NULL,
        handled_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sent (
        seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, dest TEXT NOT NULL, object TEXT NOT NULL,
        event TEXT NOT NULL, elements BLOB NOT NULL, at REAL NOT NULL)""",
]


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RtmClient, session: SiteSession) -> None:
        self.client = client
        self.session = session
        self.driver: StreamDriver | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self.driver = StreamDriver(loop, self.session, cast(asyncio.WriteTransport, transport),
                                   on_timer=self._after, on_closed=self._closed)
        self.driver.flush()

    def _after(self, now: float) -> None:
        self.client._handle(self)

    def _closed(self) -> None:
        self.client._handle(self)
        if not self.lost.done():
            self.lost.set_result(self.session.close_reason or "closed")

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, asyncio.get_running_loop().time())
        self.client._handle(self)
        self.flush()

    def flush(self) -> None:
        if self.driver is not None:
            self.driver.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost()
        self.client._handle(self)
        if self.driver is not None:
            self.driver.close()
        if not self.lost.done():
            self.lost.set_result("connection-lost")


class RtmClient:
    """One site's link to the hub (or to whichever of a pair is active)."""

    def __init__(self, *, site: int, password: str, hubs: Sequence[tuple[str, int]],
                 state: str | Path, handler: Handler | None = None,
                 ssl: ssl_module.SSLContext | None = None, window: int = 1000,
                 keep_sent: bool = False, reconnect_min: float = 0.1,
                 reconnect_max: float = 2.0, connect_timeout: float = 5.0,
                 version: int = PROTOCOL_VERSION, max_frame_size: int = MAX_FRAME_SIZE,
                 on_handled: Callable[[list[Delivery]], None] | None = None) -> None:
        if not hubs:
            raise ValueError("give at least one hub address")
        self.site = site
        self._password = password
        self.hubs = list(hubs)
        self.state_path = Path(state)
        self.handler = handler
        self.ssl = ssl
        self.window = window
        self.keep_sent = keep_sent
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.version = version
        #: the hub's max-frame-size: a bigger message is refused by send_* (ValueError)
        self.max_frame_size = max_frame_size
        self.on_handled = on_handled
        self.log = get_logger("rtm_client", site=site)
        self._db: aiosqlite.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proto: _Protocol | None = None
        #: rows not yet accepted by the hub: (seq, Send map), seqs consecutive
        self._outbox: deque[tuple[int, dict[str, Any]]] = deque()
        self._next_seq = 1
        self._sent_upto = 0  # highest seq written on the current session
        self._accepted = 0
        self._accepted_dirty = False
        self._paused_until = 0.0
        self._resume: asyncio.TimerHandle | None = None
        self._to_write: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._incoming: deque[Deliver] = deque()
        self._rewrite: list[tuple[int, bytes]] | None = None
        self._welcome_last: int | None = None
        self._ready = False  # the outbox is lined up with this session's Welcome
        self._journal_max = 0
        self._waiters: dict[int, asyncio.Future[Delivery]] = {}
        self._flushed: list[asyncio.Future[None]] = []
        self._wake_writer = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.connected = asyncio.Event()
        self.hub_name = ""
        self.hub_address: tuple[str, int] | None = None
        self.refusal: RtmRefused | None = None
        self.rejected: list[tuple[int, str, str]] = []
        self.duplicates = 0
        self.handled = 0
        self.handler_errors = 0
        self.sessions = 0
        self.rtt: float | None = None

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Open the state file and start connecting (returns at once)."""
        self._loop = asyncio.get_running_loop()
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.state_path, isolation_level=None)
        self._db = db
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            await db.execute(statement)
        for seq, frame in await db.execute_fetchall("SELECT seq, frame FROM outbox ORDER BY seq"):
            self._outbox.append((int(seq), msgpack.unpackb(frame, raw=False)))
        meta = {k: int(v) for k, v in await db.execute_fetchall("SELECT key, value FROM meta")}
        self._next_seq = max(meta.get("next_seq", 1),
                             (self._outbox[-1][0] + 1) if self._outbox else 1)
        self._accepted = (self._outbox[0][0] - 1) if self._outbox else self._next_seq - 1
        (top,), = await db.execute_fetchall("SELECT coalesce(max(id), 0) FROM journal")
        self._journal_max = int(top)
        self._tasks = [asyncio.create_task(self._writer()),
                       asyncio.create_task(self._connector())]
        self.log.info("rtm_client_started", outbox=len(self._outbox), next_seq=self._next_seq,
                      journal_max=self._journal_max, state=str(self.state_path))

    async def close(self) -> None:
        self._closing = True
        if self._proto is not None:
            self._proto.session.close("closed")
            self._proto.flush()
        # the connector's reconnection loop may swallow one cancellation (see
        # cancel_and_wait): cancelled again until it ends
        await cancel_and_wait(*self._tasks)
        if self._resume is not None:
            self._resume.cancel()
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._db.execute("DELETE FROM outbox WHERE seq <= ?", (self._accepted,))
            await self._db.close()
            self._db = None

    # -- sending ----------------------------------------------------------------------
    async def send_event(self, to: str | int, object_: str, event: str,
                         elements: Sequence[Element] = ()) -> int:
        """Queue an event for site ``to`` (or ``"*"``: every other site); the seq,
        once the message is in the outbox."""
        return await self._submit({"kind": "event", "to": str(to), "object": object_,
                                   "event": event, "elements": encode_elements(elements)})

    async def submit_request(self, to: str | int, object_: str, event: str,
                             elements: Sequence[Element] = (),
                             timeout_ms: int = 0) -> tuple[int, asyncio.Future[Delivery]]:
        """Queue a request; its seq and a future for the response delivery
        (:class:`RequestTimeout` when the hub timed it out)."""
        assert self._loop is not None
        future: asyncio.Future[Delivery] = self._loop.create_future()
        seq = await self._submit({"kind": "request", "to": str(to), "object": object_,
                                  "event": event, "elements": encode_elements(elements),
                                  "timeout_ms": int(timeout_ms)}, waiter=future)
        return seq, future

    async def send_request(self, to: str | int, object_: str, event: str,
                           elements: Sequence[Element] = (), timeout_ms: int = 0) -> Delivery:
        """Send a request and wait for its response (guide: "Multi-Site Send
        Request"; ``timeout_ms`` 0 waits forever, across hub restarts)."""
        _, future = await self.submit_request(to, object_, event, elements, timeout_ms)
        return await future

    async def send_response(self, request: Delivery, elements: Sequence[Element] = ()) -> int:
        """Answer ``request`` outside its handler (guide: "Multi-Site Send Response")."""
        return await self._submit(self._response_map(request, elements))

    @staticmethod
    def _response_map(request: Delivery, elements: Sequence[Element]) -> dict[str, Any]:
        return {"kind": "response", "to": str(request.reply_to), "object": request.object,
                "event": request.event, "elements": encode_elements(elements),
                "correlation": request.correlation, "reply_to": request.reply_to}

    async def _submit(self, frame: dict[str, Any],
                      waiter: asyncio.Future[Delivery] | None = None) -> int:
        assert self._loop is not None
        if self._closing:
            raise ConnectionError("client closed")
        size = len(msgpack.packb(frame, use_bin_type=True)) + _SEND_OVERHEAD
        if size > self.max_frame_size:
            raise ValueError(f"message of {size} bytes, the largest frame is "
                             f"{self.max_frame_size}")
        future: asyncio.Future[int] = self._loop.create_future()
        self._to_write.append((frame, future))
        self._wake_writer.set()
        seq = await future
        if waiter is not None:
            self._waiters[seq] = waiter
        return seq

    async def flushed(self) -> None:
        """Return when the hub holds every message sent so far."""
        assert self._loop is not None
        if not self._outbox and not self._to_write:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._flushed.append(future)
        await future

    @property
    def outbox_size(self) -> int:
        return len(self._outbox) + len(self._to_write)

    # -- the state file (one writer, group commit) ------------------------------------
    async def _writer(self) -> None:
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer.clear()
                while (self._to_write or self._incoming or self._accepted_dirty
                       or self._welcome_last is not None):
                    if self._welcome_last is not None:
                        await self._apply_welcome()
                    if self._to_write or self._accepted_dirty:
                        await self._write_outbox()
                    if self._incoming:
                        await self._handle_incoming()
        except (sqlite3.Error, OSError) as exc:
            # nothing is acknowledged that is not written: stop the link, keep the state
            self.log.error("rtm_state_write_failed", state=str(self.state_path), error=str(exc))
            self._closing = True
            if self._proto is not None:
                self._proto.session.close("state-write-failed")
                self._proto.flush()
            raise

    async def _write_outbox(self) -> None:
        db = self._db
        assert db is not None
        batch, self._to_write = self._to_write, []
        rows = []
        sent = []
        now = time.time()
        seq = self._next_seq
        for frame, _ in batch:
            frame["message"] = "Send"
            frame["seq"] = seq
            rows.append((seq, msgpack.packb(frame, use_bin_type=True)))
            if self.keep_sent:
                sent.append((seq, frame["kind"], frame["to"], frame["object"], frame["event"],
                             msgpack.packb(frame["elements"]), now))
            seq += 1
        accepted_dirty, self._accepted_dirty = self._accepted_dirty, False
        await db.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                await db.executemany("INSERT INTO outbox (seq, frame) VALUES (?, ?)", rows)
                await db.execute(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value", (seq,))
            if sent:
                await db.executemany("INSERT INTO sent VALUES (?, ?, ?, ?, ?, ?, ?)", sent)
            if accepted_dirty:
                await db.execute("DELETE FROM outbox WHERE seq <= ?", (self._accepted,))
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            for _, future in batch:
                if not future.done():
                    future.set_exception(ConnectionError("outbox write failed"))
            raise
        self._next_seq = seq
        for (frame, future), (row_seq, _) in zip(batch, rows, strict=True):
            self._outbox.append((row_seq, frame))
            if not future.done():
                future.set_result(row_seq)
        self._pump()

    async def _handle_incoming(self) -> None:
        db = self._db
        assert db is not None
        batch = list(self._incoming)
        self._incoming.clear()
        journal: list[tuple[Any, ...]] = []
        responses: list[dict[str, Any]] = []
        handled: list[Delivery] = []
        resolved: list[tuple[asyncio.Future[Delivery], Delivery]] = []
        top = 0
        now = time.time()
        for d in batch:
            top = max(top, d.id)
            if d.id <= self._journal_max:
                self.duplicates += 1
                continue
            delivery = Delivery(d.id, d.origin, d.kind, d.object, d.event, d.elements,
                                d.correlation, d.reply_to, d.in_reply_to, d.at)
            waiter = self._waiters.pop(d.in_reply_to, None) \
                if d.kind in ("response", "timeout") else None
            if waiter is not None:
                resolved.append((waiter, delivery))
            elif self.handler is not None:
                try:
                    result = self.handler(delivery)
                    if inspect.isawaitable(result):
                        result = await result
                except Exception as exc:  # a handler's bug must not stop the site
                    self.handler_errors += 1
                    self.log.error("rtm_handler_failed", id=d.id, origin=d.origin,
                                   object_id=d.object, event_id=d.event, error=repr(exc))
                    result = None
                if d.kind == "request" and result is not None:
                    responses.append(self._response_map(delivery, list(result)))
            journal.append((d.id, d.origin, d.kind, d.object, d.event,
                            msgpack.packb(encode_elements(d.elements)), d.correlation,
                            d.reply_to, d.in_reply_to, now))
            handled.append(delivery)
            self._journal_max = d.id
        if journal:
            seq = self._next_seq
            out = []
            for frame in responses:
                frame["message"] = "Send"
                frame["seq"] = seq
                out.append((seq, msgpack.packb(frame, use_bin_type=True)))
                seq += 1
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.executemany(
                    "INSERT OR IGNORE INTO journal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", journal)
                if out:
                    await db.executemany("INSERT INTO outbox (seq, frame) VALUES (?, ?)", out)
                    await db.execute(
                        "INSERT INTO meta (key, value) VALUES ('next_seq', ?) ON CONFLICT (key) "
                        "DO UPDATE SET value = excluded.value", (seq,))
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                raise
            self._next_seq = seq
            for frame, (row_seq, _) in zip(responses, out, strict=True):
                self._outbox.append((row_seq, frame))
            self.handled += len(handled)
        for waiter, delivery in resolved:
            if waiter.done():
                continue
            if delivery.kind == "timeout":
                waiter.set_exception(RequestTimeout(
                    f"request {delivery.in_reply_to} to site {delivery.origin} timed out"))
            else:
                waiter.set_result(delivery)
        if handled and self.on_handled is not None:
            self.on_handled(handled)
        proto = self._proto
        if top and proto is not None and proto.session.open:
            proto.session.ack(top, asyncio.get_running_loop().time())
            proto.flush()
        self._pump()

    # -- the connection ---------------------------------------------------------------
    async def _connector(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.reconnect_min
        index = 0
        while not self._closing:
            host, port = self.hubs[index % len(self.hubs)]
            session = SiteSession(site=self.site, password=self._password, now=loop.time(),
                                  version=self.version)
            proto = _Protocol(self, session)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await loop.create_connection(
                        lambda p=proto: p, host, port, ssl=self.ssl,
                        server_hostname=host if self.ssl else None)
            except (OSError, TimeoutError) as exc:
                self.log.debug("rtm_connect_failed", hub=f"{host}:{port}", error=str(exc))
                index += 1
                await asyncio.sleep(delay)
                delay = min(self.reconnect_max, delay * 2)
                continue
            self._proto = proto
            reason = await proto.lost
            self._proto = None
            self._ready = False
            self._welcome_last = None
            was_open = self.connected.is_set()
            self.connected.clear()
            self._sent_upto = self._accepted
            if was_open:
                delay = self.reconnect_min
                self.log.warning("rtm_hub_lost", hub=f"{host}:{port}", reason=reason)
            else:
                index += 1
                delay = min(self.reconnect_max, delay * 2)
            await asyncio.sleep(delay)

    def _handle(self, proto: _Protocol) -> None:
        session = proto.session
        while (event := session.next_event()) is not None:
            handler = _DISPATCH.get(type(event))
            if handler is not None:
                handler(self, proto, event)

    def _on_welcome(self, proto: _Protocol, event: Welcomed) -> None:
        welcome = event.welcome
        self.hub_name = welcome.hub
        peer = proto.driver.transport.get_extra_info("peername") if proto.driver else None
        self.hub_address = (peer[0], peer[1]) if peer else None
        self.sessions += 1
        self.refusal = None
        # the outbox is lined up with the hub's last_seq by the writer, the one
        # place that numbers messages; nothing is sent before
        self._welcome_last = welcome.last_seq
        self._wake_writer.set()

    async def _apply_welcome(self) -> None:
        last = self._welcome_last
        assert last is not None
        self._welcome_last = None
        proto = self._proto
        if last >= self._next_seq:
            self._renumber(last - self._accepted)
            await self._rewrite_outbox()
        self._on_accepted_seq(last)
        if proto is None or proto is not self._proto or not proto.session.open:
            return  # that session is gone; the next Welcome lines the outbox up again
        self._sent_upto = self._accepted
        self._ready = True
        self.connected.set()
        self.log.info("rtm_connected", hub=self.hub_name, last_seq=last,
                      outbox=len(self._outbox))
        self._pump()

    def _renumber(self, delta: int) -> None:
        """The hub holds seqs this outbox never gave (its state file was
        replaced): move every unsent message above them."""
        self.log.warning("rtm_outbox_renumbered", delta=delta, next_seq=self._next_seq)
        self._next_seq += delta
        renumbered: deque[tuple[int, dict[str, Any]]] = deque()
        for seq, frame in self._outbox:
            frame["seq"] = seq + delta
            renumbered.append((seq + delta, frame))
        self._outbox = renumbered
        self._accepted += delta
        self._rewrite = [(seq, msgpack.packb(frame, use_bin_type=True))
                         for seq, frame in renumbered]

    async def _rewrite_outbox(self) -> None:
        db = self._db
        assert db is not None and self._rewrite is not None
        rows, self._rewrite = self._rewrite, None
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("DELETE FROM outbox")
            await db.executemany("INSERT INTO outbox (seq, frame) VALUES (?, ?)", rows)
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value", (self._next_seq,))
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            raise

    def _on_accepted(self, proto: _Protocol, event: AcceptedReceived) -> None:
        self._on_accepted_seq(event.seq)
        self._pump()

    def _on_accepted_seq(self, seq: int) -> None:
        if seq <= self._accepted:
            return
        self._accepted = seq
        outbox = self._outbox
        while outbox and outbox[0][0] <= seq:
            outbox.popleft()
        self._accepted_dirty = True
        self._wake_writer.set()
        if not outbox and not self._to_write:
            for future in self._flushed:
                if not future.done():
                    future.set_result(None)
            self._flushed.clear()

    def _on_rejected(self, proto: _Protocol, event: RejectedReceived) -> None:
        self.rejected.append((event.seq, event.code, event.reason))
        self.log.warning("rtm_message_rejected", seq=event.seq, code=event.code,
                         reason=event.reason)
        waiter = self._waiters.pop(event.seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(RequestRejected(f"{event.code}: {event.reason}"))

    def _on_busy(self, proto: _Protocol, event: BusyReceived) -> None:
        loop = asyncio.get_running_loop()
        self._sent_upto = max(self._accepted, event.seq - 1)
        self._paused_until = loop.time() + event.retry_ms / 1000
        if self._resume is not None:
            self._resume.cancel()
        self._resume = loop.call_at(self._paused_until, self._pump)

    def _on_delivery(self, proto: _Protocol, event: DeliveryReceived) -> None:
        self._incoming.append(event.deliver)
        self._wake_writer.set()

    def _on_refused(self, proto: _Protocol, event: HandshakeRefused) -> None:
        self.refusal = RtmRefused(event.code, event.reason)
        self.log.warning("rtm_refused", code=event.code, reason=event.reason)

    def _on_violation(self, proto: _Protocol, event: ProtocolViolation) -> None:
        self.log.warning("rtm_protocol_error", code=event.code, reason=event.reason)

    def _on_pong(self, proto: _Protocol, event: PongReceived) -> None:
        self.rtt = event.rtt

    def _on_lost(self, proto: _Protocol, event: PeerLost) -> None:
        self.log.warning("rtm_keepalive_timeout")

    def _on_closed(self, proto: _Protocol, event: SessionClosed) -> None:
        return

    def _pump(self) -> None:
        proto = self._proto
        if proto is None or not self._ready or not proto.session.open or not self._outbox:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._paused_until:
            return
        first = self._outbox[0][0]
        limit = self._accepted + self.window
        start = self._sent_upto + 1
        if start > limit:
            return
        index = start - first
        session = proto.session
        sent = False
        outbox = self._outbox
        while 0 <= index < len(outbox) and outbox[index][0] <= limit:
            session.send_map(outbox[index][1], now)
            self._sent_upto = outbox[index][0]
            index += 1
            sent = True
        if sent:
            proto.flush()


_DISPATCH: dict[type[SessionEvent], Callable[[RtmClient, _Protocol, Any], None]] = {
    Welcomed: RtmClient._on_welcome,
    AcceptedReceived: RtmClient._on_accepted,
    RejectedReceived: RtmClient._on_rejected,
    BusyReceived: RtmClient._on_busy,
    DeliveryReceived: RtmClient._on_delivery,
    HandshakeRefused: RtmClient._on_refused,
    ProtocolViolation: RtmClient._on_violation,
    PongReceived: RtmClient._on_pong,
    PeerLost: RtmClient._on_lost,
    SessionClosed: RtmClient._on_closed,
}


async def check_site(host: str, port: int, site: int, password: str, *,
                     ssl: ssl_module.SSLContext | None = None,
                     timeout: float = 5.0) -> dict[str, Any]:
    """The guide's "Check Site": log on to the hub as ``site`` with its password
    (without taking the site's session) and return the hub's report: is the site
    connected, how much waits for it. Raises :class:`RtmRefused` (wrong id or
    password, version), OSError / TimeoutError (hub unreachable)."""
    loop = asyncio.get_running_loop()
    session = SiteSession(site=site, password=password, now=loop.time(), mode="check")
    client = _CheckClient(session)
    async with asyncio.timeout(timeout):
        transport, _ = await loop.create_connection(
            lambda: client, host, port, ssl=ssl, server_hostname=host if ssl else None)
        try:
            return await client.result
        finally:
            transport.close()


class _CheckClient(asyncio.Protocol):
    def __init__(self, session: SiteSession) -> None:
        self.session = session
        self.result: asyncio.Future[dict[str, Any]] = \
            asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.session.data_to_send())

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, asyncio.get_running_loop().time())
        out = self.session.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)
        while (event := self.session.next_event()) is not None:
            if self.result.done():
                continue
            if isinstance(event, Welcomed):
                self.result.set_result({"site": event.welcome.site, "hub": event.welcome.hub,
                                        **dict(event.welcome.status or {})})
            elif isinstance(event, HandshakeRefused):
                self.result.set_exception(RtmRefused(event.code, event.reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_exception(ConnectionError("hub closed the connection"))

