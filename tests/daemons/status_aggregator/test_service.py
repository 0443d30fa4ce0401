"""The status-aggregator in-process on 127.0.130.x, spoken to over mutual TLS
by publishers and consumers (our client library)."""

from __future__ import annotations

import asyncio

import aiohttp

from protocols.status.messages import Role, StatusRecord
from tests.daemons.status_aggregator.conftest import Lab, Watcher


async def metrics_text(lab: Lab, name: str) -> str:
    service = lab.services[name]
    url = f"http://{service.management_host}:{service.management.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        return await answer.text()


async def test_publish_query_watch_and_events(lab: Lab) -> None:
    await lab.start("SA_1")
    watcher = Watcher()
    desk = lab.client("desk", Role.CONSUMER, on_records=watcher)
    tc = lab.client("TC_1", Role.PUBLISHER)
    assert await tc.wait_open() == "SA_1"
    await desk.wait_open()
    tc.publish([StatusRecord(user="ann@cluster.lab", status="Available", server="SIPS_1")])
    result = await desk.watch(["ann@cluster.lab"])
    # the watch answer holds the current record (or the event will)
    await watcher.until(lambda: watcher.last("ann@cluster.lab") is not None
                        and watcher.last("ann@cluster.lab").status == "Available")
    assert result.refused == {}
    tc.publish([StatusRecord(user="ann@cluster.lab", status="At Lunch", server="SIPS_1",
                             on_phone=True, detail="back at 2", until=1_900_000_000.0)])
    await watcher.until(lambda: watcher.last("ann@cluster.lab").status == "At Lunch")
    last = watcher.last("ann@cluster.lab")
    assert last is not None
    assert (last.on_phone, last.detail, last.until, last.publisher) == (
        True, "back at 2", 1_900_000_000.0, "TC_1")
    answer = await desk.query(["ann@cluster.lab"])
    assert answer.records[0].status == "At Lunch" and answer.records[0].server == "SIPS_1"
    assert desk.gaps == 0 and desk.events >= 1
    found = await desk.search("ann")
    assert [e["email"] for e in found.entries] == ["ann@cluster.lab"]
    assert found.entries[0]["status"] == "At Lunch"


async def test_silent_publisher_logs_its_users_off_and_its_snapshot_restores(lab: Lab) -> None:
    lab.write('publisher-timeout = 0.5\nkeep-alive-interval = 0.2\nkeep-alive-timeout = 0.6')
    await lab.start("SA_1")
    watcher = Watcher()
    desk = lab.client("desk", Role.CONSUMER, on_records=watcher)
    tc = lab.client("TC_1", Role.PUBLISHER)
    await tc.wait_open()
    await desk.wait_open()
    tc.publish([StatusRecord(user="bob@cluster.lab", status="Follow Up", server="SIPS_1",
                             on_phone=True),
                StatusRecord(user="cy@cluster.lab", status="On Vacation", persistent=True,
                             server="SIPS_1")])
    await desk.watch(["bob@cluster.lab", "cy@cluster.lab"])
    await watcher.until(lambda: watcher.last("bob@cluster.lab") is not None
                        and watcher.last("bob@cluster.lab").on_phone)
    await tc.stop()  # the publisher goes silent
    await watcher.until(lambda: watcher.last("bob@cluster.lab").server == "", timeout=5)
    bob, cy = watcher.last("bob@cluster.lab"), watcher.last("cy@cluster.lab")
    assert bob is not None and cy is not None
    assert (bob.on_phone, bob.status) == (False, "")
    await watcher.until(lambda: watcher.last("cy@cluster.lab").server == "")
    assert watcher.last("cy@cluster.lab").status == "On Vacation"  # persistent
    # its next snapshot restores it
    tc.start()
    await watcher.until(lambda: watcher.last("bob@cluster.lab").server == "SIPS_1")
    assert watcher.last("bob@cluster.lab").on_phone is True
    assert desk.gaps == 0
    metrics = await metrics_text(lab, "SA_1")
    assert "sipcluster_status_users 2.0" in metrics


async def test_web_search_and_health(lab: Lab) -> None:
    service = await lab.start("SA_1")
    tc = lab.client("TC_1", Role.PUBLISHER)
    await tc.wait_open()
    tc.publish([StatusRecord(user="dee@cluster.lab", status="Available", server="SIPS_1")])
    base = f"http://{service.management_host}:{service.management.port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(base + "/status/search?q=dee") as answer:
                entries = await answer.json()
            if entries:
                break
            await asyncio.sleep(0.05)
        assert entries[0]["email"] == "dee@cluster.lab" and entries[0]["status"] == "Available"
        async with http.get(base + "/healthz") as answer:
            assert answer.status == 200
        async with http.get(base + "/status/publishers") as answer:
            [publisher] = await answer.json()
        assert publisher["publisher"] == "TC_1" and publisher["online"] is True
        async with http.get(base + "/") as answer:
            assert "EventSource" in await answer.text()


async def test_long_answers_come_in_parts_and_are_gathered(lab: Lab) -> None:
    service = await lab.start("SA_1")
    tc = lab.client("TC_1", Role.PUBLISHER)
    await tc.wait_open()
    tc.publish([StatusRecord(user=f"u{i:05d}@cluster.lab", status="Available", server="SIPS_1")
                for i in range(4500)])
    for _ in range(200):
        if len(service.aggregator.table) == 4500:
            break
        await asyncio.sleep(0.05)
    watcher = Watcher()
    wallboard = lab.client("desk", Role.CONSUMER, on_records=watcher)
    await wallboard.wait_open()
    result = await wallboard.watch(["*"])
    assert len(result.records) == 4500 and len(watcher.seen) == 4500
    answer = await wallboard.query([f"u{i:05d}@cluster.lab" for i in range(4500)])
    assert {r.user for r in answer.records} == {f"u{i:05d}@cluster.lab" for i in range(4500)}
    tc.publish([StatusRecord(user="u00007@cluster.lab", status="Busy", server="SIPS_1")])
    await watcher.until(lambda: watcher.last("u00007@cluster.lab").status == "Busy")
    assert wallboard.gaps == 0
