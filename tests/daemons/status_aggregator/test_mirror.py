"""Two mirrored aggregators: replication, fail-over of publishers and
watchers in list order, convergence after a partition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daemons.runtime import certs
from daemons.runtime.status_client import StatusClient
from protocols.status.messages import Role, StatusRecord
from tests.daemons.status_aggregator.conftest import CLIENT_HOST, Lab, Watcher


def client_of(lab: Lab, name: str, role: Role, only: str,
              watcher: Watcher | None = None) -> StatusClient:
    """A client that knows one aggregator only."""
    client = StatusClient(name=name, role=role,
                          aggregators=[a for a in lab.addresses() if a.name == only],
                          context=certs.client_context(lab.certs, name), on_records=watcher,
                          retry=0.2, local_address=CLIENT_HOST)
    client.start()
    lab.clients.append(client)
    return client


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``check`` (state inside the aggregators) until it holds."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_a_change_published_at_one_mirror_reaches_a_watcher_of_the_other(lab: Lab) -> None:
    await lab.start("SA_1")
    await lab.start("SA_2")
    watcher = Watcher()
    desk = client_of(lab, "desk", Role.CONSUMER, "SA_2", watcher)
    tc = client_of(lab, "TC_1", Role.PUBLISHER, "SA_1")
    await tc.wait_open()
    await desk.wait_open()
    await desk.watch(["ann@cluster.lab"])
    tc.publish([StatusRecord(user="ann@cluster.lab", status="In a meeting", server="SIPS_1")])
    await watcher.until(lambda: (watcher.last("ann@cluster.lab") or StatusRecord("")).status
                        == "In a meeting")
    assert desk.gaps == 0


async def test_failover_restores_publishers_and_watchers(lab: Lab) -> None:
    await lab.start("SA_1")
    await lab.start("SA_2")
    watcher = Watcher()
    desk = lab.client("desk", Role.CONSUMER, on_records=watcher)
    tc = lab.client("TC_1", Role.PUBLISHER)
    assert await tc.wait_open() == "SA_1" and await desk.wait_open() == "SA_1"
    await desk.watch(["ann@cluster.lab"])
    tc.publish([StatusRecord(user="ann@cluster.lab", status="Available", server="SIPS_1")])
    await watcher.until(lambda: (watcher.last("ann@cluster.lab") or StatusRecord("")).status
                        == "Available")
    await until(lambda: len(lab.services["SA_2"].aggregator.table) == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await lab.stop("SA_1")
    # a change made while the clients fail over is not missed
    tc.publish([StatusRecord(user="ann@cluster.lab", status="At Lunch", server="SIPS_1")])
    await watcher.until(lambda: watcher.last("ann@cluster.lab").status == "At Lunch")
    took = loop.time() - started
    assert tc.connected_to == "SA_2" and desk.connected_to == "SA_2"
    assert took < 5.0
    tc.publish([StatusRecord(user="ann@cluster.lab", status="Gone Home", server="SIPS_1")])
    await watcher.until(lambda: watcher.last("ann@cluster.lab").status == "Gone Home")


async def test_mirrors_converge_after_a_partition(lab: Lab) -> None:
    sa1 = await lab.start("SA_1")
    sa2 = await lab.start("SA_2")
    tc1 = client_of(lab, "TC_1", Role.PUBLISHER, "SA_1")
    tc2 = client_of(lab, "TC_2", Role.PUBLISHER, "SA_2")
    await tc1.wait_open()
    await tc2.wait_open()
    await until(lambda: sa1.aggregator.mirror_links() and sa2.aggregator.mirror_links())
    # the partition: SA_1 stops dialling and its link drops
    await sa1.mirrors.stop()
    for conn in sa1.aggregator.mirror_links():
        conn.driver.transport.abort()
    await until(lambda: not sa2.aggregator.mirror_links())
    tc1.publish([StatusRecord(user="ann@cluster.lab", status="Busy", server="SIPS_1")])
    tc2.publish([StatusRecord(user="bob@cluster.lab", status="Away", server="SIPS_2")])
    await until(lambda: "ann@cluster.lab" in sa1.aggregator.table.raw
                and "bob@cluster.lab" in sa2.aggregator.table.raw)
    assert "bob@cluster.lab" not in sa1.aggregator.table.raw
    # the link comes back: both sides sync
    sa1.mirrors.start()
    await until(lambda: sa1.aggregator.table.raw == sa2.aggregator.table.raw
                and len(sa1.aggregator.table) == 2)
    for sa in (sa1, sa2):
        assert sa.aggregator.table.view("ann@cluster.lab").status == "Busy"
        assert sa.aggregator.table.view("bob@cluster.lab").status == "Away"
