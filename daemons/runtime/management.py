"""The HTTP management listener every daemon exposes: ``/healthz`` and
Prometheus ``/metrics``, plus JSON status pages a daemon registers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
StatusPage = Callable[[], Any]


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

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ManagementServer:
    """aiohttp application serving health, metrics and status pages."""

    def __init__(self, metrics: Metrics, *, app_name: str) -> None:
        self.metrics = metrics
        self.app_name = app_name
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
        self._runner = web.AppRunner(app, access_log=None)
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
