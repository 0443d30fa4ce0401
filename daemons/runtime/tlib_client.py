"""Asyncio T-Library client: the glue between a TCP connection and
:class:`protocols.tlib.session.ClientSession` (docs/tlib.md, "Client library").

    client = await TLibClient.connect("127.0.1.10", 3000, "desktop-1001")
    event = await client.request("RequestAgentLogin",
                                 AttributeThisDN="1001", AttributeAgentID="a1001")
    async for event in client.events():   # unsolicited events
        ...
    await client.close()

``request`` resolves with the first event carrying the request's
``AttributeReferenceID`` (an ``EventError`` is returned, not raised); every
other event goes to :meth:`TLibClient.events`. ADDP keep-alives run from a
loop timer driven by the session's ``next_timer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from daemons.runtime.driver import StreamDriver
from daemons.runtime.logs import get_logger
from protocols.tlib.catalogue import PROTOCOL_VERSION
from protocols.tlib.framing import MAX_FRAME_SIZE, TMap
from protocols.tlib.session import (
    DEFAULT_ADDP_REMOTE_TIMEOUT,
    DEFAULT_ADDP_TIMEOUT,
    ClientSession,
    EventReceived,
    HandshakeFailed,
    PeerLost,
    ProtocolViolation,
    ServerInfoReceived,
    SessionClosed,
)

EventListener = Callable[[TMap], None]


class TLibConnectionLost(ConnectionError):
    """The connection ended: ``reason`` is ``addp-timeout``, ``connection-closed``,
    ``closed`` (by :meth:`TLibClient.close`) or a protocol error text."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"T-Library connection lost: {reason}")


