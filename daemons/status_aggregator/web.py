"""The aggregator's HTTP port: ``/healthz``, ``/metrics`` and status pages like
every daemon, plus the status page people look at (docs/status-aggregator.md,
"Web view"):

* ``/`` — directory search and live status, updating without reload;
* ``/status/search?q=TEXT&limit=N`` — directory entries with their status (JSON);
* ``/status/live?users=A,B`` — Server-Sent Events: the users' records now,
  then each change (an in-process watcher of the status table).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from daemons.runtime.management import ManagementServer, Metrics
from daemons.status_aggregator.aggregator import Aggregator
from protocols.status.messages import StatusRecord

MAX_LIVE_USERS = 500
#: change batches a live feed may hold for a browser that does not read; past
#: it the feed is closed (the page reconnects and starts from the records now)
MAX_LIVE_BACKLOG = 1000


class StatusWeb:
    """The status page and its two feeds, served on the aggregator's management port
    (:meth:`serve_on`)."""

    def __init__(self, metrics: Metrics, *, app_name: str,
                 aggregator: Callable[[], Aggregator], log: Any) -> None:
        self.app_name = app_name
        self._log = log
        self._aggregator = aggregator
        self.live_dropped = metrics.counter(
            "status_live_feeds_dropped",
            "Live status feeds closed because the browser did not read them")

    def serve_on(self, management: ManagementServer) -> None:
        management.add_routes(self._add_routes)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/status/search", self._search)
        app.router.add_get("/status/live", self._live)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("{{APP}}", self.app_name),
                            content_type="text/html")

    async def _search(self, request: web.Request) -> web.Response:
        text = request.query.get("q", "")
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 500))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        return web.json_response(self._aggregator().search(text, limit))

    async def _live(self, request: web.Request) -> web.StreamResponse:
        users = [u for u in request.query.get("users", "").split(",") if u][:MAX_LIVE_USERS]
        if not users:
            return web.json_response({"error": "users=A,B,... required"}, status=400)
        queue: asyncio.Queue[list[StatusRecord] | None] = asyncio.Queue()
        aggregator = self._aggregator()

        dropped = False

        def feed(changed: list[StatusRecord]) -> None:
            nonlocal dropped
            if queue.qsize() < MAX_LIVE_BACKLOG:
                queue.put_nowait(changed)
            elif not dropped:  # the browser does not read: end the feed
                dropped = True
                self.live_dropped.inc()
                self._log.warning("status_live_feed_dropped", peer=request.remote,
                                  backlog=MAX_LIVE_BACKLOG)
                queue.put_nowait(None)
                if request.transport is not None:
                    request.transport.close()  # also ends a write waiting to drain

        watcher, records = aggregator.watch_local(users, feed)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            await response.write(_sse(records))
            while True:
                try:
                    changed = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if changed is None:
                    break
                await response.write(_sse(changed))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            aggregator.unwatch_local(watcher)
        return response


def _sse(records: list[StatusRecord]) -> bytes:
    body: list[dict[str, Any]] = [r.to_map() for r in records]
    return b"data: " + json.dumps(body).encode() + b"\n\n"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{APP}} - user status</title>
<style>
body{font-family:sans-serif;margin:1.5em}
table{border-collapse:collapse;margin-top:1em}
td,th{border:1px solid #bbb;padding:.3em .7em;text-align:left}
.on{background:#d8f5d8}.off{color:#888}.phone{font-weight:bold;color:#a40}
</style></head><body>
<h1>User status <small>({{APP}})</small></h1>
<form id="f"><input id="q" name="q" placeholder="name or e-mail" autofocus>
<button>Search</button></form>
<table><thead><tr><th>User</th><th>Name</th><th>Status</th><th>Detail</th><th>Until</th>
<th>Logged on</th><th>On phone</th></tr></thead><tbody id="rows"></tbody></table>
<p id="note"></p>
<script>
let source = null;
const rows = document.getElementById('rows');
function cell(tr, text) { const td = document.createElement('td'); td.textContent = text;
  tr.appendChild(td); return td; }
function show(r) {
  let tr = document.getElementById('u:' + r.user);
  if (!tr) return;
  tr.className = r.server ? 'on' : 'off';
  tr.children[2].textContent = r.status || '';
  tr.children[3].textContent = r.detail || '';
  tr.children[4].textContent = r.until ? new Date(r.until * 1000).toISOString() : '';
  tr.children[5].textContent = r.server || '(logged off)';
  tr.children[6].textContent = r.on_phone ? 'on the phone' : '';
  tr.children[6].className = r.on_phone ? 'phone' : '';
}
async function search(text) {
  const answer = await fetch('/status/search?q=' + encodeURIComponent(text));
  const entries = await answer.json();
  rows.innerHTML = '';
  for (const e of entries) {
    const tr = document.createElement('tr'); tr.id = 'u:' + e.email;
    cell(tr, e.email); cell(tr, e.name || ''); for (let i = 0; i < 5; i++) cell(tr, '');
    rows.appendChild(tr); show(Object.assign({user: e.email}, e));
  }
  document.getElementById('note').textContent = entries.length + ' users, live';
  if (source) source.close();
  if (entries.length) {
    source = new EventSource('/status/live?users=' +
      encodeURIComponent(entries.map(e => e.email).join(',')));
    source.onmessage = m => JSON.parse(m.data).forEach(show);
  }
}
document.getElementById('f').onsubmit = ev => { ev.preventDefault();
  search(document.getElementById('q').value); };
const initial = new URLSearchParams(location.search).get('q');
if (initial !== null) { document.getElementById('q').value = initial; search(initial); }
</script></body></html>
"""
