"""SIP transports for the daemons: asyncio UDP, TCP and TLS listeners and clients
around the sans-I/O parser (RFC 3261 §18).

One :class:`SipTransportManager` per daemon owns every SIP socket:

* it listens on (host, port) for UDP, TCP and TLS and hands each parsed message
  to a callback together with its :class:`Flow` (transport, remote and local
  address, connection id);
* on receipt it adds ``received`` to the top Via when the sent-by host differs
  from the packet source, and fills an empty ``rport`` (§18.2.1, RFC 3581 §4);
* it sends a message to (transport, address), reusing an open connection to
  that address or the connection a request came in on (§18.2.2), and switches a
  request larger than 1300 octets from UDP to TCP (§18.1.1);
* streams are framed by :class:`protocols.sip.framing.StreamFramer`; a
  CRLFCRLF keep-alive ping is answered with CRLF (RFC 5626 §3.5.1); idle
  connections are closed after ``idle_timeout`` seconds;
* malformed input is counted, logged and, for a request carrying enough
  headers to build a response, answered with the parser's status and reason
  (§21.4.1); nothing a peer sends can stop the listener;
* a TLS listener does its handshakes in memory
  (:class:`daemons.runtime.certs.TlsAcceptor`), so a failed one (plaintext,
  a client refusing our certificate, a client certificate of a foreign CA, a
  timeout) is a ``sip_tls_handshake_refused`` warning and
  ``sip_tls_refused_total{reason}``, not a silent drop.

The rules themselves (the Via fixed on receipt, the error answer, where
responses go, what a received message must be able to show) are socket-free
functions in :mod:`protocols.sip.rules`. What every UDP datagram goes through
on its way in and out is :class:`daemons.runtime.datagrams.DatagramPath`,
compiled with mypyc like the SIP stack: the asyncio protocol below is a thin
shim around it.

The module is longer than most (about 860 lines) on purpose: the three
transports share one connection table, one send path (connection reuse,
the UDP-to-TCP switch, a failed send reported to the transaction layer) and
one set of limits and counters, and a message's way from the socket to the
callback and back is read in one file; the framing, the TLS acceptor and the
rules live in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from daemons.runtime.certs import TlsAcceptor, TlsTransport
from daemons.runtime.datagrams import DatagramPath
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics
from protocols.sip.errors import MessageTooLarge, ParseError
from protocols.sip.framing import PONG, KeepAlivePing, StreamFramer
from protocols.sip.message import Request, Response
from protocols.sip.rules import (
    DEFAULT_PORTS,
    build_error_response,
    check_proxied,
    check_received,
    fix_top_via,
    rewrite_top_via_transport,
)
from protocols.sip.rules import ip_address as _ip
from protocols.sip.uri import format_host

__all__ = [
    "DEFAULT_PORTS",
    "TRANSPORTS",
    "UDP_SIZE_LIMIT",
    "Flow",
    "MessageHandler",
    "SipTransportManager",
    "TransportError",
]

#: The transports this manager speaks, as written in a Via (§20.42).
TRANSPORTS: Final = ("UDP", "TCP", "TLS")
#: Socket buffers asked for on UDP listeners (the kernel caps them at
#: net.core.rmem_max / wmem_max): a burst must wait in the buffer, not be dropped.
UDP_BUFFER_SIZE: Final = 4 * 2**20
#: §18.1.1: a request within 200 octets of the path MTU (1500) goes over a
#: congestion-controlled transport instead of UDP.
UDP_SIZE_LIMIT: Final = 1300

Address = tuple[str, int]


class TransportError(ConnectionError):
    """A message could not be sent; the TU treats it as a 503 (§8.1.3.1, §17.1.4).

    A :class:`ConnectionError` (so an ``OSError``): RFC 3263 §4.3 fail-over
    loops such as :func:`daemons.runtime.dns.try_targets` move on to the next target.
    """


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from or went to (RFC 5626 §3: a "flow").

    ``connection_id`` identifies the TCP/TLS connection (``None`` for UDP), so a
    response can go back on the connection its request arrived on (§18.2.2).
    """

    transport: str
    remote: Address
    local: Address
    connection_id: int | None = None

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


MessageHandler = Callable[[Request | Response, Flow], None]

# --------------------------------------------------------------------------- sockets


