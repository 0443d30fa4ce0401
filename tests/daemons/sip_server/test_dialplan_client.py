"""The node's dial-plan client (daemons/sip_server/dialplan_client.py) against
real HTTP servers on loopback: fail-over over the Dial Plan DN's URLs on a
5xx, on an answer that is not a decision and on a refused connection; URLs
that failed are passed over next time; a 4xx is the feature-server's refusal
(no other is asked); nothing answers: None, logged and counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from aiohttp import web

from daemons.runtime.management import Metrics
from daemons.sip_server.dialplan_client import DialPlanClient

HOST = "127.0.100.70"


async def serve(port_handler: dict[str, Any]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    hits: list[dict[str, str]] = port_handler.setdefault("hits", [])

    async def handler(request: web.Request) -> web.Response:
        hits.append(dict(request.query))
        status, body = port_handler["answer"]
        return web.Response(status=status, text=body, content_type="application/json")

    app.router.add_get("/dialplan", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{HOST}:{port}/dialplan"


@pytest.fixture
async def servers() -> AsyncIterator[list[dict[str, Any]]]:
    specs: list[dict[str, Any]] = [
        {"answer": (500, '{"error": "boom"}')},
        {"answer": (200, '{"hello": "world"}')},
        {"answer": (200, '{"action": "route", "number": "+5551234", "via": "trunk"}')},
    ]
    runners = []
    for spec in specs:
        runner, spec["url"] = await serve(spec)
        runners.append(runner)
    yield specs
    for runner in runners:
        await runner.cleanup()


def counts(metrics: Metrics, name: str) -> dict[str, float]:
    out = {}
    for family in metrics.registry.collect():
        if family.name == f"sipcluster_{name}":
            for sample in family.samples:
                out[next(iter(sample.labels.values()))] = sample.value
    return out


async def test_fail_over_then_pass_over(servers: list[dict[str, Any]], free_port: Any) -> None:
    refused = f"http://{HOST}:{free_port(HOST)}/dialplan"
    metrics = Metrics("sipcluster")
    client = DialPlanClient([refused, *(s["url"] for s in servers)], geo_location="dc1",
                            metrics=metrics, log=structlog.get_logger())
    try:
        answer = await client.query("95551234", caller="1001", conn_id="c1")
        assert answer is not None
        assert (answer.action, answer.number, answer.via, answer.url) == (
            "route", "+5551234", "trunk", servers[2]["url"])
        assert servers[2]["hits"] == [{"digits": "95551234", "caller": "1001",
                                       "geo-location": "dc1"}]
        failures = counts(metrics, "dialplan_url_failures")
        assert failures == {refused: 1, servers[0]["url"]: 1, servers[1]["url"]: 1}
        # the three that failed are passed over while they are marked down
        await client.query("95550000", reason="busy")
        assert len(servers[0]["hits"]) == len(servers[1]["hits"]) == 1
        assert servers[2]["hits"][-1]["reason"] == "busy"

        # a 4xx is an answer: the feature-server refused the question
        servers[2]["answer"] = (400, '{"error": "digits: expected ..."}')
        assert await client.query("bad digits") is None
        assert counts(metrics, "dialplan_queries")["refused"] == 1

        # nothing answers: None, counted as failed
        for spec in servers:
            spec["answer"] = (503, "{}")
        assert await client.query("95551234") is None
        assert counts(metrics, "dialplan_queries")["failed"] == 1
    finally:
        await client.close()
