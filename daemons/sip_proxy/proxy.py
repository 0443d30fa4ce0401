"""The stateful proxy core of the sip-proxy daemon (RFC 3261 §16; guide: "SIP Proxy").

:class:`ProxyCore` wires the sans-I/O :class:`~protocols.sip.transaction.TransactionLayer`
to a :class:`~daemons.runtime.sip_transport.SipTransportManager` and applies
the proxy rules:

* request validation (§16.3): Request-URI scheme (416), Max-Forwards (483 at
  0, 70 added when absent), loop detection by the branch's loop hash (482,
  §16.6 step 8), Proxy-Require (420 with Unsupported);
* Route processing (§16.4): the proxy's own Route entries are popped (loose
  routing, ``lr``); a Request-URI that is ours (a strict-routing previous hop)
  is replaced by the last Route;
* target choice (docs/sip-proxy.md): REGISTER from endpoints to a local node
  (registrar front, :mod:`.registrar`); new dialogs from endpoints to a node
  by Call-ID hash (:mod:`.routing`); MWI SUBSCRIBEs to the feature-server
  (record-routed with the phone's flow); requests from nodes, and the
  feature-server's in-dialog requests (MWI NOTIFYs), toward the phone's flow or
  registered contact (flow reuse, NAT), via the proxy that holds the phone's
  flow when that is another proxy;
* forwarding (§16.6): Max-Forwards decremented, Record-Route (the proxy stays
  in the dialog; two entries when the transport changes), a Via with a
  loop-hash branch and ``rport``, a client transaction per target;
* responses (§16.7): the top Via popped, 100 absorbed, provisional and final
  answers forwarded on the server transaction, every 2xx to INVITE forwarded;
  a 503 or a transport failure from a node fails over to the next node;
* CANCEL (§16.10): 200 at once, CANCEL sent on the pending branch, its 487
  forwarded; ACK for 2xx and stray 2xx retransmissions forwarded statelessly;
* the private ``X-SC-Node`` header names the node of a dialog inside the
  cluster and never reaches an endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from daemons.runtime.driver import TimerSlot
from daemons.runtime.management import Metrics
from daemons.runtime.sip_transport import (
    SipTransportManager,
    TransportError,
)
from daemons.sip_proxy.flows import (
    behind_nat,
    first_route,
    flow_token,
    parse_flow_token,
    phone_side,
    split_hostport,
    uri_dest,
    uri_transport,
)
from daemons.sip_proxy.forwarding import NODE_HEADER, Forward, ProxySettings, loop_hash
from daemons.sip_proxy.hop_by_hop import HopByHop
from daemons.sip_proxy.registrar import Binding, BindingStore, aor_of
from daemons.sip_proxy.registrar_front import RegistrarFront, normalised_uri
from daemons.sip_proxy.routing import NodeTarget, Router
from daemons.sip_proxy.security import AuthGuard, RateLimiter
from protocols.sip.errors import ParseError, SipError
from protocols.sip.headers import parse_name_addr
from protocols.sip.message import Request, Response, make_response
from protocols.sip.splice import edit_request, edit_response, pop_top_via, splice_request
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
    TransactionTerminated,
    TransactionTimeout,
    Transmit,
    TransportFailed,
    response_destination,
)
from protocols.sip.uri import SipUri, format_host, parse_uri

__all__ = ["NODE_HEADER", "ProxyCore", "ProxySettings"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, REFER, INFO, " \
        "MESSAGE, UPDATE, PRACK, PUBLISH"
#: Methods whose dialog-creating requests we record-route (§16.6 step 4).
_DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
_SCHEMES = frozenset({"sip", "sips", "tel"})
_BRANCH_PREFIX = "z9hG4bKsc"
_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")
_NODE_ONLY = (NODE_HEADER,)
#: How late a transaction timer may fire (seconds): one loop wake-up serves every
#: timer due within it, instead of one per transaction at thousands a second.
TIMER_RESOLUTION = 0.01

Address = tuple[str, int]


class ProxyCore(RegistrarFront, HopByHop):
    """Transactions + transports + the proxy rules (see module docstring).

    ``store`` holds the cluster's bindings; ``on_binding`` is called with every
    binding this proxy creates or removes (replication publishes it);
    ``synced()`` says whether the store has caught up (503 until then).
    ``clock`` gives the transactions' ``now`` (default: the event loop's time).
    """

    def __init__(
        self,
        settings: ProxySettings,
        *,
        router: Router,
        store: BindingStore,
        metrics: Metrics,
        log: Any,
        on_binding: Callable[[Binding], None] = lambda b: None,
        synced: Callable[[], bool] = lambda: True,
        peer_alive: Callable[[str], bool] = lambda name: False,
        rate_limiter: RateLimiter | None = None,
        auth_guard: AuthGuard | None = None,
        timers: TimerSettings | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.ssl_context = ssl_context
        self.router = router
        self.store = store
        self.log = log
        self.on_binding = on_binding
        self.synced = synced
        self.peer_alive = peer_alive
        self.rate_limiter = rate_limiter if rate_limiter is not None else RateLimiter(0, 0)
        self.auth_guard = auth_guard if auth_guard is not None else \
            AuthGuard(slow_after=0, block_after=0)
        self.layer = TransactionLayer(timers or TimerSettings())
        self.transport: SipTransportManager | None = None
        self.metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._clock = clock if clock is not None else self._loop.time
        self._timer = TimerSlot(self._loop, self._on_timer, TIMER_RESOLUTION)
        self._by_server: dict[TransactionKey, Forward] = {}
        self._by_client: dict[TransactionKey, Forward] = {}
        self._probes: dict[TransactionKey, Callable[[int | None], None]] = {}
        # §8.1.1.7: branches unique in space and time: a random salt per start, then
        # a counter (no system call per request)
        self._branch_salt = secrets.token_hex(5)
        self._branches = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flushing = False
        self._last_stamp = 0.0
        self._via_settings: ProxySettings | None = None
        self._via_starts: dict[str, str] = {}
        self._own = {(settings.host, settings.port)}
        self._peer_hosts = {h for h, _ in settings.peers.values()}
        self._peers_at = {(h, p): name for name, (h, p) in settings.peers.items()}
        # the feature-server's host: its requests are inside the cluster, toward a phone
        self._fs_host = settings.feature_server[0] if settings.feature_server else None
        #: what the transaction layer reports, by event type
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            RequestReceived: self._on_request,
            ResponseReceived: self._on_response,
            CancelReceived: self._on_cancel,
            AckFor2xx: self._on_ack,
            StrayResponse: self._forward_stray,
            TransactionTimeout: self._on_timeout,
            TransportFailed: self._on_transport_failed,
            TransactionTerminated: self._on_terminated,
        }
        self.requests = metrics.tally(
            "proxy_requests", "Requests by method and what the proxy did",
            ("method", "action"))
        self.responses = metrics.tally(
            "proxy_responses_forwarded", "Responses forwarded upstream",
            ("status_class",))
        self.refused = metrics.tally(
            "proxy_refused", "Requests refused by protection rules", ("reason",))
        self.registrations = metrics.tally(
            "proxy_registrations", "Bindings stored or removed from node answers", ("action",))
        self.failovers = metrics.tally(
            "proxy_node_failovers", "Requests moved to another node", ("reason",))
        self.bindings_gauge = metrics.gauge("proxy_bindings", "Live bindings known")
        # read when scraped: the store changes with every REGISTER and replicated binding
        self.bindings_gauge.set_function(lambda: len(self.store))

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.transport = SipTransportManager(self.on_message, metrics=self.metrics,
                                             logger=self.log, proxy_checks=True,
                                             ssl_context=self.ssl_context)
        host, port = self.settings.host, self.settings.port
        udp = await self.transport.listen_pair(host, port)
        self._own = {(host, udp[1])}
        if udp[1] != port:
            self.settings = replace(self.settings, port=udp[1])
        tls_port = self.settings.tls_port
        if tls_port is not None and self.ssl_context is not None:
            tls = await self.transport.listen("TLS", host, tls_port)
            self._own.add((host, tls[1]))
            if tls[1] != tls_port:
                self.settings = replace(self.settings, tls_port=tls[1])
        elif tls_port is not None:
            self.settings = replace(self.settings, tls_port=None)

    async def close(self) -> None:
        self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            await self.transport.close()

    @property
    def port(self) -> int:
        return self.settings.port

    # ------------------------------------------------------------ loop glue

    def _now(self) -> float:
        return self._clock()

    def _flush(self) -> None:
        """Handle the layer's events, send what they queued, re-arm the timer."""
        if self._flushing:
            return  # a handler's flush: the loop below drains what it queued
        self._flushing = True
        # the events first, then what they queued for the wire in one batch: a
        # message usually makes one event and one batch, and the layer is asked
        # for each only until it has none
        layer = self.layer
        next_event = layer.next_event
        handlers = self._handlers
        try:
            while True:
                event = next_event()
                if event is not None:
                    try:
                        handlers[type(event)](event)
                    except (SipError, ValueError) as exc:
                        self.log.warning("proxy_event_failed", error=str(exc),
                                         event=type(event).__name__)
                    continue
                out = layer.messages_to_send()
                if not out:
                    break
                for tx in out:
                    self._transmit(tx)
        finally:
            self._flushing = False
        self._timer.arm(layer.next_timer())

    def _on_timer(self, now: float) -> None:
        self.layer.handle_timer(now)
        self._flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _transmit(self, tx: Transmit) -> None:
        transport = self.transport
        assert transport is not None
        data = tx.data
        try:
            if tx.transport == "UDP" and (
                    data.startswith(b"SIP/") or len(data) <= transport.udp_size_limit) \
                    and transport.send_datagram(data, tx.destination):
                return
            if transport.send_nowait(data, tx.transport, tx.destination) is None:
                self._spawn(self._transmit_async(tx))
        except TransportError:
            self._transport_failed(tx.key)

    async def _transmit_async(self, tx: Transmit) -> None:
        assert self.transport is not None
        try:
            await self.transport.send(tx.data, tx.transport, tx.destination)
        except TransportError:
            self._transport_failed(tx.key)

    def _transport_failed(self, key: TransactionKey | None) -> None:
        if key is not None:
            self.layer.transport_error(key, self._now())
            self._flush()

    def send_stateless(self, message: Request | Response, transport: str,
                       destination: Address) -> None:
        self.layer.send_stateless(message, destination, transport)
        self._flush()

    # ------------------------------------------------------------ input

    def on_message(self, message: Request | Response, flow: Any) -> None:
        """Transport callback: every valid message (sync, must not block)."""
        limiter = self.rate_limiter
        if limiter.rate > 0 and isinstance(message, Request):
            src = flow.remote[0]
            trusted = self.router.is_node_host(src) or src in self._peer_hosts or \
                src == self._fs_host
            if not trusted and not limiter.allow(src, self._now()):
                self.refused.labels("rate_limit").inc()
                if message.method != "ACK":
                    resp = make_response(message, 503, "Rate Limited")
                    resp.headers.add("Retry-After", str(self.rate_limiter.retry_after()))
                    self.send_stateless(resp, flow.transport, response_destination(
                        message.top_via, flow.remote, flow.transport))
                return
        try:
            self.layer.receive(message, flow.remote, self._now(), flow.transport)
        except (ParseError, TransactionError) as exc:
            self.log.warning("sip_message_refused", peer=f"{flow.remote[0]}:{flow.remote[1]}",
                             reason=str(exc))
        self._flush()

    def _send_udp(self, data: bytes, dest: Address) -> None:
        assert self.transport is not None
        if not self.transport.send_datagram(data, dest):
            self._spawn(self.transport.send(data, "UDP", dest))

    # ------------------------------------------------------------ helpers

    def is_own(self, host: str | None, port: int | None) -> bool:
        if host is None:
            return False
        if port is None and host.lower() in self.settings.own_names:
            return True
        return (host.strip("[]"), port or 5060) in self._own

    def _respond(self, key: TransactionKey, request: Request, status: int,
                 reason: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        resp = make_response(request, status, reason,
                             to_tag=None if status == 100 else hashlib.blake2b(
                                 request.call_id.encode(), digest_size=6).hexdigest())
        for name, value in headers:
            resp.headers.add(name, value)
        try:
            self.layer.send_response(resp, self._now(), key=key)
        except TransactionError as exc:
            self.log.info("sip_response_not_sent", status=status, reason=str(exc))

    def _stamp(self) -> float:
        stamp = max(time.time(), self._last_stamp + 1e-6)
        self._last_stamp = stamp
        return stamp

    def _via_start(self, transport: str) -> str:
        """Our Via for ``transport`` up to the branch value (§16.6 step 8): made
        once per transport and settings."""
        settings = self.settings
        if self._via_settings is not settings:
            self._via_settings = settings
            self._via_starts.clear()
        start = self._via_starts.get(transport)
        if start is None:
            start = self._via_starts[transport] = \
                f"SIP/2.0/{transport} {format_host(settings.host)}:" \
                f"{settings.port_for(transport)};branch="
        return start

    def _rr(self, transport: str, params: dict[str, str], secure: bool = False,
            name: str = "") -> str:
        """Our Record-Route (or Path) for the side that uses ``transport``: the
        port of that transport's listener; a SIPS URI when the request's is one
        (§16.6 step 4), else ``transport=tls`` (RFC 5630 §3.1.3). With ``name``
        (a UDP phone that reached us by the data centre's proxy name): that name,
        without a port, so the phone's in-dialog requests find any proxy of the
        data centre by SRV (RFC 3263) and outlive this one."""
        extra = "".join(f";{k}={v}" for k, v in params.items())
        if name:
            return f"<sip:{name};transport=udp;lr{extra}>"
        host = format_host(self.settings.host)
        port = self.settings.port_for(transport)
        if transport == "TLS" and secure:
            return f"<sips:{host}:{port};lr{extra}>"
        tp = "" if transport == "UDP" else f";transport={transport.lower()}"
        return f"<sip:{host}:{port}{tp};lr{extra}>"

    # ------------------------------------------------------------ requests

    def _on_request(self, event: RequestReceived) -> None:
        key, request, source, transport = event.key, event.request, event.source, \
            event.transport
        method = request.method
        src_host = source[0]
        from_node = self.router.is_node_host(src_host)
        from_peer = src_host in self._peer_hosts and not from_node
        # the feature-server's in-dialog requests (MWI NOTIFYs) go toward the
        # phone like a node's, never to a node
        from_endpoint = not from_node and not from_peer and src_host != self._fs_host
        if not self.synced():
            self.requests.labels(method, "not_synced").inc()
            self._respond(key, request, 503, "Registrations Not Synchronised",
                          (("Retry-After", str(self.settings.sync_retry_after)),))
            return
        ruri = request.ruri
        # §16.3 step 2: the Request-URI scheme
        if ruri.scheme not in _SCHEMES:
            self.requests.labels(method, "unsupported_scheme").inc()
            self._respond(key, request, 416)
            return
        mf = request.max_forwards
        to_us = ruri.scheme in ("sip", "sips") and ruri.user is None \
            and self.is_own(ruri.host, ruri.port)
        # §16.3 step 3: Max-Forwards (an OPTIONS for us is answered even at 0)
        if method == "OPTIONS" and to_us and not request.headers.get("Route"):
            self.requests.labels(method, "answered").inc()
            self._respond(key, request, 200, headers=(("Allow", ALLOW), ("Accept",
                          "application/sdp")))
            return
        if mf is not None and mf <= 0:
            self.requests.labels(method, "too_many_hops").inc()
            self._respond(key, request, 483)
            return
        # §16.3 step 4: loop detection
        lh = loop_hash(request)
        own_host = self.settings.host
        for line in request.headers.get_lines("Via"):
            if own_host not in line:
                continue
            for v in request.vias:
                b = v.branch or ""
                if self.is_own(v.host, v.port) and b.startswith(_BRANCH_PREFIX) \
                        and b[len(_BRANCH_PREFIX):].split(".", 1)[0] == lh:
                    self.requests.labels(method, "loop").inc()
                    self._respond(key, request, 482)
                    return
            break
        # §16.3 step 5: Proxy-Require
        required = request.headers.get_all("Proxy-Require") \
            if "Proxy-Require" in request.headers else None
        if required:
            self.requests.labels(method, "bad_extension").inc()
            self._respond(key, request, 420, headers=(("Unsupported", ", ".join(required)),))
            return
        # Protection against guessing: refused sources get 403 right away
        verdict_delay = 0.0
        if from_endpoint:
            verdict = self.auth_guard.check(src_host, time.monotonic())
            if verdict.refuse:
                self.refused.labels("auth_failures").inc()
                self.requests.labels(method, "refused").inc()
                self._respond(key, request, 403)
                return
            verdict_delay = verdict.delay
        # §16.4: Route processing
        pins: dict[str, str] = {}
        if to_us and request.headers.get("Route"):
            # the previous hop is a strict router: the Request-URI was our Route
            routes = request.headers.get_all("Route")
            request.headers.remove("Route")
            for value in routes[:-1]:
                request.headers.add("Route", value)
            request.uri = parse_name_addr(routes[-1]).uri
        self._pop_own_routes(request, pins)
        fwd = Forward(key, request, source, from_endpoint, delay=verdict_delay, loop_hash=lh,
                       in_transport=transport)
        fwd.had_credentials = "authorization" in request.headers or \
            "proxy-authorization" in request.headers
        try:
            self._route(fwd, request, transport, pins, from_node, from_peer)
        except (ParseError, ValueError) as exc:
            self.requests.labels(method, "bad_request").inc()
            self._respond(key, request, 400, str(exc)[:100])

    def _pop_own_routes(self, request: Request, pins: dict[str, str]) -> None:
        """§16.4: remove the Route entries that name this proxy, keeping the pins
        (``sc-node``, ``ft``) our Record-Route put in them."""
        top = request.headers.get("Route")
        if top is None:
            return
        prefix = f"<sip:{format_host(self.settings.host)}:{self.settings.port};"
        while True:
            if top.startswith(prefix) and top.endswith(">") and "," not in top \
                    and ">" not in top[:-1]:
                # our own Record-Route as we wrote it: read its parameters as text
                for param in top[len(prefix):-1].split(";"):
                    k, _, v = param.partition("=")
                    if v and (k == "sc-node" or k == "ft"):
                        pins[k] = v
            else:
                uri = first_route(request, top).sip_uri
                if not self.is_own(uri.host, uri.port) and not self._dead_peer(uri):
                    return
                if uri.port is None and uri.host.lower() in self.settings.own_names:
                    # reached by the data centre's proxy name: it can resolve it
                    pins["name"] = uri.host
                for name in ("sc-node", "ft"):
                    value = uri.params.get(name)
                    if value:
                        pins[name] = value
            request.headers.remove_first("Route")
            top = request.headers.get("Route")
            if top is None:
                return

    def _dead_peer(self, uri: SipUri) -> bool:
        """A Route naming another proxy of the cluster that is down (its replication
        link lost): this proxy takes the dialog over, so an in-dialog request outlives
        the proxy that record-routed it (the ``sc-node`` pin names the node)."""
        peer = self._peers_at.get((uri.host, uri.port or 5060))
        if peer is None or self.peer_alive(peer):
            return False
        self.requests.labels("route", "dead_peer_taken_over").inc()
        return True

    def _route(self, fwd: Forward, request: Request, transport: str, pins: dict[str, str],
               from_node: bool, from_peer: bool) -> None:
        method = request.method
        key = fwd.server_key
        ruri = request.ruri
        dialog_creating = method in _DIALOG_METHODS and request.to.tag is None
        rr: dict[str, str] | None = None
        # 1. loose routing: a Route that is not ours remains
        if request.headers.get("Route"):
            nxt = first_route(request).sip_uri
            fwd.targets = [(uri_dest(nxt), uri_transport(nxt), None)]
            inside = self.router.is_node_host(nxt.host) or nxt.host in self._peer_hosts
            self._forward(fwd, "route", rr=None, strip_node=not inside)
            return
        if fwd.from_endpoint:
            if NODE_HEADER in request.headers:
                request.headers.remove(NODE_HEADER)  # never trusted from outside
            if method == "REGISTER":
                self._register(fwd, request, transport, pins.get("name", ""))
                return
            if method == "SUBSCRIBE" and self.settings.feature_server is not None and \
                    (request.headers.get("Event") or "").split(";")[0].strip().lower() \
                    == "message-summary":
                fs = self.settings.feature_server
                fwd.targets = [(fs, "UDP", None)]
                if dialog_creating:
                    # the subscription's NOTIFYs come back through this proxy
                    # (RFC 6665 §4.1.2.1, RFC 3261 §16.6 step 4) onto the
                    # phone's own flow: a TCP or TLS phone has no listener
                    rr = {}
                    if transport != "UDP" or behind_nat(request, fwd.source):
                        rr["ft"] = flow_token(transport, fwd.source)
                self._forward(fwd, "feature_server", rr=rr)
                return
            nodes: list[NodeTarget] = []
            pinned = pins.get("sc-node")
            if pinned:
                node = self.router.pinned(pinned)
                if node is not None:
                    nodes = [node]
            if not nodes and ruri.host is not None:
                node = self.router.node_at(ruri.host, ruri.port or 5060)
                if node is not None:
                    node = self.router.pinned(node.name)
                    if node is not None:
                        nodes = [node]
            if not nodes:
                nodes = self.router.candidates(request.call_id)
            if not nodes:
                self.requests.labels(method, "no_node").inc()
                self._respond(fwd.server_key, request, 503, "No Node In Service",
                              (("Retry-After", "5"),))
                return
            fwd.targets = [((n.host, n.port), n.transport, n) for n in nodes]
            rr_name = ""
            if dialog_creating:
                rr = {"sc-node": nodes[0].name}
                phone_flow, rr_name = phone_side(request, fwd.source, transport,
                                                 pins.get("name", ""))
                if phone_flow:
                    rr["ft"] = phone_flow
            self._forward(fwd, "node", rr=rr, rr_name=rr_name)
            return
        # from a node (or a peer proxy): toward an endpoint
        node_name = request.headers.get(NODE_HEADER)
        if node_name is None and from_node:
            src_node = self.router.node_at(fwd.source[0])
            node_name = src_node.name if src_node else None
        flow = pins.get("ft")
        if flow is not None:
            dest, tp = parse_flow_token(flow)
            fwd.targets = [(dest, tp, None)]
            # a Path with the phone's flow (RFC 3327): a new dialog stays pinned here
            self._forward(fwd, "flow", rr={"sc-node": node_name, "ft": flow}
                          if dialog_creating and node_name else None, strip_node=True)
            return
        if ruri.scheme in ("sip", "sips") and ruri.user and \
                (ruri.host.lower() == self.settings.domain.lower() or
                 self.is_own(ruri.host, ruri.port)):
            aor = aor_of(ruri.user, self.settings.domain)
            bindings = self.store.lookup(aor, time.time())
            if not bindings:
                self.requests.labels(method, "not_registered").inc()
                self._respond(key, request, 480)
                return
            b = bindings[0]
            if b.origin != self.settings.name and b.origin in self.settings.peers \
                    and self.peer_alive(b.origin) and not from_peer \
                    and (b.received is not None or not _same_proxy(b.origin, self.settings.name)):
                # the proxy holding the phone's flow delivers it (a UDP phone without
                # NAT answers any worker of this proxy: no hop to the sibling worker)
                fwd.targets = [(self.settings.peers[b.origin], "UDP", None)]
                if node_name:
                    request.headers.set(NODE_HEADER, node_name)
                self._forward(fwd, "via_peer", rr={"sc-node": node_name} if dialog_creating
                              and node_name else ({} if dialog_creating else None),
                              strip_node=False)
                return
            request.uri = b.contact
            for p in reversed(b.path):
                request.headers.prepend("Route", p)
            if b.path:
                nxt = request.routes[0].sip_uri
                fwd.targets = [(uri_dest(nxt), uri_transport(nxt), None)]
            elif b.received is not None:
                fwd.targets = [(split_hostport(b.received), b.transport, None)]
            else:
                cu = parse_uri(b.contact)
                fwd.targets = [(uri_dest(cu), uri_transport(cu), None)]
            rr_name = ""
            if dialog_creating:
                rr = {}
                if node_name:
                    rr["sc-node"] = node_name
                if b.received is not None:
                    rr["ft"] = flow_token(b.transport, split_hostport(b.received))
                elif node_name:
                    rr_name = self._registered_name(b)
            self._forward(fwd, "aor", rr=rr, strip_node=True, rr_name=rr_name)
            return
        # anything else: on the Request-URI (trunks, other domains, a registered
        # contact that the node reached through the REGISTER's Path, RFC 3327)
        fwd.targets = [(uri_dest(ruri), uri_transport(ruri), None)]
        if dialog_creating and node_name:
            self._forward(fwd, "ruri", rr={"sc-node": node_name}, strip_node=True,
                          rr_name=self._contact_registered_name(request))
            return
        self._forward(fwd, "ruri", rr=None, strip_node=True)

    def _registered_name(self, b: Binding) -> str:
        """The data centre's proxy name the phone of ``b`` registered by (UDP, not
        behind NAT, :func:`~daemons.sip_proxy.flows.phone_side`) when it is still
        one of ours: its side of a new dialog is record-routed by it, so its
        in-dialog requests go by SRV to any live proxy and the ``sc-node`` pin
        finds the node."""
        name = b.proxy_name
        return name if name and b.received is None and name in self.settings.own_names \
            else ""

    def _contact_registered_name(self, request: Request) -> str:
        """:meth:`_registered_name` of the binding whose contact ``request`` (from a
        node, its Request-URI a contact, its To the AoR) goes to; "" when none."""
        if not self.settings.own_names:
            return ""
        try:
            to = request.to.sip_uri
        except ParseError:
            return ""  # a To we cannot read is no AoR of ours; the call goes on
        if not to.user or to.scheme not in ("sip", "sips"):
            return ""
        uri = request.uri
        bindings = self.store.lookup(aor_of(to.user, to.host), time.time())
        for b in bindings:
            if b.contact == uri:
                return self._registered_name(b)
        target = normalised_uri(uri)
        for b in bindings:
            if normalised_uri(b.contact) == target:
                return self._registered_name(b)
        return ""

    def _forward(self, fwd: Forward, action: str, *, rr: dict[str, str] | None,
                 strip_node: bool = False, rr_name: str = "") -> None:
        """§16.6: copy-free forwarding of ``fwd.request`` to ``fwd.targets[0]``.
        ``rr_name``: the phone's side is record-routed by that name, the node's
        side by our address (RFC 5658 double Record-Route); the phone's side is
        the one the request came from when a phone sent it (a caller), else the
        one it goes to (a called phone)."""
        request = fwd.request
        self.requests.labels(request.method, action).inc()
        mf = request.max_forwards
        fwd.mf = str(69 if mf is None else mf - 1)
        fwd.strip_node = strip_node
        transport = fwd.targets[0][1]
        if rr is not None:
            in_tp = fwd.in_transport
            secure = request.ruri.scheme == "sips"
            in_name, out_name = (rr_name, "") if fwd.from_endpoint else ("", rr_name)
            fwd.prepend.append(("Record-Route", self._rr(in_tp, rr, secure, in_name)))
            if in_tp != transport or rr_name:
                fwd.prepend.append(("Record-Route", self._rr(transport, rr, secure, out_name)))
        self._send_branch(fwd)

    def _send_branch(self, fwd: Forward) -> None:
        """Send ``fwd.request`` to its next target in a new client transaction (§16.6).

        A non-INVITE over UDP leaves as the received bytes with the §16.6 edits
        spliced in (:func:`~protocols.sip.splice.splice_request`); otherwise, or
        when the bytes need the parser, the request object takes the same edits
        (:func:`~protocols.sip.splice.edit_request`) and stays edited for a
        fail-over, which then only swaps our Via and the node header.
        """
        dest, transport, node = fwd.targets.pop(0)
        fwd.node = node
        request = fwd.request
        method = request.method
        branch = f"{_BRANCH_PREFIX}{fwd.loop_hash}.{self._branch_salt}{next(self._branches):x}"
        via = f"{self._via_start(transport)}{branch};rport"
        tm = self.transport
        assert tm is not None
        now = self._now()
        try:
            if fwd.applied:
                h = request.headers
                h.remove_first("Via")
                if node is not None:
                    h.set(NODE_HEADER, node.name)
                h.prepend("Via", via)
                ckey = self.layer.send_request(request, dest, now, transport=transport)
            else:
                # same-name order: our Via and Record-Route (or Path) above the others
                top = [("Via", via), *reversed(fwd.prepend)]
                if node is not None:
                    top.append((NODE_HEADER, node.name))
                # the parsed headers say whether the node header is there to drop
                # (a search of the bytes costs more)
                drop = _NODE_ONLY if (fwd.strip_node or node is not None) \
                    and NODE_HEADER in request.headers else ()
                data = None
                if transport == "UDP" and method != "INVITE" and tm.udp_ready(dest[0]):
                    data = splice_request(request.serialize(), top, fwd.mf, drop,
                                          unfolded=request.headers.unfolded,
                                          headers=request.headers)
                if data is not None and len(data) <= tm.udp_size_limit:
                    ckey = self.layer.send_request_data(request, data, branch, dest, now)
                else:
                    edit_request(request, top, fwd.mf, drop)
                    fwd.applied = True
                    ckey = self.layer.send_request(request, dest, now, transport=transport)
        except TransactionError as exc:
            self.log.warning("proxy_forward_failed", error=str(exc))
            self._upstream_error(fwd, 500)
            return
        fwd.client_key = ckey
        self._by_server[fwd.server_key] = fwd
        self._by_client[ckey] = fwd
        if fwd.cancelled:
            self.layer.send_cancel(ckey, now)

    # ------------------------------------------------------------ responses

    def _on_response(self, event: ResponseReceived) -> None:
        ckey, response = event.key, event.response
        probe = self._probes.get(ckey)
        if probe is not None:
            if response.status >= 200:
                del self._probes[ckey]
                probe(response.status)
            return
        fwd = self._by_client.get(ckey)
        if fwd is None:
            return
        status = response.status
        if status == 100:
            return
        if status < 200:
            fwd.got_provisional = True
        is_invite_2xx = response.cseq.method == "INVITE" and 200 <= status < 300
        if status >= 200 and fwd.final_sent and not is_invite_2xx:
            return
        if status == 503 and fwd.targets and not fwd.got_provisional and not fwd.final_sent:
            self.failovers.labels("node_503").inc()
            self._by_client.pop(ckey, None)
            self._send_branch(fwd)
            return
        headers = response.headers
        removals: list[str] = []  # besides our Via (§16.7 step 3)
        if fwd.from_endpoint:
            if NODE_HEADER in headers:
                removals.append(NODE_HEADER)
            method = response.cseq.method
            if method == "REGISTER":
                if 200 <= status < 300 and fwd.register is not None:
                    self._store_registration(fwd, response)
                if not fwd.path_supported and "Path" in headers:
                    removals.append("Path")
            if status in (401, 407, 403) and fwd.had_credentials and \
                    "stale=true" not in _challenge_text(response):
                if self.auth_guard.failed(fwd.source[0], time.monotonic()):
                    self.log.warning("sip_auth_source_refused", peer=fwd.source[0])
            elif 200 <= status < 300 and fwd.had_credentials:
                self.auth_guard.succeeded(fwd.source[0])
        if status >= 200:
            fwd.final_sent = True
        self.responses.labels(_STATUS_CLASS[status // 100]).inc()
        # §16.7 step 3: our Via goes; on the received bytes when they allow it
        data = pop_top_via(response.serialize(), removals, unfolded=headers.unfolded,
                           headers=headers) if fwd.delay <= 0 else None
        if data is None:
            edit_response(response, removals)
        if fwd.delay > 0 and status >= 200:
            self._loop.call_later(fwd.delay, self._send_upstream, fwd, response)
        else:
            self._send_upstream(fwd, response, data)

    def _send_upstream(self, fwd: Forward, response: Response,
                       data: bytes | None = None) -> None:
        try:
            self.layer.send_response(response, self._now(), key=fwd.server_key, data=data)
        except TransactionError as exc:
            self.log.info("sip_response_not_sent", status=response.status, reason=str(exc))
        status = response.status
        if status >= 200 and not (response.cseq.method == "INVITE" and status < 300):
            # nothing more to forward for this request: drop the state early
            # (the transactions absorb retransmissions on their own)
            self._by_server.pop(fwd.server_key, None)
            if fwd.client_key is not None:
                self._by_client.pop(fwd.client_key, None)
        self._flush()

    def _upstream_error(self, fwd: Forward, status: int, reason: str | None = None) -> None:
        if fwd.final_sent:
            return
        fwd.final_sent = True
        resp = make_response(fwd.request, status, reason, to_tag=hashlib.blake2b(
            fwd.request.call_id.encode(), digest_size=6).hexdigest())
        if fwd.applied:
            resp.headers.remove_first("Via")
        resp.headers.remove(NODE_HEADER)
        if status == 503:
            resp.headers.add("Retry-After", "5")
        self._send_upstream(fwd, resp)

    def _client_failed(self, ckey: TransactionKey, status: int, why: str) -> None:
        probe = self._probes.pop(ckey, None)
        if probe is not None:
            probe(None)
            return
        fwd = self._by_client.pop(ckey, None)
        if fwd is None or fwd.final_sent:
            return
        if fwd.targets and not fwd.got_provisional and not fwd.cancelled:
            self.failovers.labels(why).inc()
            self._send_branch(fwd)
            return
        self._upstream_error(fwd, status)

    def _on_timeout(self, event: TransactionTimeout) -> None:
        self._client_failed(event.key, 408, "timeout")

    def _on_transport_failed(self, event: TransportFailed) -> None:
        self._client_failed(event.key, 503, "transport_failed")

    def _on_terminated(self, event: TransactionTerminated) -> None:
        key = event.key
        fwd = self._by_server.pop(key, None)
        if fwd is not None and fwd.client_key is not None:
            self._by_client.pop(fwd.client_key, None)
        fwd = self._by_client.pop(key, None)
        if fwd is not None and not fwd.final_sent:
            self._upstream_error(fwd, 408)
        self._probes.pop(key, None)


# --------------------------------------------------------------------------- small rules


def _same_proxy(origin: str, name: str) -> bool:
    """Two workers of one proxy (names ``APP~wI``, docs/sip-proxy.md, "Workers")."""
    return origin.partition("~")[0] == name.partition("~")[0]


def _challenge_text(response: Response) -> str:
    return " ".join(response.headers.get_lines("WWW-Authenticate") +
                    response.headers.get_lines("Proxy-Authenticate")).lower()
