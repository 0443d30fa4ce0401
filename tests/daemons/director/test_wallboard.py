"""The wallboard in a real browser (headless Chromium over the DevTools
protocol, the status-aggregator tests' helper): the director's page shows its
virtual queues and its monitored servers; a queue added over the HTTP API
appears, and a monitored server whose director stops turns stale, without a
reload (the page's Server-Sent Events feed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemons.director.test_store import HOST, call, start_lab
from tests.daemons.status_aggregator.test_web import chromium

pytestmark = pytest.mark.timeout(120)


def monitoring(ports: dict[str, int]) -> str:
    """A second director, Site1, that the first one monitors (report every 0.3 s)."""
    return f"""
[applications.Director.options.monitored-servers.Site1]
address = "{HOST}81:{ports['site_port']}"
route-to = "5001"

[applications.Site1]
kind = "director"
host = "{HOST}81"
geo-location = "dc1"
http-port = {ports['site_http']}
director-port = {ports['site_port']}

[applications.Site1.options]
store = "none"

[applications.Site1.options.skills]
a1 = {{ sales = 5 }}

[applications.Site1.options.strategies.8001]
routing-points = ["5001"]
"""


async def test_the_wallboard_shows_changes_without_reload(
        tmp_path: Path, free_port: Callable[..., int]) -> None:
    lab = start_lab(tmp_path, free_port, f"sqlite:{tmp_path / 'director.db'}", monitoring)
    lab.config.write_text(lab.config.read_text().replace(
        'store = "sqlite:', 'report-interval = 0.3\nstore = "sqlite:'))
    port = lab.ports["http"]
    try:
        await lab.spawn("director", "Site1")
        await lab.spawn("director", "Director")
        async with chromium(tmp_path) as browser:
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=f"http://{HOST}80:{port}/")
            rows = "document.getElementById('queues').innerText"
            await browser.until_text(rows, "8000")
            await browser.until_text("document.getElementById('note').innerText", "live")
            assert "8001" not in await browser.text_of(rows)
            before = await browser.screenshot(tmp_path / "wallboard-before.png")
            code, _ = await asyncio.to_thread(call, port, "PUT", "/director/strategies/8001",
                                              {"routing-points": ["5001"], "skill": "support"})
            assert code == 200
            await browser.until_text(rows, "8001")
            cells = await browser.text_of(
                "[...document.getElementById('queues:8001').children]"
                ".map(td => td.textContent).join('|')")
            assert cells == "8001|0|0|0|0|0|-", cells
            sites = "document.getElementById('sites').innerText"
            await browser.until_text(sites, "fresh")
            assert "Site1\tdc1\tfresh" in await browser.text_of(sites)
            await asyncio.to_thread(lab.procs["Site1"].stop)
            await browser.until_text(sites, "stale")  # 0.9 s without a report
            after = await browser.screenshot(tmp_path / "wallboard-after.png")
            assert before != after
    finally:
        await lab.close()