class TLibHandshakeError(ConnectionError):
    """The server refused ``RequestRegisterClient`` (``EventError`` code and text)."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"T-Library handshake refused: {code} {text}")


_END = object()


class _Protocol(asyncio.Protocol):
    def __init__(self, client: TLibClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.client._connection_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.client._data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._connection_lost(exc)


class TLibClient:
    """One T-Library client connection (use :meth:`connect`)."""

    def __init__(
        self,
        application_name: str,
        *,
        client_type: str = "legacy",
        addp_timeout: float | None = DEFAULT_ADDP_TIMEOUT,
        addp_remote_timeout: float = DEFAULT_ADDP_REMOTE_TIMEOUT,
        protocol_version: int = PROTOCOL_VERSION,
        max_frame_size: int = MAX_FRAME_SIZE,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._session_args: dict[str, Any] = {
            "application_name": application_name,
            "client_type": client_type,
            "addp_timeout": addp_timeout,
            "addp_remote_timeout": addp_remote_timeout,
            "protocol_version": protocol_version,
            "max_frame_size": max_frame_size,
            "extensions": extensions,
        }
        self.application_name = application_name
        self._session: ClientSession | None = None
        self._transport: asyncio.Transport | None = None
        self._driver: StreamDriver | None = None
        self._handshake: asyncio.Future[TMap] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[TMap]] = {}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        #: unsolicited events are kept for events() until a listener takes them all
        self._keep_unsolicited = True
        self._listeners: list[EventListener] = []
        self._closed = asyncio.Event()
        #: why the connection ended (None while open)
        self.lost_reason: str | None = None
        #: EventServerInfo of the handshake
        self.server_info: TMap = {}
        #: frames from the server that broke the rules and were dropped
        self.protocol_violations = 0
        self.peer = ""
        self.log = get_logger("tlib_client", application=application_name)

    # -- connecting -----------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        app_name: str,
        client_type: str = "legacy",
        *,
        addp_timeout: float | None = DEFAULT_ADDP_TIMEOUT,
        addp_remote_timeout: float = DEFAULT_ADDP_REMOTE_TIMEOUT,
        protocol_version: int = PROTOCOL_VERSION,
        max_frame_size: int = MAX_FRAME_SIZE,
        extensions: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        local_addr: tuple[str, int] | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> TLibClient:
        """Open the TCP connection and complete the handshake.

        Raises :class:`OSError` / :class:`TimeoutError` when the server cannot
        be reached in ``connect_timeout`` seconds, :class:`TLibHandshakeError`
        when it refuses the registration.
        """
        client = cls(
            app_name,
            client_type=client_type,
            addp_timeout=addp_timeout,
            addp_remote_timeout=addp_remote_timeout,
            protocol_version=protocol_version,
            max_frame_size=max_frame_size,
            extensions=extensions,
        )
        client.peer = f"{host}:{port}"
        client.log = client.log.bind(peer=client.peer)
        try:
            async with asyncio.timeout(connect_timeout):
                await client._loop.create_connection(
                    lambda: _Protocol(client), host, port, local_addr=local_addr,
                    ssl=tls, server_hostname=(server_hostname or host) if tls else None,
                )
                client.server_info = await asyncio.shield(client._handshake)
        except BaseException:
            client._abort()
            raise
        client.log.info(
            "tlib_registered",
            server=client.server_info.get("AttributeApplicationName"),
            protocol_version=client.server_info.get("AttributeProtocolVersion"),
        )
        return client

    # -- requests and events --------------------------------------------------

    def submit(
        self, name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any
    ) -> asyncio.Future[TMap]:
        """Send a request now; the future resolves with its first answering event.

        Raises the catalogue's :class:`ValidationError` for an invalid request,
        :class:`TLibConnectionLost` when the connection is gone, and
        :class:`ValueError` for a caller-supplied ``AttributeReferenceID``
        that is still awaiting its answer.
        """
        session = self._session
        if session is None or session.closed:
            raise TLibConnectionLost(self.lost_reason or "closed")
        merged = dict(attributes or {})
        merged.update(attrs)
        reference_id = merged.get("AttributeReferenceID")
        if reference_id is None:
            reference_id = session.next_reference_id()
            while reference_id in self._pending:
                reference_id = session.next_reference_id()
            merged["AttributeReferenceID"] = reference_id
        elif reference_id in self._pending:
            raise ValueError(f"AttributeReferenceID {reference_id} is awaiting an answer")
        session.send_request(name, self._loop.time(), merged)
        future: asyncio.Future[TMap] = self._loop.create_future()
        self._pending[int(reference_id)] = future
        self._flush()
        return future

    async def request(
        self, name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any
    ) -> TMap:
        """Send a request and return the first event answering it (matched by
        ``AttributeReferenceID``); ``EventError`` is returned like any other.
        Bound the wait with ``asyncio.timeout`` around the call."""
        return await self.submit(name, attributes, **attrs)

    async def events(self) -> AsyncIterator[TMap]:
        """Unsolicited events (those not answering a pending request), in
        arrival order; the iteration ends when the connection ends. One
        consumer at a time."""
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # later iterations end at once too
                return
            yield item

    def add_listener(self, listener: EventListener, *, takes_unsolicited: bool = False) -> None:
        """Call ``listener(event)`` for every event received, answers included,
        in arrival order, before it is handed to ``request`` or ``events``.

        ``takes_unsolicited``: the listener is where unsolicited events go, and
        nobody iterates :meth:`events`: from now on they are no longer queued
        for it (those already queued are dropped). Without it, a client that
        only listens keeps every unsolicited event in memory."""
        self._listeners.append(listener)
        if takes_unsolicited:
            self._keep_unsolicited = False
            while not self._queue.empty():
                if self._queue.get_nowait() is _END:
                    self._queue.put_nowait(_END)
                    break

    @property
    def queued(self) -> int:
        """Unsolicited events waiting for :meth:`events`."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def pending(self) -> int:
        """Requests still waiting for their first answer."""
        return len(self._pending)

    async def wait_closed(self) -> None:
        """Return once the connection has ended."""
        await self._closed.wait()

    async def close(self) -> None:
        """Close the connection; pending requests fail with :class:`TLibConnectionLost`."""
        if self._session is not None and not self._session.closed:
            self._session.close(self._loop.time())
        self._shutdown("closed")
        if self._transport is not None:
            self._transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(2.0):
                await self._closed.wait()
        self._closed.set()

    # -- asyncio glue ---------------------------------------------------------

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._session = ClientSession(now=self._loop.time(), **self._session_args)
        self._driver = StreamDriver(self._loop, self._session, transport,
                                    on_timer=lambda _now: self._handle_events())
        self._flush()

    def _data_received(self, data: bytes) -> None:
        if self._session is None:
            return
        self._session.receive_data(data, self._loop.time())
        self._process()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._session is not None:
            self._session.connection_lost(self._loop.time())
            self._process()
        self._shutdown("connection-closed")
        self._closed.set()

    def _process(self) -> None:
        self._handle_events()
        self._flush()

    def _handle_events(self) -> None:
        session = self._session
        assert session is not None
        while (event := session.next_event()) is not None:
            if isinstance(event, EventReceived):
                self._dispatch(event)
            elif isinstance(event, ServerInfoReceived):
                if not self._handshake.done():
                    self._handshake.set_result(event.message)
            elif isinstance(event, HandshakeFailed):
                if not self._handshake.done():
                    self._handshake.set_exception(TLibHandshakeError(event.code, event.text))
                self._shutdown(f"handshake refused: {event.code} {event.text}")
            elif isinstance(event, ProtocolViolation):
                self.protocol_violations += 1
                self.log.warning("tlib_protocol_violation", code=int(event.code), text=event.text)
            elif isinstance(event, PeerLost):
                self.log.warning("tlib_peer_lost", reason=event.reason)
                self._shutdown(event.reason)
            elif isinstance(event, SessionClosed):
                self.log.warning("tlib_session_closed", code=int(event.code), text=event.text)
                self._shutdown(event.text)

    def _dispatch(self, event: EventReceived) -> None:
        for listener in self._listeners:
            listener(event.message)
        future = (
            self._pending.pop(event.reference_id, None) if event.reference_id is not None else None
        )
        if future is not None:
            if not future.done():
                future.set_result(event.message)
            return
        if self._keep_unsolicited:
            self._queue.put_nowait(event.message)

    def _flush(self) -> None:
        if self._driver is not None:
            self._driver.flush()

    def _shutdown(self, reason: str) -> None:
        """Fail everything waiting; idempotent."""
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        if self._driver is not None:
            self._driver.timer.cancel()
        error = TLibConnectionLost(reason)
        if not self._handshake.done():
            self._handshake.set_exception(error)
            self._handshake.exception()  # retrieved: connect() re-raises its own way
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._queue.put_nowait(_END)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _abort(self) -> None:
        self._shutdown("closed")
        if self._transport is not None:
            self._transport.abort()
        self._closed.set()
