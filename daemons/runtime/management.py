"""The HTTP management listener every daemon exposes: ``/healthz`` and
Prometheus ``/metrics``, plus JSON status pages a daemon registers.

A request the listener refuses before any handler runs (a malformed request
line, a header line over aiohttp's 8190-byte limit: RFC 9112 §2.2, §3) gets
aiohttp's 400 answer, one ``http_bad_request`` log line with the peer and the
reason, and a count in ``sipcluster_http_bad_requests_total{reason}``; the
listener goes on serving.

Slow and greedy clients meet limits (:class:`HttpLimits`): a connection that
has not delivered a whole request head within ``head_timeout`` seconds is
closed (a slowloris holds a connection for seconds, not for good), an idle
keep-alive connection after ``idle_timeout``, and connections past
``max_connections`` on the port, or past ``max_per_peer`` from one address,
are closed at once. Each is one ``http_connection_closed`` log line with the
peer and the reason and a count in
``sipcluster_http_connections_closed_total{reason}``; clients within the
limits are served throughout. Every daemon's HTTP port starts through
:meth:`ManagementServer.serve`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from daemons.runtime.logs import get_logger
from daemons.runtime.tally import Tally

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
#: adds a daemon's own routes to its management application
RouteAdder = Callable[[web.Application], None]
#: aiohttp's own default request body limit
DEFAULT_MAX_BODY = 1024 * 1024
StatusPage = Callable[[], Any]

#: longest ``detail`` of an ``http_bad_request`` line: the refused input is
#: quoted in aiohttp's message and may be any size
_DETAIL_MAX = 200


class TallyCounter:
    """A labelled Prometheus counter for per-message paths.

    ``labels(*values).inc()`` adds to a plain integer; the registry reads the
    integers when ``/metrics`` is scraped (a custom collector), so counting costs
    an attribute update instead of the client library's lock and checks. Same
    exposition as a ``Counter``: ``NAMESPACE_NAME_total{labels}``.
    """

    def __init__(self, metrics: Metrics, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name = f"{metrics.namespace}_{name}" if metrics.namespace else name
        self.doc = doc
        self.label_names = labels
        self._children: dict[tuple[str, ...], Tally] = {}
        metrics.registry.register(self)

    def labels(self, *values: str) -> Tally:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Tally()
        return child

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.doc, labels=self.label_names)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.label_names)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class Metrics:
    """A per-daemon Prometheus registry (several daemons may share a test process)."""

    def __init__(self, namespace: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.namespace = namespace
        self._shared: dict[str, Counter] = {}

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, namespace=self.namespace, registry=self.registry)

    def shared_counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        """The registry's one counter ``name``, made on first use: for what several
        listeners of one daemon count together (its T-Library ports)."""
        counter = self._shared.get(name)
        if counter is None:
            counter = self._shared[name] = self.counter(name, doc, labels)
        return counter

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, namespace=self.namespace, registry=self.registry)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    ) -> Histogram:
        return Histogram(
            name, doc, labels, namespace=self.namespace, registry=self.registry, buckets=buckets
        )

    def tally(self, name: str, doc: str, labels: tuple[str, ...]) -> TallyCounter:
        """A labelled counter for per-message paths (:class:`TallyCounter`)."""
        return TallyCounter(self, name, doc, labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """The ``logger`` aiohttp's request handler writes to, turned into structlog
    events of one line each.

    aiohttp reports a request it refuses as ``logger.exception("Error handling
    request from %s", peer, exc_info=exc)`` (``logger.debug`` for a bad method
    on a fresh connection) with an :class:`HttpProcessingError`; through the
    standard library that is a multi-line traceback per request. Here it is one
    ``http_bad_request`` event and a count by reason. Anything else aiohttp
    logs (a page handler that raised) is one ``http_server_error`` event.
    """

    def __init__(self, log: Any, refused: Any) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._events = log
        self._refused = refused

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            reason = _reason(exc)
            self._refused.labels(reason).inc()
            detail = " ".join(str(exc.message).split())
            if len(detail) > _DETAIL_MAX:
                detail = detail[:_DETAIL_MAX] + "..."
            self._events.warning("http_bad_request", peer=str(args[0]) if args else None,
                                 reason=reason, status=exc.code, detail=detail)
            return
        if level < logging.WARNING:
            return  # aiohttp's debug chatter (client disconnects ...)
        message = str(msg) % args if args else str(msg)
        error = exc if isinstance(exc, BaseException) else None
        self._events.error("http_server_error", message=message,
                           error=repr(error) if error is not None else None, exc_info=error)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP port allows a client (see the module doc)."""

    #: seconds from accept to a complete request head
    head_timeout: float = 10.0
    #: seconds an idle keep-alive connection stays open
    idle_timeout: float = 30.0
    #: open connections on the port
    max_connections: int = 512
    #: open connections from one client address
    max_per_peer: int = 64


