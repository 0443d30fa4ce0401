"""A client of the status-aggregators: publisher or consumer, over mutual TLS,
failing over in list order (docs/status-aggregator.md, "Clients and
fail-over"; guide: "StatusAggregatorServer ... Use semicolons to separate
names").

:class:`StatusClient` keeps one connection to the first aggregator of its
list that answers. A publisher keeps its users' current records; on every
new connection it sends them as a snapshot (fresh sequence numbers), so an
aggregator that took over, or one that restarted, has its set at once. A
consumer keeps its watches; on every new connection it watches again and
hands the current records to ``on_records``, so no change made during a
fail-over is missed. Events are numbered per connection; a gap is counted
(:attr:`StatusClient.gaps`).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.runtime.certs import peer_name
from daemons.runtime.driver import StreamDriver
from daemons.runtime.logs import get_logger
from daemons.runtime.service import cancel_and_wait
from protocols.status.messages import (
    Error,
    Event,
    Hello,
    Message,
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
)
from protocols.status.session import Closed, MessageReceived, Opened, StatusSession

__all__ = ["AggregatorAddress", "StatusClient", "aggregator_addresses", "aggregator_group"]

#: records per Snapshot/Publish frame (well under the 1 MiB frame limit)
RECORDS_PER_FRAME = 4000
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class AggregatorAddress:
    name: str
    host: str
    port: int


def aggregator_group(config: ClusterConfig, name: str | None = None) -> tuple[str, ...]:
    """The aggregators in fail-over order: ``status-aggregators`` in the options
    of the first status-aggregator application (of ``name`` when given), else
    every status-aggregator of the cluster file, in file order."""
    apps = config.by_kind(AppKind.STATUS_AGGREGATOR)
    if name is not None:
        apps = [a for a in apps if a.name == name] or apps
    for app in apps:
        group = app.options.get("status-aggregators")
        if isinstance(group, list) and group and all(isinstance(g, str) for g in group):
            return tuple(group)
    return tuple(a.name for a in config.by_kind(AppKind.STATUS_AGGREGATOR))


def aggregator_addresses(config: ClusterConfig) -> list[AggregatorAddress]:
    out = []
    for name in aggregator_group(config):
        app = config.applications.get(name)
        if app is not None and app.port("status-port"):
            out.append(AggregatorAddress(name, app.host, app.ports["status-port"]))
    return out


class StatusClient:
    """One publisher or consumer connection with fail-over; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        role: Role,
        aggregators: Sequence[AggregatorAddress],
        context: ssl.SSLContext,
        on_records: Callable[[list[StatusRecord]], None] | None = None,
        incarnation: int | None = None,
        retry: float = 1.0,
        keep_alive_interval: float = 10.0,
        keep_alive_timeout: float = 30.0,
        local_address: str | None = None,
        snapshot: bool = True,
    ) -> None:
        if not aggregators:
            raise ValueError("no status-aggregator to connect to")
        self.name = name
        self.role = role
        self.aggregators = list(aggregators)
        self.context = context
        self.on_records = on_records
        self.incarnation = incarnation if incarnation is not None else time.time_ns() // 10**6
        self.retry = retry
        self.keep_alive_interval = keep_alive_interval
        self.keep_alive_timeout = keep_alive_timeout
        self.local_address = local_address
        #: a publisher that holds a set of users sends it as a snapshot on every
        #: connection; a script publishing a few records does not (``snapshot=False``)
        self.snapshot = snapshot
        self.log = get_logger("status_client", application=name)
        self.connected_to: str | None = None
        self.opened = asyncio.Event()
        self._pass_failed = asyncio.Event()
        #: why each aggregator of the last pass over the list failed
        self.last_error: str | None = None
        self._errors: dict[str, str] = {}
        self.gaps = 0
        self.events = 0
        self.failovers = 0
        self.refused: dict[str, int] = {}
        self._records: dict[str, StatusRecord] = {}
        self._watches: set[str] = set()
        self._seq = 0
        self._refs = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        #: records of long answers received so far, by ref
        self._parts: dict[int, list[StatusRecord]] = {}
        #: Watch requests whose answer goes to ``on_records``
        self._watch_refs: set[int] = set()
        self._outbox: list[StatusRecord] = []
        self._flush_scheduled = False
        self._session: StatusSession | None = None
        self._driver: StreamDriver | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_event = 0
        self._address = self.aggregators[0]
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def wait_open(self, timeout: float = 10.0, *, fail_fast: bool = False) -> str:
        """The aggregator connected to; with ``fail_fast``, ConnectionError (why
        the last one refused or was unreachable) once every aggregator of the
        list was tried in vain."""
        waits = [asyncio.ensure_future(self.opened.wait())]
        if fail_fast:
            waits.append(asyncio.ensure_future(self._pass_failed.wait()))
        try:
            await asyncio.wait_for(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED),
                                   timeout)
        finally:
            for wait in waits:
                wait.cancel()
        if self.connected_to is None:
            raise ConnectionError(self.last_error or "no status-aggregator answered")
        return self.connected_to

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            served = False
            self._errors = {}
            for address in self.aggregators:
                try:
                    served = await self._connect(loop, address)
                except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                    self._errors[address.name] = str(exc) or type(exc).__name__
                    self.log.info("status_aggregator_unreachable", aggregator=address.name,
                                  error=str(exc)[:200])
                    continue
                if served:
                    self.failovers += 1
                    break
            if not served:
                self.last_error = "; ".join(f"{n}: {e}" for n, e in self._errors.items())
                self._pass_failed.set()
                await asyncio.sleep(self.retry)

    async def _connect(self, loop: asyncio.AbstractEventLoop, address: AggregatorAddress) -> bool:
        local = (self.local_address, 0) if self.local_address else None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            address.host, address.port, ssl=self.context, local_addr=local,
            server_hostname=address.name, ssl_handshake_timeout=CONNECT_TIMEOUT),
            CONNECT_TIMEOUT + 1)
        server = peer_name(writer.get_extra_info("ssl_object"))
        if server != address.name:
            self.log.warning("status_aggregator_wrong_name", expected=address.name, got=server)
            writer.close()
            return False
        session = StatusSession(client=True, now=loop.time(),
                                keep_alive_interval=self.keep_alive_interval,
                                keep_alive_timeout=self.keep_alive_timeout)
        self._address = address
        driver = StreamDriver(loop, session, writer.transport, on_timer=self._on_timer)
        self._session, self._driver = session, driver
        self._last_event = 0
        session.send_hello(Hello(role=self.role, application=self.name,
                                 incarnation=self.incarnation), loop.time())
        driver.flush()
        was_open = False
        try:
            while not session.closed:
                try:
                    data = await reader.read(256 * 1024)
                except (ConnectionError, OSError, ssl.SSLError):
                    data = b""
                if not data:
                    session.connection_lost(loop.time())
                    self._drain(address)
                    break
                session.receive_data(data, loop.time())
                was_open = self._drain(address) or was_open or session.is_open
                driver.flush()
        finally:
            driver.close()
            self._session = self._driver = None
            if self.connected_to is not None and not self._stopping:
                self.log.warning("status_aggregator_lost", aggregator=self.connected_to)
            self.connected_to = None
            self.opened.clear()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("status-aggregator connection lost"))
            self._pending.clear()
            self._parts.clear()
            self._watch_refs.clear()
        return was_open

    def _on_timer(self, now: float) -> None:
        self._drain(self._address)

    def _drain(self, address: AggregatorAddress) -> bool:
        session = self._session
        opened = False
        while session is not None and (event := session.next_event()) is not None:
            if isinstance(event, Opened):
                opened = True
                self.connected_to = address.name
                self.log.info("status_aggregator_connected", aggregator=address.name,
                              role=self.role.value)
                self._on_open()
                self.opened.set()
            elif isinstance(event, MessageReceived):
                self._on_message(event.message)
            elif isinstance(event, Closed):
                self._errors[address.name] = event.reason
                self.log.info("status_session_closed", aggregator=address.name,
                              reason=event.reason)
        return opened

    def _on_open(self) -> None:
        if self.role is Role.PUBLISHER and self.snapshot:
            self._send_snapshot()
        if self._watches:
            self._request(Watch(ref=self._ref(), users=tuple(sorted(self._watches))))

    def _on_message(self, message: Message) -> None:
        if isinstance(message, Event):
            self.events += 1
            if message.seq != self._last_event + 1:
                self.gaps += abs(message.seq - self._last_event - 1)
            self._last_event = message.seq
            if self.on_records is not None:
                self.on_records(list(message.records))
        elif isinstance(message, Result | SearchResult):
            future = self._pending.get(message.ref)
            if isinstance(message, Result) and message.refused:
                self.refused.update(message.refused)
            if future is None:
                return
            if isinstance(message, Result) and not message.accepted and not message.refused \
                    and message.records:
                # a part of a long answer (docs/status-aggregator.md): gather the records
                self._parts.setdefault(message.ref, []).extend(message.records)
                return
            self._pending.pop(message.ref, None)
            parts = self._parts.pop(message.ref, None)
            if parts and isinstance(message, Result):
                message = replace(message, records=tuple(parts) + message.records)
            if message.ref in self._watch_refs:
                # in order with the events of this connection: before any later one
                self._watch_refs.discard(message.ref)
                if self.on_records is not None and isinstance(message, Result):
                    self.on_records(list(message.records))
            if not future.done():
                future.set_result(message)
        elif isinstance(message, Error):
            future = self._pending.pop(message.ref, None) if message.ref is not None else None
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"error {message.code}: {message.text}"))
            else:
                self.log.warning("status_error_received", code=message.code, text=message.text)

    # -- requests ----------------------------------------------------------------
    def _ref(self) -> int:
        return next(self._refs)

    def _request(self, message: Watch | Unwatch | Query | Search | Publish
                 ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        session, driver = self._session, self._driver
        if session is None or driver is None or not session.is_open:
            future.set_exception(ConnectionError("not connected to a status-aggregator"))
            return future
        self._pending[message.ref] = future
        if isinstance(message, Watch):
            self._watch_refs.add(message.ref)
        session.send(message, asyncio.get_running_loop().time())
        driver.flush()
        return future

    async def watch(self, users: Iterable[str], timeout: float = 10.0) -> Result:
        users = tuple(users)
        self._watches.update(users)
        result: Result = await asyncio.wait_for(
            self._request(Watch(ref=self._ref(), users=users)), timeout)
        for user in result.refused:
            self._watches.discard(user)
        return result

    async def unwatch(self, users: Iterable[str], timeout: float = 10.0) -> Result:
        users = tuple(users)
        self._watches.difference_update(users)
        result: Result = await asyncio.wait_for(
            self._request(Unwatch(ref=self._ref(), users=users)), timeout)
        return result

    async def query(self, users: Iterable[str], timeout: float = 10.0) -> Result:
        result: Result = await asyncio.wait_for(
            self._request(Query(ref=self._ref(), users=tuple(users))), timeout)
        return result

    async def search(self, text: str, limit: int = 50, timeout: float = 10.0) -> SearchResult:
        result: SearchResult = await asyncio.wait_for(
            self._request(Search(ref=self._ref(), text=text, limit=limit)), timeout)
        return result

    # -- publishing --------------------------------------------------------------
    def publish(self, records: Iterable[StatusRecord]) -> None:
        """Publish changed records (sent at the end of this loop iteration, in
        one batch with whatever else is published meanwhile)."""
        for record in records:
            self._seq += 1
            stamped = record._replace(publisher=self.name, incarnation=self.incarnation,
                                      seq=self._seq)
            self._records[record.user] = stamped
            self._outbox.append(stamped)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_outbox)

    async def publish_now(self, records: Iterable[StatusRecord], timeout: float = 10.0) -> Result:
        """Publish at once and wait for the aggregator's answer."""
        stamped = []
        for record in records:
            self._seq += 1
            stamped.append(record._replace(publisher=self.name, incarnation=self.incarnation,
                                           seq=self._seq))
        result: Result = await asyncio.wait_for(
            self._request(Publish(ref=self._ref(), records=tuple(stamped))), timeout)
        return result

    def _flush_outbox(self) -> None:
        self._flush_scheduled = False
        records, self._outbox = self._outbox, []
        session, driver = self._session, self._driver
        if session is None or driver is None or not session.is_open:
            return  # the snapshot on the next connection carries them
        now = asyncio.get_running_loop().time()
        for start in range(0, len(records), RECORDS_PER_FRAME):
            session.send(Publish(ref=self._ref(), records=tuple(
                records[start:start + RECORDS_PER_FRAME])), now)
        driver.flush()

    def _send_snapshot(self) -> None:
        session, driver = self._session, self._driver
        assert session is not None and driver is not None
        self._outbox.clear()
        records = []
        for user, record in list(self._records.items()):
            self._seq += 1
            stamped = self._records[user] = record._replace(seq=self._seq)
            records.append(stamped)
        now = asyncio.get_running_loop().time()
        for start in range(0, max(len(records), 1), RECORDS_PER_FRAME):
            last = start + RECORDS_PER_FRAME >= len(records)
            session.send(Snapshot(ref=self._ref(), final=last,
                                  records=tuple(records[start:start + RECORDS_PER_FRAME])), now)
            driver.flush()

    @property
    def records(self) -> dict[str, StatusRecord]:
        """The publisher's current records, by user."""
        return dict(self._records)
