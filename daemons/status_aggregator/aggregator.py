"""The aggregator's policy: who may connect in which role, what each message
does to the status table, who is told (docs/status-aggregator.md; guide:
"How Status Aggregator works").

Passive by design: it never maps status types and never asks a publisher
for anything; only publishers publish, and only for users they hold. Every
connection, client or mirror, is mutual TLS: the certificate's name must be
an application of the cluster file whose kind may take the role the
``Hello`` asks for (or a name listed for that role in the options).

Bad input (a malformed or oversized frame, an unknown message, a consumer
that publishes, a user outside the directory, a user another publisher
holds) gets the protocol's ``Error``, one log line and a count in
``sipcluster_status_refused_total{reason}``; the aggregator keeps serving.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.runtime.certs import TlsAcceptor, authorize
from daemons.runtime.driver import StreamDriver, TimerSlot
from daemons.runtime.management import Metrics
from daemons.status_aggregator.directory import FileDirectory, LdapDirectory, OpenDirectory
from daemons.status_aggregator.options import AggregatorOptions
from protocols.status.errors import ErrorCode, StatusProtocolError
from protocols.status.messages import (
    Hello,
    KeepAlive,
    Message,
    MirrorSync,
    MirrorUpdate,
    Publish,
    Query,
    Result,
    Role,
    Search,
    SearchResult,
    Snapshot,
    StatusRecord,
    Unwatch,
    Watch,
    Welcome,
)
from protocols.status.session import (
    Closed,
    HelloReceived,
    MessageReceived,
    Opened,
    ProtocolViolation,
    StatusSession,
)
from protocols.status.table import StatusTable

#: most records in one Event or MirrorSync frame
RECORDS_PER_FRAME = 2000
READ_SIZE = 256 * 1024


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


@dataclass(eq=False)
class Connection:
    """One accepted or dialled connection and what it is for."""

    id: int
    session: StatusSession
    driver: StreamDriver
    peer: str
    name: str | None
    outbound: bool = False
    role: Role | None = None
    incarnation: int = 0
    #: mirror: the peer's MirrorSync parts received so far
    sync_records: list[StatusRecord] = field(default_factory=list)


class Aggregator:
    """Connections, the status table and the fan-out of changes."""

    def __init__(
        self,
        config: ClusterConfig,
        name: str,
        options: AggregatorOptions,
        metrics: Metrics,
        log: Any,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.options = options
        self.log = log
        self.directory: FileDirectory | LdapDirectory | OpenDirectory
        if options.ldap is not None:
            self.directory = LdapDirectory(options.ldap)
        elif options.directory is not None:
            self.directory = FileDirectory(options.directory)
        else:
            self.directory = OpenDirectory(lambda: self.table.raw.keys())
        known = (self.directory.__contains__
                 if not isinstance(self.directory, OpenDirectory) else None)
        self.table = StatusTable(publisher_timeout=options.publisher_timeout, known_user=known)
        self.kinds_of = {a.name: a.kind.value for a in config.applications.values()}
        self.allowed = {
            Role.PUBLISHER.value: set(options.publisher_kinds),
            Role.CONSUMER.value: {k.value for k in AppKind},
            Role.MIRROR.value: {AppKind.STATUS_AGGREGATOR.value},
        }
        self.extra = {Role.PUBLISHER.value: set(options.publishers),
                      Role.CONSUMER.value: set(options.consumers) | set(options.publishers)}
        self.connections: dict[int, Connection] = {}
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        self._timer: TimerSlot | None = None
        self.refused = metrics.tally("status_refused", "Input the aggregator refused, by reason",
                                     ("reason",))
        self.tls_refused = metrics.tally("status_tls_refused",
                                         "Connections refused in the TLS handshake", ("reason",))
        self.records_in = metrics.tally("status_records", "Status records accepted, by source",
                                        ("source",))
        self.events_out = metrics.tally("status_events", "Event frames sent to watchers", ())
        self.users_gauge = metrics.gauge("status_users", "Users in the status table")
        self.users_gauge.set_function(lambda: len(self.table))
        self.watch_gauge = metrics.gauge("status_watches", "Watches held")
        self.watch_gauge.set_function(lambda: self.table.watch_count)
        self.publishers_gauge = metrics.gauge("status_publishers_online", "Publishers online")
        self.publishers_gauge.set_function(
            lambda: sum(1 for p in self.table.publishers.values() if p.online))
        self.mirrors_gauge = metrics.gauge("status_mirror_links", "Mirror links open")
        self.mirrors_gauge.set_function(lambda: len(self.mirror_links()))
        #: users whose record changed since the store last saw them (a dict of None,
        #: untracked by the garbage collector, not a set: a snapshot puts every user in it)
        self.dirty: dict[str, None] = {}
        #: the web page's live watchers: watcher id -> callback
        self.local_watchers: dict[int, Callable[[list[StatusRecord]], None]] = {}
        #: encoded records for each watcher connection, sent at the end of the loop turn
        self._pending_events: dict[int, list[bytes]] = {}
        self._events_scheduled = False

    # -- clock and timers ----------------------------------------------------
    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time() if self._loop is None else self._loop.time()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = TimerSlot(self._loop, self._on_timer)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.arm(self.table.next_timer())

    def _on_timer(self, now: float) -> None:
        users = self.table.handle_timer(now)
        if users:
            self.log.warning("publisher_silent", users=len(users),
                             publishers=[p.name for p in self.table.publishers.values()
                                         if not p.online])
            self.notify(users)
        self._arm()

    # -- connections ---------------------------------------------------------
    async def listen(self, host: str, port: int, context: ssl.SSLContext) -> asyncio.Server:
        """The status port: mutual TLS (:class:`TlsAcceptor`), so a refused
        handshake is logged and counted here."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: TlsAcceptor(context, self._accepted, self._tls_refused),
            host, port, reuse_address=True)

    def _tls_refused(self, peer: str, reason: str, error: str) -> None:
        self.tls_refused.labels(reason).inc()
        self.log.warning("tls_refused", peer=peer, reason=reason, error=error[:200])

    def _accepted(self, transport: asyncio.WriteTransport, peer: str, name: str | None
                  ) -> tuple[Callable[[bytes], None], Callable[[], None]]:
        conn = self.open_connection(transport, peer=peer, name=name, outbound=False)
        return (lambda data: self.received(conn, data)), (lambda: self.lost(conn))

    def open_connection(self, transport: asyncio.WriteTransport, *, peer: str,
                        name: str | None, outbound: bool,
                        hello: Hello | None = None) -> Connection:
        """A TLS connection's session (``hello``: a mirror link this side dialled)."""
        assert self._loop is not None
        now = self.now()
        session = StatusSession(client=outbound, now=now,
                                keep_alive_interval=self.options.keep_alive_interval,
                                keep_alive_timeout=self.options.keep_alive_timeout,
                                max_frame_size=self.options.max_frame_size)
        self._next_id += 1
        conn = Connection(id=self._next_id, session=session, peer=peer, name=name,
                          outbound=outbound, driver=None)  # type: ignore[arg-type]
        conn.driver = StreamDriver(self._loop, session, transport,
                                   on_timer=lambda _now: self._drain(conn),
                                   on_closed=lambda: self._closed(conn))
        self.connections[conn.id] = conn
        if hello is not None:
            session.send_hello(hello, now)
            conn.role = Role.MIRROR
        conn.driver.flush()
        return conn

    def received(self, conn: Connection, data: bytes) -> None:
        """Bytes of one connection."""
        session = conn.session
        now = self.now()
        session.receive_data(data, now)
        if conn.role is Role.PUBLISHER and conn.name is not None and session.is_open:
            back = self.table.heard(conn.name, conn.incarnation, now)
            if back:
                self.notify(back)
        self._drain(conn)
        conn.driver.flush()
        self._arm()

    def lost(self, conn: Connection) -> None:
        """The connection under the session is gone."""
        conn.session.connection_lost(self.now())
        self._drain(conn)
        conn.driver.close()
        self._closed(conn)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    peer: str, name: str | None, hello: Hello) -> None:
        """Run a mirror link this side dialled until it closes."""
        conn = self.open_connection(writer.transport, peer=peer, name=name, outbound=True,
                                    hello=hello)
        try:
            while not conn.session.closed:
                try:
                    data = await reader.read(READ_SIZE)
                except (ConnectionError, OSError, ssl.SSLError):
                    data = b""
                if not data:
                    break
                self.received(conn, data)
        finally:
            self.lost(conn)

    def _closed(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        self.table.drop_watcher(conn.id)
        self.log.info("connection_closed", peer=conn.peer, application=conn.name,
                      role=conn.role.value if conn.role else None)

    def mirror_links(self) -> list[Connection]:
        return [c for c in self.connections.values()
                if c.role is Role.MIRROR and c.session.is_open]

    # -- session events --------------------------------------------------------
    def _drain(self, conn: Connection) -> None:
        session = conn.session
        while (event := session.next_event()) is not None:
            if isinstance(event, MessageReceived):
                self._dispatch(conn, event.message)
            elif isinstance(event, HelloReceived):
                self._on_hello(conn, event.hello)
            elif isinstance(event, Opened):
                self.log.info("mirror_link_open", peer=conn.peer, application=conn.name)
                self._send_sync(conn)
            elif isinstance(event, ProtocolViolation):
                self._count(conn, event.code, event.text)
            elif isinstance(event, Closed):
                self.log.info("session_closed", peer=conn.peer, application=conn.name,
                              reason=event.reason)

    def _count(self, conn: Connection, code: ErrorCode, text: str) -> None:
        reason = code.name.lower()
        self.refused.labels(reason).inc()
        self.log.warning("status_input_refused", peer=conn.peer, application=conn.name,
                         reason=reason, detail=text[:200])

    def _refuse(self, conn: Connection, exc: StatusProtocolError) -> None:
        conn.session.error(exc, self.now())
        self._count(conn, exc.code, exc.text)

    def _on_hello(self, conn: Connection, hello: Hello) -> None:
        now = self.now()
        why = authorize(conn.name, hello.role.value, self.kinds_of, self.allowed,
                        extra=self.extra)
        if why is None and hello.application != conn.name:
            why = f"Hello names {hello.application!r}, the certificate {conn.name!r}"
        if why is None and hello.role is Role.MIRROR and \
                conn.name not in self.options.status_aggregators:
            why = f"{conn.name!r} is not in status-aggregators"
        if why is not None:
            conn.session.refuse(ErrorCode.ROLE_NOT_ALLOWED, why, now)
            self.refused.labels("role_not_allowed").inc()
            self.log.warning("client_refused", peer=conn.peer, application=conn.name,
                             role=hello.role.value, reason=why)
            return
        conn.role = hello.role
        conn.incarnation = hello.incarnation
        conn.session.accept(Welcome(application=self.name,
                                    mirrors=self.options.status_aggregators), now)
        self.log.info("client_accepted", peer=conn.peer, application=conn.name,
                      role=hello.role.value)
        if hello.role is Role.PUBLISHER and conn.name is not None:
            back = self.table.heard(conn.name, hello.incarnation, now)
            if back:
                self.notify(back)
        elif hello.role is Role.MIRROR:
            self._send_sync(conn)

    def _dispatch(self, conn: Connection, message: Message) -> None:
        handler = self._handlers.get(type(message))
        try:
            if handler is None:
                raise StatusProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                          f"{message.name} is not a request",
                                          getattr(message, "ref", None))
            handler(self, conn, message)
        except StatusProtocolError as exc:
            self._refuse(conn, exc)

    # -- publishers ------------------------------------------------------------
    def _publisher(self, conn: Connection, message: Snapshot | Publish) -> str:
        if conn.role is not Role.PUBLISHER or conn.name is None:
            raise StatusProtocolError(ErrorCode.NOT_A_PUBLISHER,
                                      f"a {conn.role.value if conn.role else '?'} may not publish",
                                      message.ref)
        return conn.name

    def _on_publish(self, conn: Connection, message: Publish) -> None:
        publisher = self._publisher(conn, message)
        self._take(conn, publisher, message.ref, message.records)

    def _on_snapshot(self, conn: Connection, message: Snapshot) -> None:
        publisher = self._publisher(conn, message)
        state = self.table.publisher(publisher)
        if state.snapshot_floor is None:
            self.table.begin_snapshot(publisher)
        self._take(conn, publisher, message.ref, message.records)
        if message.final:
            floor, retired = self.table.end_snapshot(publisher)
            self.log.info("snapshot_received", application=publisher,
                          users=len(state.users), logged_off=len(retired))
            self._forward(MirrorUpdate(records=(), replaced=publisher, floor=floor))
            if retired:
                self.notify([r.user for r in retired])

    def _take(self, conn: Connection, publisher: str, ref: int,
              records: tuple[StatusRecord, ...]) -> None:
        accepted, refused = self.table.publish(publisher, conn.incarnation, records, self.now())
        self.records_in.labels("publisher").inc(len(accepted))
        if refused:
            for code in set(refused.values()):
                self.refused.labels(ErrorCode(code).name.lower()).inc(
                    sum(1 for c in refused.values() if c == code))
            self.log.warning("status_records_refused", application=publisher,
                             count=len(refused),
                             sample={u: ErrorCode(c).name.lower()
                                     for u, c in list(refused.items())[:5]})
        conn.session.send(Result(ref=ref, accepted=len(accepted), refused=refused), self.now())
        if accepted:
            self._forward(MirrorUpdate(records=tuple(accepted)))
            self.notify([r.user for r in accepted])

    # -- consumers ---------------------------------------------------------------
    def _consumer(self, conn: Connection, ref: int) -> None:
        if conn.role not in (Role.CONSUMER, Role.PUBLISHER):
            raise StatusProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                      "queries and watches are for clients", ref)

    def _on_query(self, conn: Connection, message: Query) -> None:
        self._consumer(conn, message.ref)
        records, refused = [], {}
        for user in message.users:
            if self.table.is_known(user):
                records.append(self.table.view(user))
            else:
                refused[user] = int(ErrorCode.UNKNOWN_USER)
        self._answer(conn, message.ref, records, refused)

    def _on_watch(self, conn: Connection, message: Watch) -> None:
        self._consumer(conn, message.ref)
        records, refused = self.table.watch(conn.id, message.users)
        self._answer(conn, message.ref, records, refused)

    def _answer(self, conn: Connection, ref: int, records: list[StatusRecord],
                refused: dict[str, int]) -> None:
        if refused:
            self.refused.labels("unknown_user").inc(len(refused))
            self.log.warning("status_input_refused", peer=conn.peer, application=conn.name,
                             reason="unknown_user", users=list(refused)[:5])
        now = self.now()
        for start in range(0, max(len(records), 1), RECORDS_PER_FRAME):
            part = tuple(records[start:start + RECORDS_PER_FRAME])
            last = start + RECORDS_PER_FRAME >= len(records)
            conn.session.send(Result(ref=ref, records=part, refused=refused if last else {},
                                     accepted=len(records) if last else 0), now)
            if not last:
                conn.driver.flush()

    def _on_unwatch(self, conn: Connection, message: Unwatch) -> None:
        self._consumer(conn, message.ref)
        self.table.unwatch(conn.id, message.users)
        conn.session.send(Result(ref=message.ref), self.now())

    def _on_search(self, conn: Connection, message: Search) -> None:
        self._consumer(conn, message.ref)
        entries = self.search(message.text, message.limit)
        conn.session.send(SearchResult(ref=message.ref, entries=tuple(entries)), self.now())

    def search(self, text: str, limit: int) -> list[dict[str, Any]]:
        """Directory entries matching ``text``, each with its user's live status."""
        entries = self.directory.search(text, limit)
        for entry in entries:
            view = self.table.view(entry["email"])
            entry.update({k: v for k, v in view.to_map().items() if k != "user"})
        return entries

    # -- mirrors -------------------------------------------------------------------
    def _mirror(self, conn: Connection) -> None:
        if conn.role is not Role.MIRROR:
            raise StatusProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "mirror messages are for "
                                      "mirrors")

    def _send_sync(self, conn: Connection) -> None:
        records = list(self.table.raw.values())
        publishers = self.table.publisher_summary()
        now = self.now()
        for start in range(0, max(len(records), 1), RECORDS_PER_FRAME):
            last = start + RECORDS_PER_FRAME >= len(records)
            conn.session.send(MirrorSync(records=tuple(records[start:start + RECORDS_PER_FRAME]),
                                         publishers=publishers if last else {}, final=last), now)
            if not last:
                conn.driver.flush()

    def _on_mirror_sync(self, conn: Connection, message: MirrorSync) -> None:
        self._mirror(conn)
        conn.sync_records.extend(message.records)
        if not message.final:
            return
        records, conn.sync_records = conn.sync_records, []
        taken = self.table.merge(records)
        self.records_in.labels("mirror").inc(len(taken))
        back = self.table.merge_publishers({k: dict(v) for k, v in message.publishers.items()},
                                          self.now())
        self.log.info("mirror_synced", application=conn.name, records=len(records),
                      newer=len(taken))
        self.notify([r.user for r in taken] + back)

    def _on_mirror_update(self, conn: Connection, message: MirrorUpdate) -> None:
        self._mirror(conn)
        taken = self.table.merge(message.records)
        self.records_in.labels("mirror").inc(len(taken))
        users = [r.user for r in taken]
        if message.replaced is not None and message.floor is not None:
            users.extend(r.user for r in self.table.retire_before(message.replaced,
                                                                  message.floor))
        for record in taken:
            state = self.table.publishers.get(record.publisher)
            if state is not None and not state.online:
                users.extend(self.table.heard(record.publisher, record.incarnation, self.now()))
        self.notify(users)

    def _on_keep_alive(self, conn: Connection, message: KeepAlive) -> None:
        self._mirror(conn)
        now = self.now()
        back: list[str] = []
        for publisher, incarnation in message.publishers.items():
            back.extend(self.table.heard(publisher, incarnation, now))
        self.notify(back)
        self._arm()

    def _forward(self, update: MirrorUpdate) -> None:
        now = self.now()
        for link in self.mirror_links():
            records = update.records
            for start in range(0, len(records), RECORDS_PER_FRAME):
                link.session.send(MirrorUpdate(records=records[start:start + RECORDS_PER_FRAME]),
                                  now)
            if update.replaced is not None:
                link.session.send(MirrorUpdate(records=(), replaced=update.replaced,
                                               floor=update.floor), now)
            link.driver.flush()

    def publishers_here(self) -> dict[str, int]:
        """Publishers connected to this aggregator (told to mirrors in keep-alives)."""
        return {c.name: c.incarnation for c in self.connections.values()
                if c.role is Role.PUBLISHER and c.name is not None and c.session.is_open}

    def mirror_keep_alive(self) -> None:
        publishers = self.publishers_here()
        if not publishers:
            return
        now = self.now()
        for link in self.mirror_links():
            link.session.send(KeepAlive(publishers=publishers), now)
            link.driver.flush()

    # -- fan-out -------------------------------------------------------------------
    def notify(self, users: list[str]) -> None:
        """Tell every watcher of ``users`` their current view. Each record is
        encoded once, whoever watches it (the table's stored wire form while
        its publisher is online); a connection's records wait for the
        end of this loop turn and go out then in one ``Event`` (in parts of at
        most RECORDS_PER_FRAME records), in the order of the changes: the
        changes of all the frames read in one turn (a burst from many
        publishers, a backlog after the process waited for the CPU) cost one
        frame, one TLS record and one write per watcher, not one per change."""
        if not users:
            return
        self.dirty.update(dict.fromkeys(users))
        fan = self.table.watchers_of(dict.fromkeys(users))
        if not fan:
            return
        packed: dict[str, bytes] = {}
        views: dict[str, StatusRecord] = {}
        pending = self._pending_events
        for watcher, watched in fan.items():
            local = self.local_watchers.get(watcher)
            if local is not None:
                local([views.get(u) or views.setdefault(u, self.table.view(u)) for u in watched])
                continue
            conn = self.connections.get(watcher)
            if conn is None or not conn.session.is_open:
                continue
            chunks = pending.get(watcher)
            if chunks is None:
                chunks = pending[watcher] = []
            for user in watched:
                chunk = packed.get(user)
                if chunk is None:
                    chunk = packed[user] = self.table.view_wire(user)
                chunks.append(chunk)
        if not pending or self._events_scheduled:
            return
        if self._loop is None:
            self.send_events()
        else:
            self._events_scheduled = True
            self._loop.call_soon(self.send_events)

    def send_events(self) -> None:
        """Send the records :meth:`notify` queued, one Event per watcher."""
        self._events_scheduled = False
        pending, self._pending_events = self._pending_events, {}
        now = self.now()
        for watcher, chunks in pending.items():
            conn = self.connections.get(watcher)
            if conn is None or not conn.session.is_open:
                continue
            for start in range(0, len(chunks), RECORDS_PER_FRAME):
                part = chunks[start:start + RECORDS_PER_FRAME]
                conn.session.send_event(_array_header(len(part)) + b"".join(part), now)
                self.events_out.labels().inc()
            conn.driver.flush()
            self._check_backlog(conn)

    def _check_backlog(self, conn: Connection) -> None:
        """A watcher that does not read its events is cut off at
        ``max-consumer-backlog`` bytes waiting: its memory is not the
        aggregator's to grow (it reconnects and watches again)."""
        backlog = conn.driver.transport.get_write_buffer_size()
        if backlog <= self.options.max_consumer_backlog:
            return
        self.refused.labels("slow_consumer").inc()
        self.log.warning("slow_consumer_closed", peer=conn.peer, application=conn.name,
                         backlog=backlog)
        conn.session.close(self.now())
        conn.driver.transport.abort()
        conn.driver.close()
        self._closed(conn)

    def watch_local(self, users: list[str], callback: Callable[[list[StatusRecord]], None]
                    ) -> tuple[int, list[StatusRecord]]:
        """A watcher inside the process (the web page); its id and current records."""
        self._next_id += 1
        watcher = self._next_id
        self.local_watchers[watcher] = callback
        records, _ = self.table.watch(watcher, users)
        return watcher, records

    def unwatch_local(self, watcher: int) -> None:
        self.local_watchers.pop(watcher, None)
        self.table.drop_watcher(watcher)

    def close_all(self) -> None:
        for conn in list(self.connections.values()):
            conn.session.close(self.now())
            conn.driver.close()
        if self._timer is not None:
            self._timer.cancel()

    _handlers: dict[type, Callable[[Aggregator, Connection, Any], None]] = {
        Publish: _on_publish,
        Snapshot: _on_snapshot,
        Query: _on_query,
        Watch: _on_watch,
        Unwatch: _on_unwatch,
        Search: _on_search,
        MirrorSync: _on_mirror_sync,
        MirrorUpdate: _on_mirror_update,
        KeepAlive: _on_keep_alive,
    }
