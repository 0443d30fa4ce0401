"""The HTTP management listener every daemon exposes: ``/healthz`` and
Prometheus ``/metrics``, plus JSON status pages a daemon registers.

A request the listener refuses before any handler runs (a malformed request
line, a header line over aiohttp's 8190-byte limit: RFC 9112 §2.2, §3) gets
aiohttp's 400 answer, one ``http_bad_request`` log line with the peer and the
reason, and a count in ``sipcluster_http_bad_requests_total{reason}``; the
listener goes on serving.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from daemons.runtime.logs import get_logger

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
StatusPage = Callable[[], Any]

#: longest ``detail`` of an ``http_bad_request`` line: the refused input is
#: quoted in aiohttp's message and may be any size
_DETAIL_MAX = 200


class _Tally:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


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
        self._children: dict[tuple[str, ...], _Tally] = {}
        metrics.registry.register(self)

    def labels(self, *values: str) -> _Tally:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Tally()
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

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, namespace=self.namespace, registry=self.registry)

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


def _reason(exc: HttpProcessingError) -> str:
    """``LineTooLong`` -> ``line_too_long``: a label from aiohttp's own (bounded)
    set of refusal classes."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


class ManagementServer:
    """aiohttp application serving health, metrics and status pages."""

    def __init__(self, metrics: Metrics, *, app_name: str) -> None:
        self.metrics = metrics
        self.app_name = app_name
        self.bad_requests = metrics.counter(
            "http_bad_requests",
            "HTTP requests the management listener refused before any handler ran",
            ("reason",))
        self._server_log = _ServerLog(
            get_logger("management", application=app_name), self.bad_requests)
        self._checks: dict[str, HealthCheck] = {}
        self._pages: dict[str, StatusPage] = {}
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        self._checks[name] = check

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

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        for path, page in self._pages.items():
            app.router.add_get(path, self._page_handler(page))
        self._runner = web.AppRunner(app, access_log=None, logger=self._server_log)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
