"""The management listener serves health and Prometheus metrics over HTTP."""

from __future__ import annotations

import aiohttp

from daemons.runtime.management import ManagementServer, Metrics


async def test_healthz_metrics_and_status_pages() -> None:
    metrics = Metrics("sipcluster")
    counter = metrics.counter("sip_malformed_total", "Malformed SIP messages", ("transport",))
    counter.labels("udp").inc(3)
    server = ManagementServer(metrics, app_name="SIPS_A1")
    healthy = {"ok": True}
    server.add_health_check("sip", lambda: (healthy["ok"], {"listeners": 2}))
    server.add_status_page("/status/peers", lambda: {"peers": ["a", "b"]})
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["status"] == "ok"
                assert body["checks"]["sip"] == {"ok": True, "listeners": 2}
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
                assert 'sipcluster_sip_malformed_total{transport="udp"} 3.0' in text
            async with http.get(f"http://127.0.0.1:{port}/status/peers") as resp:
                assert (await resp.json()) == {"peers": ["a", "b"]}
            healthy["ok"] = False
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "unhealthy"
    finally:
        await server.stop()
