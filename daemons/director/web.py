"""The director's HTTP port (docs/director.md, "Status for wallboards" and
"Director store"): ``/healthz``, ``/metrics`` and ``/status/director`` like
every daemon, plus

* ``/`` — the wallboard: queues, agents per site, monitored sites, updated live;
* ``/status/director/live`` — Server-Sent Events: the status now, then every
  ``LIVE_INTERVAL`` seconds;
* ``/director/strategies`` and ``/director/skills`` — the routing strategies
  and agent skills, changed with ``PUT`` / ``DELETE`` (JSON), checked as the
  cluster file is, kept in the director store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from daemons.runtime.management import ManagementServer, Metrics

__all__ = ["LIVE_INTERVAL", "DirectorWeb", "StoreRefused"]

#: seconds between two updates of the live feed
LIVE_INTERVAL = 1.0
#: the largest request body the API reads
MAX_BODY = 64 * 1024


class StoreRefused(Exception):
    """A change the director refuses: ``status`` is the HTTP answer, the text its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: what the API asks of the director: (kind, name, body or None) -> the new table
Change = Callable[[str, str, Mapping[str, Any] | None], Awaitable[Mapping[str, Any]]]


class DirectorWeb:
    """The wallboard, its live feed and the API, served on the director's management
    port (:meth:`serve_on`)."""

    def __init__(self, metrics: Metrics, *, app_name: str,
                 status: Callable[[], dict[str, Any]],
                 tables: Callable[[str], dict[str, Any]], change: Change, log: Any) -> None:
        self.app_name = app_name
        self.log = log
        self._status = status
        self._tables = tables
        self._change = change
        self.refused = metrics.counter("director_api_refused",
                                       "Changes the HTTP API refused, by reason", ("reason",))

    def serve_on(self, management: ManagementServer) -> None:
        management.max_body = MAX_BODY
        management.add_routes(self._add_routes)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/status/director/live", self._live)
        for kind in ("strategies", "skills"):
            app.router.add_get(f"/director/{kind}", self._list(kind))
            app.router.add_put(f"/director/{kind}/{{name}}", self._put(kind))
        app.router.add_delete("/director/strategies/{name}", self._delete)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("{{APP}}", self.app_name),
                            content_type="text/html")

    async def _live(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            while True:
                body = json.dumps(self._status(), default=str)
                await response.write(b"data: " + body.encode() + b"\n\n")
                await asyncio.sleep(LIVE_INTERVAL)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    def _list(self, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(self._tables(kind))
        return handler

    def _put(self, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                return self._refuse(400, "bad-json", "the body is not JSON")
            if not isinstance(body, dict):
                return self._refuse(400, "not-a-table", "the body must be a JSON object")
            return await self._apply(kind, name, body)
        return handler

    async def _delete(self, request: web.Request) -> web.Response:
        return await self._apply("strategies", request.match_info["name"], None)

    async def _apply(self, kind: str, name: str, body: Mapping[str, Any] | None
                     ) -> web.Response:
        try:
            table = await self._change(kind, name, body)
        except StoreRefused as exc:
            label = {400: "invalid", 404: "unknown", 503: "unavailable"}.get(exc.status, "other")
            return self._refuse(exc.status, label, exc.reason)
        return web.json_response({name: table} if body is not None else {"deleted": name})

    def _refuse(self, status: int, label: str, reason: str) -> web.Response:
        self.refused.labels(label).inc()
        self.log.warning("director_change_refused", status=status, reason=reason)
        return web.json_response({"error": reason}, status=status)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{APP}} - wallboard</title>
<style>
body{font-family:sans-serif;margin:1.5em}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:.3em .7em;text-align:right}
td:first-child,th:first-child{text-align:left}
.stale,.never-reported{color:#a00}.fresh{color:#070}
</style></head><body>
<h1>Wallboard <small>({{APP}})</small></h1>
<p id="note">connecting...</p>
<h2>Virtual queues</h2>
<table><thead><tr><th>Queue</th><th>Waiting</th><th>Oldest wait (s)</th><th>Entered</th>
<th>Routed</th><th>Abandoned</th><th>Service level</th></tr></thead><tbody id="queues"></tbody>
</table>
<h2>Agents per site</h2>
<table><thead><tr><th>Site</th><th>Ready</th><th>Busy</th><th>Reserved</th><th>Not ready</th>
</tr></thead><tbody id="agents"></tbody></table>
<h2>Monitored sites</h2>
<table><thead><tr><th>Monitored server</th><th>Site</th><th>State</th><th>Available</th>
<th>Waiting</th><th>Routed to it</th></tr></thead><tbody id="sites"></tbody></table>
<script>
function fill(id, rows) {
  const body = document.getElementById(id); body.innerHTML = '';
  for (const [key, cells, cls] of rows) {
    const tr = document.createElement('tr'); tr.id = id + ':' + key;
    if (cls) tr.className = cls;
    for (const c of [key, ...cells]) {
      const td = document.createElement('td'); td.textContent = c; tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}
function pct(v) { return v === null || v === undefined ? '-' : Math.round(v * 100) + '%'; }
function show(s) {
  fill('queues', Object.entries(s.queues || {}).map(([q, v]) => [q, [v.waiting,
    v['oldest-wait'], v.entered, v.routed, v.abandoned, pct(v['service-level'])]]));
  fill('agents', Object.entries(s.agents || {}).map(([site, c]) => [site, [c.ready, c.busy,
    c.reserved, c['not-ready']]]));
  fill('sites', Object.entries(s.sites || {}).map(([name, m]) => [name, [m.site || '',
    m.state, (m.available || {})['*'] ?? '', Object.values(m.queues || {}).reduce(
      (n, q) => n + q.waiting, 0), m.routed], m.state]));
  document.getElementById('note').textContent = 'live, updated ' +
    new Date().toISOString();
}
const source = new EventSource('/status/director/live');
source.onmessage = m => show(JSON.parse(m.data));
source.onerror = () => { document.getElementById('note').textContent = 'reconnecting...'; };
</script></body></html>
"""
