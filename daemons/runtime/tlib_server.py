"""Asyncio T-Library listener: TCP connections driving
:class:`protocols.tlib.session.ServerSession` (docs/tlib.md, "Session").

Generic: a :class:`TLibServer` accepts connections on one port and hands
each registered session to a :class:`TLibHandler` (the sip-server's
default-port and IPport, the t-controller's TCport and SmartProxy port)::

    server = TLibServer(handler, application_name="SIPS_dc1_1", port_name="default-port")
    host, port = await server.listen("127.0.0.1", 7000)
    ...
    conn.send_event("EventRinging", {"AttributeThisDN": "1001", ...})
    conn.answer(request, "EventRegistered", {"AttributeThisDN": "1001"})
    conn.answer_error(request, ErrorCode.UNKNOWN_DN, "Unknown DN: 9999")

Protocol errors (unknown message, bad attribute, frame too large ...) are
answered by the session itself; the server counts them
(``tlib_errors{port,code}``) and logs one line each.

Slow consumers (a client that does not read what it is sent), as Redis
bounds a client's output buffer: past ``output_high_water`` bytes queued for
a client, the server stops reading that client's requests (so it cannot make
the server queue more answers) until the queue drains below a quarter of it;
a client whose queue passes ``max_output_bytes`` (events keep coming) is
disconnected with a log line. Both are counted in
``tlib_slow_consumers_total{port,outcome}`` (``paused``, ``dropped``).
Memory per client stays bounded by those two figures.

TLS (``listen(..., tls=context)``): for desktops that ask for it (the
t-controller's ``tc-tls-port``). The handshake is done by
:class:`daemons.runtime.certs.TlsAcceptor`, so a refused one (plaintext,
an old protocol, a certificate of another CA) is one log line and a count in
``tlib_tls_refused_total{port,reason}``; :func:`tls_server_context` makes the
context from the installation's certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

from daemons.runtime.certs import CA_CERT, CertError, TlsAcceptor, TlsTransport
from daemons.runtime.driver import TimerSlot
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics
from protocols.tlib.catalogue import CLIENT_TYPES
from protocols.tlib.errors import ErrorCode, TLibError
from protocols.tlib.session import (
    ClientRegistered,
    PeerLost,
    RequestReceived,
    RequestRejected,
    ServerSession,
    SessionClosed,
)

__all__ = ["TLibConnection", "TLibHandler", "TLibServer", "tls_server_context"]

SERVER_VERSION = "sipcluster-1"


class TLibHandler(Protocol):
    """What a daemon implements to serve one T-Library port."""

    def on_registered(self, conn: TLibConnection) -> None:
        """The client completed ``RequestRegisterClient``."""

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        """A valid request; answer with ``conn.answer`` / ``conn.answer_error``."""

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        """The connection ended (only called for registered clients)."""


class TLibConnection:
    """One client connection: its session, transport and identity."""

    def __init__(self, server: TLibServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        loop = server.loop
        self.session = ServerSession(
            application_name=server.application_name,
            server_version=SERVER_VERSION,
            now=loop.time(),
            accepted_client_types=server.accepted_client_types,
            addp_timeout=server.addp_timeout,
            addp_remote_timeout=server.addp_remote_timeout,
            time_offset=time.time() - loop.time(),
        )
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.registered = False
        self.closed = False
        self._timer = TimerSlot(loop, self._on_timer)
        self._flush_scheduled = False
        #: the client does not read: its requests wait in the kernel, not in us
        self.reading_paused = False
        #: free for the handler (registered DNs, role ...)
        self.context: dict[str, Any] = {}

    @property
    def application(self) -> str:
        return self.session.client_application or ""

    @property
    def client_type(self) -> str:
        return self.session.client_type or ""

    # -- sending ----------------------------------------------------------------

    def send_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                   *, sequence: int | None = None, trusted: bool = False) -> int | None:
        """Send one event; returns its sequence number, ``None`` if the session is gone.

        ``trusted``: the daemon built the attributes from its own state, so the
        catalogue check is skipped (``ServerSession.send_trusted_event``).
        Events are written at the end of the current loop iteration, several
        in one ``write``.
        """
        if self.closed or self.session.closed:
            return None
        if sequence is not None:
            self.session.set_next_sequence(sequence)
        try:
            if trusted:
                seq = self.session.send_trusted_event(name, self.server.loop.time(),
                                                      attributes or {})
            else:
                seq = self.session.send_event(name, self.server.loop.time(),
                                              dict(attributes or {}))
        except TLibError as exc:
            self.server.count_error(exc.code)
            self.server.log.error("tlib_event_refused", tlib_event=name, peer=self.peer,
                                  code=int(exc.code), text=exc.text)
            return None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.server.loop.call_soon(self._flush)
        return seq

    def answer(self, request: RequestReceived, name: str,
               attributes: Mapping[str, Any] | None = None) -> int | None:
        attrs = dict(attributes or {})
        attrs["AttributeReferenceID"] = request.reference_id
        return self.send_event(name, attrs)

    def answer_error(self, request: RequestReceived | int, code: ErrorCode,
                     text: str | None = None, **attrs: Any) -> int | None:
        """``EventError`` for a request (or a bare ReferenceID); counted and logged."""
        reference = request.reference_id if isinstance(request, RequestReceived) else request
        name = request.name if isinstance(request, RequestReceived) else None
        message = text if text is not None else TLibError(code=code).text
        self.server.count_error(code)
        self.server.log.info("tlib_request_refused", request=name, peer=self.peer,
                             application=self.application, code=int(code), text=message)
        return self.send_event("EventError", {
            "AttributeReferenceID": reference, "AttributeErrorCode": int(code),
            "AttributeErrorMessage": message, **attrs})

    def close(self) -> None:
        if not self.closed:
            self.session.close(self.server.loop.time())
            self._flush()
            self.transport.close()

    # -- session driving --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, self.server.loop.time())
        self._process()

    def connection_lost(self) -> None:
        self.session.connection_lost(self.server.loop.time())
        self._process()
        self._finish("connection-closed")

    def _on_timer(self, now: float) -> None:
        self.session.handle_timer(now)
        self._process()

    def _process(self) -> None:
        server = self.server
        while (event := self.session.next_event()) is not None:
            if isinstance(event, ClientRegistered):
                self.registered = True
                server.log.info("tlib_client_registered", peer=self.peer,
                                application=event.application_name,
                                client_type=event.client_type)
                try:
                    server.handler.on_registered(self)
                except Exception:
                    server.log.exception("tlib_handler_failed", stage="registered")
            elif isinstance(event, RequestReceived):
                try:
                    server.handler.on_request(self, event)
                except TLibError as exc:
                    self.answer_error(event, exc.code, exc.text)
                except Exception as exc:
                    server.log.exception("tlib_handler_failed", request=event.name)
                    self.answer_error(event, ErrorCode.INTERNAL_ERROR,
                                      f"Internal error: {type(exc).__name__}")
            elif isinstance(event, RequestRejected):
                server.count_error(event.code)
                server.log.info("tlib_request_rejected", peer=self.peer, request=event.name,
                                code=int(event.code), text=event.text)
            elif isinstance(event, SessionClosed):
                server.log.warning("tlib_session_closed", peer=self.peer,
                                   code=int(event.code), text=event.text)
            elif isinstance(event, PeerLost):
                server.log.info("tlib_peer_lost", peer=self.peer, reason=event.reason,
                                application=self.application)
                self._finish(event.reason)
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.session.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)
            queued = self.transport.get_write_buffer_size()
            if queued > self.server.max_output_bytes:
                self._drop_slow_consumer(queued)
                return
        if self.session.closed:
            self.transport.close()
            self._finish("closed")
            return
        self._timer.arm(self.session.next_timer())

    # -- flow control (slow consumers) -----------------------------------------

    def pause_writing(self) -> None:
        """The client reads slower than we answer: read no more of its requests."""
        if not hasattr(self.transport, "pause_reading"):
            return  # TLS done in memory: only the max_output_bytes limit applies
        if not self.reading_paused and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()
            self.server.count_slow("paused")
            self.server.log.info("tlib_client_not_reading", peer=self.peer,
                                 application=self.application,
                                 queued=self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        if self.reading_paused and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def _drop_slow_consumer(self, queued: int) -> None:
        self.server.count_slow("dropped")
        self.server.log.warning("tlib_slow_consumer_dropped", peer=self.peer,
                                application=self.application, queued=queued,
                                limit=self.server.max_output_bytes)
        self.transport.abort()  # what is queued is dropped with the connection
        self._finish("slow-consumer")

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._timer.cancel()
        self.server.connections.discard(self)
        if self.registered:
            try:
                self.server.handler.on_closed(self, reason)
            except Exception:
                self.server.log.exception("tlib_handler_failed", stage="closed")


class _Protocol(asyncio.Protocol):
    def __init__(self, server: TLibServer) -> None:
        self.server = server
        self.conn: TLibConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport
        tcp = cast(asyncio.Transport, transport)
        high = self.server.output_high_water
        tcp.set_write_buffer_limits(high=high, low=high // 4)
        self.conn = TLibConnection(self.server, tcp)
        self.server.connections.add(self.conn)
        self.conn._flush()  # arms the registration timer

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_writing()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.connection_lost()


class TLibServer:
    """A T-Library port: accepts connections, one :class:`TLibConnection` each."""

    def __init__(
        self,
        handler: TLibHandler,
        *,
        application_name: str,
        port_name: str,
        metrics: Metrics | None = None,
        accepted_client_types: frozenset[str] = CLIENT_TYPES,
        addp_timeout: float | None = None,
        addp_remote_timeout: float | None = None,
        logger: Any = None,
        output_high_water: int = 256 * 1024,
        max_output_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.handler = handler
        self.output_high_water = output_high_water
        self.max_output_bytes = max_output_bytes
        self.application_name = application_name
        self.port_name = port_name
        self.accepted_client_types = accepted_client_types
        self.addp_timeout = addp_timeout
        self.addp_remote_timeout = addp_remote_timeout
        self.loop = asyncio.get_running_loop()
        self.log = (logger if logger is not None else get_logger("tlib_server")).bind(
            port_name=port_name)
        self.metrics = metrics if metrics is not None else Metrics("sipcluster")
        self._errors = self.metrics.shared_counter(
            "tlib_errors", "T-Library EventError answers and rejected frames",
            ("port", "code"))
        self._slow = self.metrics.shared_counter(
            "tlib_slow_consumers",
            "Clients that stopped reading: reading paused, or dropped past max_output_bytes",
            ("port", "outcome"))
        self._tls_refusals = self.metrics.shared_counter(
            "tlib_tls_refused", "TLS handshakes refused on a T-Library port",
            ("port", "reason"))
        self.connections: set[TLibConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None

    async def listen(self, host: str, port: int, *,
                     tls: ssl.SSLContext | None = None) -> tuple[str, int]:
        factory: Callable[[], asyncio.Protocol]
        if tls is None:
            factory = lambda: _Protocol(self)  # noqa: E731
        else:
            factory = lambda: TlsAcceptor(tls, self._tls_open, self._tls_refused)  # noqa: E731
        self._server = await self.loop.create_server(factory, host, port, reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        self.log.info("tlib_listening", host=self.address[0], port=self.address[1],
                      tls=tls is not None)
        return self.address

    def _tls_open(self, transport: TlsTransport, peer: str,
                  name: str | None) -> tuple[Callable[[bytes], None], Callable[[], None]]:
        conn = TLibConnection(self, cast(asyncio.Transport, transport))
        self.connections.add(conn)
        conn._flush()  # arms the registration timer
        return conn.data_received, conn.connection_lost

    def _tls_refused(self, peer: str, reason: str, error: str) -> None:
        self._tls_refusals.labels(self.port_name, reason).inc()
        self.log.info("tlib_tls_refused", peer=peer, reason=reason, error=error)

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def count_error(self, code: ErrorCode | int) -> None:
        self._errors.labels(self.port_name, str(int(code))).inc()

    def count_slow(self, outcome: str) -> None:
        self._slow.labels(self.port_name, outcome).inc()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None


def tls_server_context(directory: Path, name: str) -> ssl.SSLContext:
    """A T-Library port's TLS: ``NAME.pem`` / ``NAME.key`` of the installation's
    certificates (``sipcluster certs issue NAME``), TLS 1.2 at least; a desktop
    needs no certificate of its own, one that shows a certificate must show one
    of this CA. :class:`CertError` says which file is missing or wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
        context.load_verify_locations(cafile=directory / CA_CERT)
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"certificates of {name} in {directory}: {exc}") from exc
    context.verify_mode = ssl.CERT_OPTIONAL
    return context