class _UdpEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket (listening, or an ephemeral client socket)."""

    def __init__(self, manager: SipTransportManager) -> None:
        self.manager = manager
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("", 0)
        #: the flows of recent peers (a Flow is immutable: built once per peer)
        self.flows: dict[Address, Flow] = {}
        self._receive = manager._datagrams.receive

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(self, self.flows, data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like, reported on the next receive.
        self.manager._count_drop("UDP", "icmp_error")
        self.manager.log.debug("sip_udp_error", local=_fmt(self.local), error=str(exc))

    def sendto(self, data: bytes, addr: Address) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError(f"UDP socket {_fmt(self.local)} is closed")
        self.transport.sendto(data, addr)


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound, framed by :class:`StreamFramer`."""

    def __init__(self, manager: SipTransportManager, transport_name: str, outbound: bool) -> None:
        self.manager = manager
        self.transport_name = transport_name
        self.outbound = outbound
        #: the name an outbound TLS server proved (RFC 5922); None otherwise
        self.server_name: str | None = None
        self.id = next(manager._ids)
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer(max_size=manager.max_message_size)
        self.remote: Address = ("", 0)
        self.local: Address = ("", 0)
        self.last_activity = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None
        self.closed = asyncio.get_running_loop().create_future()

    @property
    def flow(self) -> Flow:
        return Flow(self.transport_name, self.remote, self.local, self.id)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.remote = (peer[0], peer[1])
        self.local = (sock[0], sock[1])
        self.last_activity = self.manager._loop.time()
        self.manager._register(self)
        self._arm_idle(self.manager.idle_timeout)

    def _arm_idle(self, delay: float) -> None:
        if self.manager.idle_timeout > 0:
            self._idle_handle = self.manager._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        idle = self.manager._loop.time() - self.last_activity
        remaining = self.manager.idle_timeout - idle
        if remaining > 0:
            self._arm_idle(remaining)
            return
        self.manager.log.info("sip_connection_idle_timeout", conn_id=self.id,
                              peer=_fmt(self.remote), transport=self.transport_name,
                              idle_seconds=round(idle, 1))
        self.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.manager._loop.time()
        framer = self.framer
        framer.feed(data)
        while self.transport is not None and not self.transport.is_closing():
            try:
                item = framer.next_message()
            except ParseError as exc:
                self.manager._stream_error(self, exc)
                return
            if item is None:
                return
            if isinstance(item, KeepAlivePing):
                self.manager._count_keepalive(self.transport_name)
                self.write(PONG)
                continue
            self.manager._on_stream_message(self, item)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self.manager._unregister(self, exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError(f"connection {self.id} to {_fmt(self.remote)} is closed")
        self.last_activity = self.manager._loop.time()
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _TlsAccept(TlsAcceptor):
    """A SIP TLS listener's handshake (:class:`TlsAcceptor`), which also reports a
    client that goes away mid-handshake: a client refusing our certificate
    often just closes (Python's asyncio sends no alert), and that is a refused
    handshake too."""

    def connection_lost(self, exc: Exception | None) -> None:
        abandoned = not self.closing and not self.established
        super().connection_lost(exc)
        if abandoned:
            self._on_refused(self.peer, "eof",
                             str(exc) if exc else "connection closed during the TLS handshake")


def _grow_buffers(transport: asyncio.BaseTransport) -> None:
    """Ask for :data:`UDP_BUFFER_SIZE` socket buffers (best effort)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_SIZE)


def _fmt(addr: Address) -> str:
    return f"{format_host(addr[0])}:{addr[1]}"


# --------------------------------------------------------------------------- manager


class SipTransportManager:
    """Every SIP socket of one daemon (RFC 3261 §18), see the module docstring.

    ``on_message(message, flow)`` is called synchronously for each valid
    message; it must not block (schedule work on the loop instead).
    ``proxy_checks`` replaces the full §8.2 check of received requests by the
    lighter §16.3 one (:func:`protocols.sip.rules.check_proxied`).
    ``ssl_context`` serves TLS listeners; ``client_ssl_context`` is used for
    outgoing TLS connections (default: the system's verified context).
    """

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        metrics: Metrics | None = None,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        max_message_size: int = 65536,
        proxy_checks: bool = False,
        udp_size_limit: int = UDP_SIZE_LIMIT,
        logger: Any = None,
    ) -> None:
        self.on_message = on_message
        self._check = check_proxied if proxy_checks else check_received
        self.ssl_context = ssl_context
        self.client_ssl_context = client_ssl_context
        # (IP, port) -> the SIP domain a TLS server there must prove (RFC 5922)
        self._tls_names: dict[Address, str] = {}
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.udp_size_limit = udp_size_limit
        self.log = logger if logger is not None else get_logger("sip_transport")
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._udp: list[_UdpEndpoint] = []
        self._udp_clients: dict[int, _UdpEndpoint] = {}
        #: _ready_udp_endpoint's answer per family (IPv6 or not), for any local port
        self._ready_udp: dict[bool, _UdpEndpoint] = {}
        self._servers: list[tuple[str, asyncio.AbstractServer, Address]] = []
        self._connections: dict[int, _StreamConnection] = {}
        self._by_remote: dict[tuple[str, str, int], int] = {}
        self._connecting: dict[tuple[str, str, int, str], asyncio.Future[_StreamConnection]] = {}
        metrics = metrics if metrics is not None else Metrics("sipcluster")
        self._received = metrics.tally(
            "sip_messages_received", "SIP messages received", ("transport", "kind"))
        self._sent = metrics.tally(
            "sip_messages_sent", "SIP messages sent", ("transport", "kind"))
        self._dropped = metrics.counter(
            "sip_transport_errors", "SIP input dropped or refused, and failed sends",
            ("transport", "reason"))
        self._keepalives = metrics.counter(
            "sip_keepalives_received", "CRLF keep-alives received (RFC 5626 §3.5.1)",
            ("transport",))
        self._tls_refusals = metrics.counter(
            "sip_tls_refused", "TLS handshakes that failed on a SIP TLS listener",
            ("reason",))
        self._conn_gauge = metrics.gauge(
            "sip_connections", "Open SIP stream connections", ("transport",))
        # labelled children of the two per-message counters, looked up once
        self._received_by: dict[tuple[str, str], Any] = {}
        self._sent_by: dict[tuple[str, str], Any] = {}
        self._datagrams = DatagramPath(
            self, on_message, proxy_checks=proxy_checks, max_size=max_message_size,
            make_flow=functools.partial(Flow, "UDP"), ready=self._ready_udp,
            received=self._received, sent=self._sent)

    # ------------------------------------------------------------ listening

    async def listen(self, transport: str, host: str, port: int = 0, *,
                     reuse_port: bool = False) -> Address:
        """Listen for ``transport`` on (host, port); return the bound address (port 0 = any).

        ``reuse_port``: SO_REUSEPORT, so that several processes share the port and
        the kernel spreads datagrams (by source address and port) and connections
        over them (a sip-proxy's ``workers``)."""
        transport = transport.upper()
        if transport == "UDP":
            transport_, proto = await self._loop.create_datagram_endpoint(
                lambda: _UdpEndpoint(self), local_addr=(host, port),
                reuse_port=reuse_port or None)
            _grow_buffers(transport_)
            self._udp.append(proto)
            self._ready_udp.clear()
            self.log.info("sip_listening", transport="UDP", address=_fmt(proto.local))
            return proto.local
        if transport not in ("TCP", "TLS"):
            raise ValueError(f"unsupported SIP transport {transport!r}")
        factory: Callable[[], asyncio.Protocol]
        if transport == "TLS":
            context = self.ssl_context
            if context is None:
                raise ValueError("a TLS listener needs an ssl_context")
            # the handshake done in memory: a refused one is ours to log and count
            factory = lambda: _TlsAccept(context, self._tls_open, self._tls_refused)  # noqa: E731
        else:
            factory = lambda: _StreamConnection(self, "TCP", outbound=False)  # noqa: E731
        server = await self._loop.create_server(factory, host, port, reuse_address=True,
                                                reuse_port=reuse_port or None)
        sockname = server.sockets[0].getsockname()
        local = (sockname[0], sockname[1])
        self._servers.append((transport, server, local))
        self.log.info("sip_listening", transport=transport, address=_fmt(local))
        return local

    def _tls_open(self, transport: TlsTransport, peer: str,
                  name: str | None) -> tuple[Callable[[bytes], None], Callable[[], None]]:
        """An accepted TLS connection whose handshake succeeded: from here on it
        is a stream connection like TCP (the framer, keep-alives, idle timeout)."""
        conn = _StreamConnection(self, "TLS", outbound=False)
        conn.connection_made(cast(asyncio.Transport, transport))
        return conn.data_received, lambda: conn.connection_lost(None)

    def _tls_refused(self, peer: str, reason: str, error: str) -> None:
        """A TLS handshake on a listener that failed: a client refusing our
        certificate, a certificate of a foreign CA, plaintext, a timeout."""
        self._tls_refusals.labels(reason).inc()
        self._count_drop("TLS", "handshake_failed")
        self.log.warning("sip_tls_handshake_refused", peer=peer, reason=reason, error=error)

    async def listen_pair(self, host: str, port: int = 0, *, attempts: int = 20,
                          reuse_port: bool = False) -> Address:
        """Listen for UDP and TCP on one port (a Via sent-by serves both, RFC 3261
        §18); with port 0, a number free for both (the UDP pick may be taken for
        TCP: try again). Returns the bound address."""
        for _ in range(attempts if port == 0 else 1):
            udp = await self.listen("UDP", host, port, reuse_port=reuse_port)
            try:
                await self.listen("TCP", host, udp[1], reuse_port=reuse_port)
            except OSError as exc:
                if port != 0 or exc.errno != errno.EADDRINUSE:
                    raise
                self._close_udp_listener(udp)
                continue
            return udp
        raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host}")

    def _close_udp_listener(self, local: Address) -> None:
        for proto in list(self._udp):
            if proto.local == local:
                self._udp.remove(proto)
                self._ready_udp.clear()
                if proto.transport is not None:
                    proto.transport.close()

    def local_address(self, transport: str) -> Address | None:
        """The first listening address for ``transport`` (what goes in Via sent-by)."""
        transport = transport.upper()
        if transport == "UDP":
            return self._udp[0].local if self._udp else None
        for name, _, local in self._servers:
            if name == transport:
                return local
        return None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def connection(self, connection_id: int) -> Flow | None:
        conn = self._connections.get(connection_id)
        return conn.flow if conn is not None else None

    async def close(self) -> None:
        """Close every listener and connection."""
        for _, server, _ in self._servers:
            server.close()
        for conn in list(self._connections.values()):
            conn.close()
        waits = [c.closed for c in self._connections.values()]
        if waits:
            await asyncio.wait(waits, timeout=2.0)
        for _, server, _ in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        for ep in [*self._udp, *self._udp_clients.values()]:
            if ep.transport is not None:
                ep.transport.close()
        for fut in self._connecting.values():
            fut.cancel()
        self._servers.clear()
        self._udp.clear()
        self._udp_clients.clear()
        self._ready_udp.clear()

    # ------------------------------------------------------------ receiving

    def _on_stream_message(self, conn: _StreamConnection, msg: Request | Response) -> None:
        flow = conn.flow
        try:
            self._check(msg)
        except ParseError as exc:
            self._malformed(msg.serialize(), flow, exc, conn.write)
            return
        self._deliver(msg, flow)

    def _stream_error(self, conn: _StreamConnection, exc: ParseError) -> None:
        """The stream cannot be framed any more: answer if possible, then close (§18.3)."""
        reason = "oversized" if isinstance(exc, MessageTooLarge) else "framing_error"
        self._count_drop(conn.transport_name, reason)
        event = "sip_stream_oversized" if reason == "oversized" else "sip_stream_framing_error"
        self.log.warning(event, conn_id=conn.id, peer=_fmt(conn.remote),
                         transport=conn.transport_name, reason=exc.reason, status=exc.status)
        pending = bytes(conn.framer._buf[: self.max_message_size])
        answer = build_error_response(pending, exc.status, exc.reason)
        if answer is not None:
            with contextlib.suppress(TransportError):
                conn.write(answer)
        conn.close()

    def _malformed(
        self, data: bytes, flow: Flow, exc: ParseError, reply: Callable[[bytes], None]
    ) -> None:
        answer = build_error_response(data, exc.status, exc.reason)
        self._count_drop(flow.transport, "malformed")
        self.log.warning("sip_malformed_message", peer=_fmt(flow.remote), transport=flow.transport,
                         reason=exc.reason, status=exc.status, answered=answer is not None,
                         size=len(data))
        if answer is not None:
            try:
                reply(answer)
            except (TransportError, OSError) as err:
                self.log.info("sip_send_failed", peer=_fmt(flow.remote), error=str(err))
                return
            self._count_sent(flow.transport, "response")

    def _deliver(self, msg: Request | Response, flow: Flow) -> None:
        if isinstance(msg, Request):
            fix_top_via(msg, flow.remote)
            key = (flow.transport, "request")
        else:
            key = (flow.transport, "response")
        child = self._received_by.get(key)
        if child is None:
            child = self._received_by[key] = self._received.labels(*key)
        child.inc()
        try:
            self.on_message(msg, flow)
        except Exception:  # a bug in a handler must not stop the listener
            self._handler_failed(flow)

    def _handler_failed(self, flow: Flow) -> None:
        """The handler raised on a message of ``flow`` (called while it is handled)."""
        self._count_drop(flow.transport, "handler_error")
        self.log.exception("sip_message_handler_failed", peer=_fmt(flow.remote))

    def _count_sent(self, transport: str, kind: str) -> None:
        key = (transport, kind)
        child = self._sent_by.get(key)
        if child is None:
            child = self._sent_by[key] = self._sent.labels(transport, kind)
        child.inc()

    def _count_drop(self, transport: str, reason: str) -> None:
        self._dropped.labels(transport, reason).inc()

    def _count_keepalive(self, transport: str) -> None:
        self._keepalives.labels(transport).inc()

    # ------------------------------------------------------------ connections

    def _register(self, conn: _StreamConnection) -> None:
        self._connections[conn.id] = conn
        self._by_remote[(conn.transport_name, conn.remote[0], conn.remote[1])] = conn.id
        self._conn_gauge.labels(conn.transport_name).inc()
        self.log.debug("sip_connection_opened", conn_id=conn.id, peer=_fmt(conn.remote),
                       transport=conn.transport_name, outbound=conn.outbound)

    def _unregister(self, conn: _StreamConnection, exc: Exception | None) -> None:
        if self._connections.pop(conn.id, None) is None:
            return
        key = (conn.transport_name, conn.remote[0], conn.remote[1])
        if self._by_remote.get(key) == conn.id:
            del self._by_remote[key]
        self._conn_gauge.labels(conn.transport_name).dec()
        self.log.debug("sip_connection_closed", conn_id=conn.id, peer=_fmt(conn.remote),
                       transport=conn.transport_name, error=str(exc) if exc else None)

    def _source_for(self, addr: Address) -> Address | None:
        """The local address outgoing connections to ``addr`` leave from: the host
        of our first listener bound to one address of the same family, so that
        peers that know us by address (a proxy recognising its nodes) see it,
        as they do for our UDP datagrams; ``None`` (the kernel's choice) when
        we listen on a wildcard address only."""
        v6 = ":" in addr[0]
        hosts = [local[0] for _, _, local in self._servers]
        hosts.extend(ep.local[0] for ep in self._udp)
        for host in hosts:
            if (":" in host) == v6 and host not in ("0.0.0.0", "::"):
                return (host, 0)
        return None

    def expect_tls_name(self, addr: Address, server_name: str) -> None:
        """A TLS connection to ``addr`` must present a certificate for ``server_name``.

        RFC 5922 §4.1, §7.2: the client checks the server's identity against
        the SIP domain it resolved (the URI's host, before NAPTR/SRV), not the
        address it connects to. Without an entry the address itself, or the
        host name a message was sent to, is checked.
        """
        names = self._tls_names
        if len(names) >= 4096 and addr not in names:
            names.clear()
        names[addr] = server_name

    async def _connect(
        self, transport: str, addr: Address, host_name: str | None = None
    ) -> _StreamConnection:
        server_name = self._tls_name(transport, addr, host_name)
        key = (transport, addr[0], addr[1], server_name or "")
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[_StreamConnection] = self._loop.create_future()
        self._connecting[key] = fut
        try:
            ctx: ssl.SSLContext | None = None
            if transport == "TLS":
                ctx = self.client_ssl_context or ssl.create_default_context()
            _, proto = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _StreamConnection(self, transport, outbound=True), addr[0], addr[1],
                    ssl=ctx, server_hostname=server_name, local_addr=self._source_for(addr)),
                self.connect_timeout)
            proto.server_name = server_name
            fut.set_result(proto)
            return proto
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLError):
                # a certificate or protocol mismatch is a configuration fault: say so loudly
                self.log.warning("sip_tls_handshake_failed", peer=_fmt(addr),
                                 server_name=server_name,
                                 reason=getattr(exc, "verify_message", None) or str(exc))
            err = TransportError(f"cannot connect over {transport} to {_fmt(addr)}: {exc}")
            fut.set_exception(err)
            fut.exception()  # retrieved: waiters get it through shield
            raise err from exc
        finally:
            del self._connecting[key]

    # ------------------------------------------------------------ sending

    def prepare_request(self, request: Request, transport: str) -> str:
        """The transport to send ``request`` on; rewrites the top Via when it changes.

        §18.1.1: a request over UDP that is larger than ``udp_size_limit`` (MTU
        minus 200) goes over TCP; the Via transport (and port, when we listen
        on TCP) are updated so responses come back the same way.
        """
        transport = transport.upper()
        if transport != "UDP" or len(request.serialize()) <= self.udp_size_limit:
            return transport
        tcp = self.local_address("TCP")
        rewrite_top_via_transport(request, "TCP", tcp[1] if tcp else None)
        self.log.debug("sip_request_switched_to_tcp", method=request.method,
                       size=len(request.serialize()))
        return "TCP"

    async def send(
        self,
        message: Request | Response | bytes,
        transport: str,
        addr: Address,
        *,
        connection_id: int | None = None,
    ) -> Flow:
        """Send one message to ``addr`` over ``transport``; return the flow used.

        TCP/TLS: the connection ``connection_id`` if still open (a response on
        its request's connection, §18.2.2), else an open connection to
        ``addr``, else a new one. A UDP request above the size limit goes over
        TCP (see :meth:`prepare_request`), falling back to UDP when the TCP
        connection is refused (§18.1.1). Raises :class:`TransportError`.
        """
        transport = transport.upper()
        if isinstance(message, bytes):
            data = message
            kind = "request" if not message.startswith(b"SIP/") else "response"
        else:
            kind = "request" if isinstance(message, Request) else "response"
            if isinstance(message, Request) and transport == "UDP":
                original = message.headers.get_lines("Via")
                switched = self.prepare_request(message, transport)
                if switched != transport:
                    try:
                        return await self.send(message, switched, addr)
                    except TransportError as exc:
                        self.log.info("sip_tcp_fallback_to_udp", peer=_fmt(addr), error=str(exc))
                        message.headers.remove("Via")
                        for line in reversed(original):
                            message.headers.prepend("Via", line)
            data = message.serialize()
        # a host name (not an address) is also the name a TLS server must prove
        host_name = addr[0] if _ip(addr[0]) is None else None
        host = await self._resolve(addr[0])
        addr = (host, addr[1])
        try:
            if transport == "UDP":
                ep = await self._udp_endpoint(host)
                ep.sendto(data, addr)
                flow = Flow("UDP", addr, ep.local, None)
            elif transport in ("TCP", "TLS"):
                conn = self._stream_for(transport, addr, connection_id,
                                        self._tls_name(transport, addr, host_name))
                if conn is None:
                    conn = await self._connect(transport, addr, host_name)
                conn.write(data)
                flow = conn.flow
            else:
                raise TransportError(f"unsupported SIP transport {transport!r}")
        except (TransportError, OSError) as exc:
            self._count_drop(transport, "send_failed")
            self.log.info("sip_send_failed", peer=_fmt(addr), transport=transport, error=str(exc))
            if isinstance(exc, TransportError):
                raise
            raise TransportError(str(exc)) from exc
        self._count_sent(transport, kind)
        return flow

    def send_nowait(
        self,
        data: bytes,
        transport: str,
        addr: Address,
        *,
        connection_id: int | None = None,
    ) -> Flow | None:
        """Send ``data`` at once if nothing must be awaited (no DNS, no connect).

        Returns the flow used, or ``None`` when :meth:`send` is needed. Keeps
        the order of messages a transaction emits in one go. Raises
        :class:`TransportError`.
        """
        transport = transport.upper()
        kind = "response" if data.startswith(b"SIP/") else "request"
        if _ip(addr[0]) is None:
            return None
        try:
            if transport == "UDP":
                ep = self._ready_udp_endpoint(addr[0])
                if ep is None:
                    return None
                if kind == "request" and len(data) > self.udp_size_limit:
                    return None  # needs prepare_request's switch to TCP
                ep.sendto(data, addr)
                flow = Flow("UDP", addr, ep.local, None)
            else:
                conn = self._stream_for(transport, addr, connection_id,
                                        self._tls_name(transport, addr, None))
                if conn is None:
                    return None
                conn.write(data)
                flow = conn.flow
        except (TransportError, OSError) as exc:
            self._count_drop(transport, "send_failed")
            self.log.info("sip_send_failed", peer=_fmt(addr), transport=transport, error=str(exc))
            if isinstance(exc, TransportError):
                raise
            raise TransportError(str(exc)) from exc
        self._count_sent(transport, kind)
        return flow

    def send_datagram(self, data: bytes, addr: Address, local_port: int | None = None) -> bool:
        """Send ``data`` over UDP from a listening socket at once, without building a
        :class:`Flow` (a proxy's hot path). ``False`` when :meth:`send` is needed (the
        host is not an IP address, or no socket of its family is open); a request
        above the size limit is the caller's business. Raises :class:`TransportError`.
        ``local_port``: from the listener on that port (else the first listener)."""
        return self._datagrams.send(data, addr, local_port)

    def _send_failed(self, transport: str, addr: Address, exc: OSError) -> None:
        """A send to ``addr`` failed: counted, logged, raised as :class:`TransportError`."""
        self._count_drop(transport, "send_failed")
        self.log.info("sip_send_failed", peer=_fmt(addr), transport=transport, error=str(exc))
        if isinstance(exc, TransportError):
            raise exc
        raise TransportError(str(exc)) from exc

    def udp_ready(self, host: str) -> bool:
        """True when a datagram to the IP address ``host`` can leave at once
        (:meth:`send_nowait` needs neither a DNS lookup nor a new socket)."""
        return _ip(host) is not None and self._datagrams.endpoint(host) is not None

    def _tls_name(self, transport: str, addr: Address, host_name: str | None) -> str | None:
        """The name a TLS server at ``addr`` must have proved for a request to reuse
        its connection; None for other transports."""
        if transport != "TLS":
            return None
        return self._tls_names.get(addr) or host_name or addr[0]

    def _stream_for(
        self, transport: str, addr: Address, connection_id: int | None,
        server_name: str | None = None,
    ) -> _StreamConnection | None:
        if connection_id is not None:
            conn = self._connections.get(connection_id)
            if conn is not None and conn.transport is not None and not conn.transport.is_closing():
                return conn
        cid = self._by_remote.get((transport, addr[0], addr[1]))
        if cid is not None:
            conn = self._connections.get(cid)
            if conn is not None and conn.transport is not None and not conn.transport.is_closing():
                # RFC 5922 §7.2 / RFC 5923: an outbound TLS connection serves requests
                # for the name its server proved, not any name at the same address
                if conn.server_name is None or conn.server_name == server_name:
                    return conn
        return None

    async def _resolve(self, host: str) -> str:
        if _ip(host) is not None:
            return host.strip("[]")
        try:
            infos = await self._loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise TransportError(f"cannot resolve {host}: {exc}") from exc
        return str(infos[0][4][0])

    def _ready_udp_endpoint(self, host: str, local_port: int | None = None
                            ) -> _UdpEndpoint | None:
        v6 = ":" in host
        if local_port is None:
            # the answer of the search below, kept per family until a socket
            # opens or the kept one closes: asked for every datagram sent
            ep = self._ready_udp.get(v6)
            if ep is not None and ep.transport is not None and not ep.transport.is_closing():
                return ep
        family = socket.AF_INET6 if v6 else socket.AF_INET
        found = self._udp_clients.get(family)
        for ep in self._udp:
            ep_family = socket.AF_INET6 if ":" in ep.local[0] else socket.AF_INET
            if ep_family == family and ep.transport is not None and \
                    not ep.transport.is_closing() and local_port in (None, ep.local[1]):
                found = ep
                break
        if local_port is None and found is not None:
            self._ready_udp[v6] = found
        return found

    async def _udp_endpoint(self, host: str) -> _UdpEndpoint:
        ep = self._ready_udp_endpoint(host)
        if ep is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            bind = "::" if family == socket.AF_INET6 else "0.0.0.0"
            _, ep = await self._loop.create_datagram_endpoint(
                lambda: _UdpEndpoint(self), local_addr=(bind, 0))
            self._udp_clients[family] = ep
            self._ready_udp.clear()
        return ep
