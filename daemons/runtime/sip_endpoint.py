"""A SIP endpoint for the daemons: the sans-I/O transaction layer wired to the
transports and the event loop (RFC 3261 §8, §13, §17, §18).

:class:`SipEndpoint` owns one :class:`~daemons.runtime.sip_transport.SipTransportManager`
and one :class:`~protocols.sip.transaction.TransactionLayer`:

* every message the transports deliver is fed to the layer; the layer's timers
  run on the event loop (``handle_timer(loop.time())`` scheduled at
  ``next_timer()``); what the layer queues is put on the wire, each response of
  a server transaction on the connection its request came in on (§18.2.2);
* a new request is passed to the TU's handler coroutine as an
  :class:`IncomingRequest`; the handler returns the response(s) or sends them
  itself, and can wait for a CANCEL (``incoming.cancelled``);
* CANCEL is answered by the endpoint (200, then 487 for the INVITE, §9.2);
  a 2xx to INVITE is retransmitted over UDP until its ACK arrives (§13.3.1.4);
* as a client, :meth:`SipEndpoint.request` adds the Via, sends through a
  client transaction to the targets of RFC 3263 (fail-over on timeout or
  transport error, §4.3) and returns the final response; :meth:`send_ack`
  acknowledges a 2xx (§13.2.2.4, resent on 2xx retransmissions) and
  :meth:`cancel` cancels a pending INVITE (§9.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daemons.runtime.dns import SipResolver
from daemons.runtime.driver import TimerSlot
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics
from daemons.runtime.sip_transport import (
    DEFAULT_PORTS,
    Flow,
    SipTransportManager,
    TransportError,
)
from protocols.sip.dialog import Dialog, ack_route
from protocols.sip.errors import ParseError, SipError
from protocols.sip.headers import Via
from protocols.sip.message import Request, Response, make_response
from protocols.sip.timers import TimerSettings
from protocols.sip.transaction import (
    AckFor2xx,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimeout,
    Transmit,
    TransportFailed,
    client_key,
)
from protocols.sip.uri import SipUri, format_host, parse_uri

__all__ = [
    "Destination",
    "IncomingRequest",
    "RequestHandler",
    "SipEndpoint",
]

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Destination:
    """An explicit next hop: transport, host (IP or name) and port.

    ``server_name`` is the SIP domain the hop was located under (RFC 3263): a
    TLS connection checks the server's certificate against it, not against
    the address (RFC 5922 §4.1, §7.2). Empty: the host itself is checked.
    """

    transport: str
    host: str
    port: int
    server_name: str = ""

    @classmethod
    def parse(cls, text: str, transport: str = "UDP") -> Destination:
        """``host:port`` or ``[v6]:port`` (port defaults per transport)."""
        host, _, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
        if not host or "]" in port:
            host, port = text, ""
        return cls(transport.upper(), host.strip("[]"),
                   int(port) if port else DEFAULT_PORTS.get(transport.upper(), 5060))


class IncomingRequest:
    """A request that created a server transaction, as the TU sees it (§8.2, §17.2).

    ``to_tag`` is the tag every response of ours carries (§8.2.6.2), so all
    responses to this request, and the 200 to its CANCEL, agree. ``cancelled``
    is set when a CANCEL for it arrives (created when first asked for: most
    requests are never cancelled, and an event costs as much as the request's
    other state).
    """

    __slots__ = ("_cancelled", "endpoint", "final_sent", "flow", "key", "request", "to_tag")

    def __init__(
        self, endpoint: SipEndpoint, request: Request, flow: Flow, key: TransactionKey | None
    ) -> None:
        self.endpoint = endpoint
        self.request = request
        self.flow = flow
        self.key = key
        self.to_tag = request.to.tag or secrets.token_hex(6)
        self._cancelled: asyncio.Event | None = None
        self.final_sent = False

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when a CANCEL for this request arrives (§9.2)."""
        event = self._cancelled
        if event is None:
            event = self._cancelled = asyncio.Event()
        return event

    @property
    def method(self) -> str:
        return self.request.method

    def response(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """A response to this request (§8.2.6) with our To tag (none on 100)."""
        tag = None if status == 100 else self.to_tag
        resp = make_response(self.request, status, reason, to_tag=tag, body=body)
        for name, value in headers:
            resp.headers.add(name, value)
        return resp

    def respond(
        self,
        status: int | Response,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response | None:
        """Send a response now; ``None`` when the transaction no longer takes it."""
        resp = status if isinstance(status, Response) else self.response(
            status, reason, headers=headers, body=body)
        return self.endpoint.send_response(resp)


#: The TU: returns the response(s) to send, or ``None`` if it sent them itself.
RequestHandler = Callable[[IncomingRequest], Awaitable[Response | Sequence[Response] | None]]
ProvisionalCallback = Callable[[Response], None]


class _ClientRequest:
    """A request the TU sent and is waiting on, with its remaining targets (RFC 3263 §4.3)."""

    def __init__(self, request: Request, targets: list[Destination],
                 on_provisional: ProvisionalCallback | None) -> None:
        self.request = request
        self.targets = targets
        self.on_provisional = on_provisional
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.got_provisional = False
        self.destination: Destination | None = None
        self.via_added = False


@dataclass(slots=True)
class _Retransmit2xx:
    """A 2xx to INVITE resent until its ACK comes (§13.3.1.4)."""

    response: Response
    interval: float
    deadline: float
    handle: asyncio.TimerHandle | None = None


class SipEndpoint:
    """Transaction layer + transports + timers on the running event loop (see module doc).

    Create it inside a running loop; call :meth:`listen` for each transport,
    then use :meth:`request` / the handler. ``metrics`` is the daemon's
    :class:`~daemons.runtime.management.Metrics`.
    """

    def __init__(
        self,
        handler: RequestHandler | None = None,
        *,
        metrics: Metrics | None = None,
        timers: TimerSettings | None = None,
        resolver: SipResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = 300.0,
        user_agent: str = "sipcluster",
        logger: Any = None,
    ) -> None:
        self.handler = handler
        self.log = logger if logger is not None else get_logger("sip_endpoint")
        self.metrics = metrics if metrics is not None else Metrics("sipcluster")
        self.layer = TransactionLayer(timers)
        self.transport = SipTransportManager(
            self._on_message, metrics=self.metrics, ssl_context=ssl_context,
            client_ssl_context=client_ssl_context, idle_timeout=idle_timeout, logger=self.log)
        self._resolver = resolver
        self.user_agent = user_agent
        self._loop = asyncio.get_running_loop()
        self._timer = TimerSlot(self._loop, self._on_timer)
        self._flow: Flow | None = None
        self._server_flows: dict[TransactionKey, Flow] = {}
        self._incoming: dict[TransactionKey, IncomingRequest] = {}
        #: INVITEs whose final response went out -> its To tag, until the
        #: transaction ends (a late CANCEL gets 200 with it)
        self._answered_invites: dict[TransactionKey, str | None] = {}
        self._handler_tasks: dict[TransactionKey, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clients: dict[TransactionKey, _ClientRequest] = {}
        self._acks: dict[tuple[str, int, str], tuple[bytes, Destination]] = {}
        #: INVITE client transaction -> the ACKs above sent for its 2xx (one per
        #: dialog the INVITE created), dropped when the transaction ends
        self._ack_keys: dict[TransactionKey, tuple[tuple[str, int, str], ...]] = {}
        self._retrans: dict[tuple[str, int, str], _Retransmit2xx] = {}
        self._closed = False
        self._requests_in = self.metrics.counter(
            "sip_requests_received", "New SIP requests passed to the TU", ("method",))
        self._responses_out = self.metrics.counter(
            "sip_responses_sent", "Responses the TU sent", ("status",))
        self._timeouts = self.metrics.counter(
            "sip_transaction_timeouts", "Transactions ended by timer B, F or H", ("timer",))
        self._stray = self.metrics.counter(
            "sip_stray_messages", "Responses and ACKs matching no transaction or dialog",
            ("kind",))

    # ------------------------------------------------------------ lifecycle

    async def listen(self, transport: str, host: str, port: int = 0) -> Address:
        """Listen for ``transport`` on (host, port); returns the bound address."""
        return await self.transport.listen(transport, host, port)

    async def listen_pair(self, host: str, port: int = 0) -> Address:
        """Listen for UDP and TCP on one port (see SipTransportManager.listen_pair)."""
        return await self.transport.listen_pair(host, port)

    def local_address(self, transport: str) -> Address | None:
        return self.transport.local_address(transport)

    async def close(self) -> None:
        """Stop timers, handlers and sockets."""
        self._closed = True
        self._timer.cancel()
        for retrans in self._retrans.values():
            if retrans.handle is not None:
                retrans.handle.cancel()
        tasks = [*self._tasks, *self._handler_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in self._clients.values():
            if not client.future.done():
                client.future.cancel()
        await self.transport.close()

    # ------------------------------------------------------------ the layer on the loop

    def _now(self) -> float:
        return self._loop.time()

    def _flush(self) -> None:
        """Put queued messages on the wire, hand events to the TU, re-arm the timer."""
        layer = self.layer
        while True:
            out = layer.messages_to_send()
            for tx in out:
                self._transmit(tx)
            event = layer.next_event()
            if event is None and not out:
                break
            if event is not None:
                self._dispatch(event)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if not self._closed:
            self._timer.arm(self.layer.next_timer())

    def _on_timer(self, now: float) -> None:
        self.layer.handle_timer(now)
        self._flush()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ wire output

    def _transmit(self, tx: Transmit) -> None:
        connection_id = None
        destination = tx.destination
        flow = self._server_flows.get(tx.key) if tx.key is not None else None
        if flow is not None and flow.reliable:
            connection_id = flow.connection_id
            if self.transport.connection(flow.connection_id or 0) is None and isinstance(
                tx.message, Response
            ):
                # §18.2.2: the connection is gone; open one to received / sent-by port.
                via = tx.message.top_via
                destination = (via.received or via.host,
                               via.port or DEFAULT_PORTS.get(via.transport, 5060))
                connection_id = None
        try:
            sent = self.transport.send_nowait(
                tx.data, tx.transport, destination, connection_id=connection_id)
        except TransportError:
            self._transport_failed(tx)
            return
        if sent is None:
            self._spawn(self._transmit_async(tx, destination, connection_id))

    async def _transmit_async(
        self, tx: Transmit, destination: Address, connection_id: int | None
    ) -> None:
        try:
            await self.transport.send(tx.data, tx.transport, destination,
                                      connection_id=connection_id)
        except TransportError:
            self._transport_failed(tx)

    def _transport_failed(self, tx: Transmit) -> None:
        if tx.key is not None:
            self.layer.transport_error(tx.key, self._now())
            self._flush()

    # ------------------------------------------------------------ wire input

    def _on_message(self, message: Request | Response, flow: Flow) -> None:
        self._flow = flow
        try:
            self.layer.receive(message, flow.remote, self._now(), flow.transport)
        except (ParseError, TransactionError) as exc:
            self.transport._count_drop(flow.transport, "transaction_error")
            self.log.warning("sip_message_refused", peer=f"{flow.remote[0]}:{flow.remote[1]}",
                             reason=str(exc))
        finally:
            self._flush()
            self._flow = None

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event.key, event.request)
        elif isinstance(event, CancelReceived):
            self._on_cancel(event)
        elif isinstance(event, AckFor2xx):
            self._on_ack(event)
        elif isinstance(event, ResponseReceived):
            self._on_response(event.key, event.response)
        elif isinstance(event, StrayResponse):
            self._on_stray_response(event.response)
        elif isinstance(event, TransactionTimeout):
            self._timeouts.labels(event.timer.value).inc()
            self._client_failed(event.key, 408, "transaction_timeout")
        elif isinstance(event, TransportFailed):
            self._client_failed(event.key, 503, "transport_failed")
        elif isinstance(event, TransactionTerminated):
            self._on_terminated(event.key)

    # ------------------------------------------------------------ server side

    def _current_flow(self, request: Request) -> Flow:
        if self._flow is not None:
            return self._flow
        via = request.top_via
        return Flow(via.transport, (via.host, via.port or 5060), ("", 0), None)

    def _on_request(self, key: TransactionKey, request: Request) -> None:
        if request.method == "BYE" and self._retrans:
            # The peer hangs up, so it got our 2xx even if its ACK was lost.
            ident = (request.call_id, request.from_.tag or "")
            for retrans_id in [i for i in self._retrans if (i[0], i[2]) == ident]:
                handle = self._retrans.pop(retrans_id).handle
                if handle is not None:
                    handle.cancel()
        flow = self._current_flow(request)
        self._server_flows[key] = flow
        incoming = IncomingRequest(self, request, flow, key)
        self._incoming[key] = incoming
        self._requests_in.labels(request.method).inc()
        if self.handler is None:
            incoming.respond(501 if request.method != "OPTIONS" else 200)
            return
        task = self._loop.create_task(self._run_handler(incoming))
        self._handler_tasks[key] = task

    async def _run_handler(self, incoming: IncomingRequest) -> None:
        assert self.handler is not None and incoming.key is not None
        key = incoming.key
        try:
            result = await self.handler(incoming)
            if result is None:
                return
            responses = [result] if isinstance(result, Response) else list(result)
            for response in responses:
                self.send_response(response)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("sip_handler_failed", method=incoming.method,
                               call_id=incoming.request.call_id)
            if not incoming.final_sent:
                with contextlib.suppress(SipError):
                    self.send_response(incoming.response(500))
        finally:
            self._handler_tasks.pop(key, None)

    def send_response(self, response: Response) -> Response | None:
        """Pass a TU response to its server transaction (§17.2); ``None`` if it is gone.

        A 2xx to INVITE is then retransmitted over unreliable transports until
        the ACK arrives or 64*T1 passes (§13.3.1.4).
        """
        if not any(name.lower() in ("server", "user-agent") for name, _ in response.headers):
            response.headers.add("Server", self.user_agent)
        try:
            key = self.layer.send_response(response, self._now())
        except TransactionError as exc:
            self.log.info("sip_response_not_sent", status=response.status,
                          call_id=response.call_id, reason=str(exc))
            return None
        self._responses_out.labels(str(response.status)).inc()
        incoming = self._incoming.get(key)
        if incoming is not None and response.status >= 200:
            incoming.final_sent = True
            # the transaction absorbs retransmissions from here on: do not hold
            # the request for timers J/H/L; a late CANCEL of an INVITE only
            # needs the To tag (§9.2: 200, no effect)
            del self._incoming[key]
            if incoming.method == "INVITE":
                # keyed by the layer's own key object (``incoming.key``), not a copy
                self._answered_invites[incoming.key or key] = incoming.to_tag
        if (response.cseq.method == "INVITE" and 200 <= response.status < 300):
            txn = self.layer.get(key)
            if txn is not None and not txn.reliable:
                settings = self.layer.settings
                ident = (response.call_id, response.cseq.number, response.from_.tag or "")
                retrans = _Retransmit2xx(response, settings.t1, self._now() + settings.timeout)
                old = self._retrans.pop(ident, None)
                if old is not None and old.handle is not None:
                    old.handle.cancel()
                self._retrans[ident] = retrans
                retrans.handle = self._loop.call_later(retrans.interval, self._resend_2xx, ident)
        self._flush()
        return response

    def _resend_2xx(self, ident: tuple[str, int, str]) -> None:
        retrans = self._retrans.get(ident)
        if retrans is None:
            return
        now = self._now()
        if now >= retrans.deadline:
            del self._retrans[ident]
            self.log.warning("sip_ack_timeout", call_id=ident[0], cseq=ident[1])
            self._timeouts.labels("2xx-ack").inc()
            return
        try:
            self.layer.send_response(retrans.response, now)
        except TransactionError:
            del self._retrans[ident]  # the transaction ended (timer L)
            return
        self.layer.counters["retransmissions"] += 1
        retrans.interval = min(2 * retrans.interval, self.layer.settings.t2)
        retrans.handle = self._loop.call_later(retrans.interval, self._resend_2xx, ident)
        self._flush()

    def _on_ack(self, event: AckFor2xx) -> None:
        request = event.request
        ident = (request.call_id, request.cseq.number, request.from_.tag or "")
        retrans = self._retrans.pop(ident, None)
        if retrans is not None:
            if retrans.handle is not None:
                retrans.handle.cancel()
        elif event.invite_key is None:
            self._stray.labels("ack").inc()
        if self.handler is None:
            return
        flow = self._current_flow(request)
        incoming = IncomingRequest(self, request, flow, None)
        self._spawn(self._run_ack_handler(incoming))

    async def _run_ack_handler(self, incoming: IncomingRequest) -> None:
        assert self.handler is not None
        try:
            await self.handler(incoming)
        except Exception:
            self.log.exception("sip_handler_failed", method="ACK",
                               call_id=incoming.request.call_id)

    def _on_cancel(self, event: CancelReceived) -> None:
        """§9.2: 481 if nothing matches; else 200, and 487 for a pending INVITE."""
        flow = self._current_flow(event.request)
        self._server_flows[event.key] = flow
        invite = self._incoming.get(event.invite_key) if event.invite_key else None
        to_tag = invite.to_tag if invite is not None else None
        if invite is None:
            if event.invite_key is not None and event.invite_key in self._answered_invites:
                # the INVITE already has its final response: 200, no effect (§9.2)
                tag = self._answered_invites[event.invite_key]
                self._send_plain(make_response(event.request, 200, to_tag=tag))
                return
            self._send_plain(make_response(event.request, 481, to_tag=secrets.token_hex(6)))
            return
        self._send_plain(make_response(event.request, 200, to_tag=to_tag))
        invite.cancelled.set()
        assert event.invite_key is not None
        if self.layer.state(event.invite_key) is TransactionState.PROCEEDING:
            self.send_response(invite.response(487))
        task = self._handler_tasks.get(event.invite_key)
        if task is not None:
            task.cancel()

    def _send_plain(self, response: Response) -> None:
        try:
            self.layer.send_response(response, self._now())
        except TransactionError as exc:
            self.log.info("sip_response_not_sent", status=response.status, reason=str(exc))
            return
        self._responses_out.labels(str(response.status)).inc()

    def _on_terminated(self, key: TransactionKey) -> None:
        self._server_flows.pop(key, None)
        self._incoming.pop(key, None)
        self._answered_invites.pop(key, None)
        for ident in self._ack_keys.pop(key, ()):
            self._acks.pop(ident, None)
        client = self._clients.pop(key, None)
        if client is not None and not client.future.done():
            response = make_response(client.request, 408, "Transaction Terminated")
            client.future.set_result(response)

    # ------------------------------------------------------------ client side

    def _sent_by(self, transport: str, remote_host: str) -> Address:
        local = self.local_address(transport) or self.local_address("UDP") \
            or self.local_address("TCP")
        if local is None:
            raise TransportError("the endpoint listens on no transport")
        host, port = local
        if host in ("0.0.0.0", "::"):
            host = _source_address(remote_host)
        return host, port

    def via_for(self, transport: str, remote_host: str, branch: str | None = None) -> Via:
        """Our Via for a request towards ``remote_host`` (§8.1.1.7, RFC 3581 rport)."""
        host, port = self._sent_by(transport, remote_host)
        branch = branch or self.layer.new_branch()
        return Via(transport, host, port, {"branch": branch, "rport": None})

    def contact_uri(self, transport: str = "UDP", user: str | None = None,
                    remote_host: str = "127.0.0.1") -> str:
        """A Contact URI reaching this endpoint over ``transport``."""
        host, port = self._sent_by(transport, remote_host)
        userinfo = f"{user}@" if user else ""
        suffix = "" if transport.upper() == "UDP" else f";transport={transport.lower()}"
        return f"sip:{userinfo}{format_host(host)}:{port}{suffix}"

    async def resolve(self, target: str | SipUri | Destination,
                      default_transport: str | None = None) -> list[Destination]:
        """Targets for a URI (RFC 3263 via :class:`SipResolver`) or an explicit destination."""
        if isinstance(target, Destination):
            return [target]
        uri = parse_uri(target) if isinstance(target, str) else target
        transport = uri.params.get("transport") or default_transport
        if self._resolver is None:
            self._resolver = SipResolver()
        targets = await self._resolver.resolve(
            uri.params.get("maddr") or uri.host, port=uri.port, transport=transport,
            secure=uri.scheme == "sips")
        return [Destination(str(t.transport), t.host_ip, t.port, t.server_name)
                for t in targets]

    async def request(
        self,
        request: Request,
        destination: str | SipUri | Destination | None = None,
        *,
        on_provisional: ProvisionalCallback | None = None,
    ) -> Response:
        """Send ``request`` in a client transaction; return its final response (§8.1, §17.1).

        ``destination`` is a URI to locate (RFC 3263) or an explicit
        :class:`Destination`; by default the first Route, else the Request-URI
        (§8.1.2). The top Via (with a new branch and ``rport``) is added here;
        Max-Forwards 70 when absent. Timeouts and transport errors fail over to
        the next target and, when none is left, give a 408 / 503 response
        built locally (§8.1.3.1). ``on_provisional`` sees each 1xx.
        """
        if destination is None:
            routes = request.routes
            destination = routes[0].uri if routes else request.uri
        targets = await self.resolve(destination)
        if not targets:
            return make_response(request, 503, "No Targets")
        if "max-forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        if "user-agent" not in request.headers:
            request.headers.add("User-Agent", self.user_agent)
        client = _ClientRequest(request, targets, on_provisional)
        self._start_client(client)
        return await client.future

    def _start_client(self, client: _ClientRequest) -> None:
        request = client.request
        dest = client.targets.pop(0)
        client.destination = dest
        via = self.via_for(dest.transport, dest.host)
        if client.via_added:
            request.headers.remove_first("Via")  # fail-over: a new branch (RFC 3263 §4.3)
        request.headers.prepend("Via", str(via))
        client.via_added = True
        transport = self.transport.prepare_request(request, dest.transport)
        if transport != dest.transport:
            dest = Destination(transport, dest.host, dest.port)
            client.destination = dest
        self._expect_tls_name(dest)
        try:
            key = self.layer.send_request(request, (dest.host, dest.port), self._now(),
                                          transport=transport)
        except TransactionError:
            if not client.future.done():
                client.future.set_exception(TransportError("cannot start the transaction"))
            return
        self._clients[key] = client
        self._flush()

    def _expect_tls_name(self, dest: Destination) -> None:
        """Tell the transport the SIP domain a TLS server at ``dest`` must prove
        (RFC 5922): the transaction layer passes only addresses down."""
        if dest.server_name and dest.transport == "TLS":
            self.transport.expect_tls_name((dest.host, dest.port), dest.server_name)

    def _client_failed(self, key: TransactionKey, status: int, why: str) -> None:
        client = self._clients.pop(key, None)
        if client is None:
            if key in self._server_flows:
                self.log.info("sip_server_transaction_failed", reason=why)
            return
        if client.future.done():
            return
        if client.targets and not client.got_provisional:
            self.log.info("sip_target_failover", reason=why,
                          failed=str(client.destination), call_id=client.request.call_id)
            self._start_client(client)
            return
        client.future.set_result(make_response(client.request, status))

    def _on_response(self, key: TransactionKey, response: Response) -> None:
        client = self._clients.get(key)
        if client is None:
            # a 2xx retransmission (or a forked 2xx) to an INVITE already answered:
            # the same ACK again (§13.2.2.4); else the response to a CANCEL, or to a
            # request the TU gave up on
            if response.cseq.method == "INVITE" and 200 <= response.status < 300:
                self._resend_ack(response)
            return
        if response.status < 200:
            client.got_provisional = True
            if client.on_provisional is not None and not client.future.done():
                try:
                    client.on_provisional(response)
                except Exception:
                    self.log.exception("sip_provisional_callback_failed")
            return
        # The final response ends the TU's wait: the transaction alone absorbs what
        # follows (RFC 6026 Accepted state), so the request, the response and the
        # provisional callback (and whatever it holds) are let go now rather than
        # after timer M / K.
        del self._clients[key]
        if not client.future.done():
            client.future.set_result(response)
            return
        if response.cseq.method == "INVITE" and response.status < 300:
            self._resend_ack(response)

    def _on_stray_response(self, response: Response) -> None:
        if response.cseq.method == "INVITE" and 200 <= response.status < 300 \
                and self._resend_ack(response):
            return
        self._stray.labels("response").inc()
        self.log.debug("sip_stray_response", status=response.status, call_id=response.call_id)

    def _resend_ack(self, response: Response) -> bool:
        """§13.2.2.4: a retransmitted 2xx is answered with the same ACK again."""
        ident = (response.call_id, response.cseq.number, response.to.tag or "")
        sent = self._acks.get(ident)
        if sent is None:
            return False
        data, dest = sent
        self._transmit(Transmit(data, (dest.host, dest.port), dest.transport, response, None))
        return True

    async def send_ack(
        self,
        invite: Request,
        response: Response,
        *,
        body: bytes = b"",
        destination: Destination | None = None,
    ) -> Request:
        """ACK a 2xx to ``invite`` (§13.2.2.4): a new transaction-less request in the dialog.

        Built from the dialog the 2xx creates (route set, remote target), with
        the INVITE's CSeq number and credentials; sent to the remote target (or
        first route) over the INVITE's transport unless the URI says otherwise.
        Retransmissions of the 2xx are answered with the same ACK.
        """
        invite_via = invite.top_via
        dialog = Dialog.create_uac(invite, response, transport=invite_via.transport)
        routes, next_hop = ack_route(invite, response, dialog)
        if destination is None:
            targets = await self.resolve(next_hop, default_transport=invite_via.transport)
            if not targets:
                raise TransportError(f"no target for {next_hop}")
            destination = targets[0]
        via = self.via_for(destination.transport, destination.host)
        ack = dialog.create_request("ACK", cseq=invite.cseq.number, via=str(via), body=body)
        for route in routes:
            ack.headers.add("Route", route)
        for name in ("Authorization", "Proxy-Authorization"):
            for value in invite.headers.get_lines(name):
                ack.headers.add(name, value)
        ack.headers.add("User-Agent", self.user_agent)
        data = ack.serialize()
        # the INVITE's Call-ID string (the TU keeps it anyway) rather than the response's copy
        ident = (invite.call_id, response.cseq.number, response.to.tag or "")
        self._acks[ident] = (data, destination)
        txn = self.layer.get(client_key(invite))
        if txn is not None:  # the layer's own key: no second copy per call
            self._ack_keys[txn.key] = (*self._ack_keys.get(txn.key, ()), ident)
        self._expect_tls_name(destination)
        await self.transport.send(data, destination.transport,
                                  (destination.host, destination.port))
        return ack

    def cancel(self, invite: Request) -> bool:
        """CANCEL a pending INVITE sent by :meth:`request` (§9.1); False if too late.

        The CANCEL goes out once a provisional response has arrived; the INVITE
        then normally ends with 487, which :meth:`request` returns.
        """
        key = client_key(invite)
        cancel_key = self.layer.send_cancel(key, self._now())
        self._flush()
        return cancel_key is not None


def _source_address(remote_host: str) -> str:
    """The local IP the kernel would use towards ``remote_host`` (no packet is sent)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(remote_host).version == 6 \
            else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((remote_host, 9))
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1" if family == socket.AF_INET else "::1"