class _Refused(asyncio.Protocol):
    """A connection over the limits: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _LimitedSite(web.TCPSite):
    """aiohttp's TCP site, with :class:`HttpLimits` applied at accept and by a
    head timer per connection."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: HttpLimits,
                 on_close: Callable[[str, str | None], None]) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self.limits = limits
        self._on_close = on_close
        self._per_peer: dict[str, int] = {}
        self._open = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            lambda: self._protocol(server, loop), self._host, self._port,
            reuse_address=True, backlog=self._backlog)

    def _protocol(self, server: Any, loop: asyncio.AbstractEventLoop) -> asyncio.BaseProtocol:
        return _Counted(self, server(), loop)

    def _accept(self, peer: str | None) -> str | None:
        """None when the connection may stay, else why it may not."""
        if self._open >= self.limits.max_connections:
            return "too_many_connections"
        if peer is not None and self._per_peer.get(peer, 0) >= self.limits.max_per_peer:
            return "too_many_from_peer"
        self._open += 1
        if peer is not None:
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return None

    def _release(self, peer: str | None) -> None:
        self._open -= 1
        if peer is not None:
            left = self._per_peer.get(peer, 1) - 1
            if left > 0:
                self._per_peer[peer] = left
            else:
                self._per_peer.pop(peer, None)


class _Counted(asyncio.Protocol):
    """aiohttp's request handler for one connection, behind the site's limits
    (the handler sees every call the transport makes)."""

    def __init__(self, site: _LimitedSite, handler: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.site = site
        self.handler = handler
        self.loop = loop
        self.peer: str | None = None
        self.admitted = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else None
        refused = self.site._accept(self.peer)
        if refused is not None:
            self.site._on_close(refused, self.peer)
            transport.close()
            return
        self.admitted = True
        self.timer = self.loop.call_later(self.site.limits.head_timeout, self._head_due)
        self.handler.connection_made(transport)

    def _head_due(self) -> None:
        self.timer = None
        # aiohttp counts a request once its head is parsed
        if getattr(self.handler, "_request_count", 1) == 0 and self.handler.transport:
            self.site._on_close("slow_request_head", self.peer)
            self.handler.force_close()
            self.handler.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.site._release(self.peer)
        self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


def _reason(exc: HttpProcessingError) -> str:
    """``LineTooLong`` -> ``line_too_long``: a label from aiohttp's own (bounded)
    set of refusal classes."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


class ManagementServer:
    """aiohttp application serving health, metrics and status pages."""

    def __init__(self, metrics: Metrics, *, app_name: str,
                 limits: HttpLimits | None = None) -> None:
        self.metrics = metrics
        self.app_name = app_name
        self.limits = limits or HttpLimits()
        self.bad_requests = metrics.counter(
            "http_bad_requests",
            "HTTP requests the management listener refused before any handler ran",
            ("reason",))
        self.closed_connections = metrics.counter(
            "http_connections_closed",
            "HTTP connections closed by the listener's limits (slow head, too many)",
            ("reason",))
        self._log = get_logger("management", application=app_name)
        self._server_log = _ServerLog(self._log, self.bad_requests)
        self._checks: dict[str, HealthCheck] = {}
        self._pages: dict[str, StatusPage] = {}
        self._route_adders: list[RouteAdder] = []
        #: the largest request body a handler may read (aiohttp's ``client_max_size``)
        self.max_body = DEFAULT_MAX_BODY
        #: aiohttp middlewares around every handler (e.g. an API token check)
        self.middlewares: list[Any] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        self._checks[name] = check

    def add_routes(self, adder: RouteAdder) -> None:
        """Serve a daemon's own routes (its API, its pages) on this port too:
        ``adder(app)`` adds them when the port starts."""
        self._route_adders.append(adder)

    def add_status_page(self, path: str, page: StatusPage) -> None:
        """Serve ``page()`` as JSON at ``path`` (e.g. ``/status/peers``)."""
        self._pages[path] = page

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = True
        details: dict[str, Any] = {}
        for name, check in self._checks.items():
            passed, info = check()
            ok = ok and passed
            details[name] = {"ok": passed, **info}
        body = {
            "status": "ok" if ok else "unhealthy",
            "application": self.app_name,
            "checks": details,
        }
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=self.metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def _page_handler(self, page: StatusPage) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(page(), dumps=lambda o: json.dumps(o, default=str))

        return handler

    def base_app(self) -> web.Application:
        """An application with ``/healthz``, ``/metrics``, the status pages and the
        daemon's own routes."""
        app = web.Application(client_max_size=self.max_body, middlewares=self.middlewares)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        for path, page in self._pages.items():
            app.router.add_get(path, self._page_handler(page))
        for add in self._route_adders:
            add(app)
        return app

    async def start(self, host: str, port: int) -> int:
        return await self.serve(self.base_app(), host, port)

    async def serve(self, app: web.Application, host: str, port: int) -> int:
        """Serve ``app`` on (host, port) within :attr:`limits`; the bound port."""
        self._runner = web.AppRunner(app, access_log=None, logger=self._server_log,
                                     keepalive_timeout=self.limits.idle_timeout)
        await self._runner.setup()
        site = _LimitedSite(self._runner, host, port, self.limits, self._closed)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    def _closed(self, reason: str, peer: str | None) -> None:
        self.closed_connections.labels(reason).inc()
        self._log.warning("http_connection_closed", peer=peer, reason=reason)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
