"""Replication frames are coalesced (docs/sip-proxy.md, "Replication"): two
replicators on loopback TCP, as two workers of one proxy are. A binding after a
quiet spell leaves at once; the bindings of a burst share a few frames, and a
sibling's bindings still reach another proxy through the worker that holds its
link."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import structlog

from daemons.sip_proxy.registrar import Binding, BindingStore
from daemons.sip_proxy.replication import PeerAddress, Replicator

HOST = "127.0.93.1"
LOG = structlog.get_logger("test")


def binding(i: int, origin: str) -> Binding:
    now = time.time()
    return Binding(f"u{i}@cluster.lab", f"sip:u{i}@127.0.93.9:5060", now + 600, now, origin,
                   proxy_name="SPX")


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def pair(batch_interval: float, unused_tcp_port_factory: Any
               ) -> tuple[Replicator, Replicator]:
    """Workers 0 and 1 of proxy P, each subscribed to the other's sibling port."""
    sib = [unused_tcp_port_factory(), unused_tcp_port_factory()]
    shared = unused_tcp_port_factory()
    reps = []
    for i in (0, 1):
        other = 1 - i
        reps.append(Replicator(f"P~w{i}", HOST, shared, BindingStore(),
                               [PeerAddress(f"P~w{other}", HOST, sib[other])], log=LOG,
                               family="P", sibling_port=sib[i], retry_interval=0.1,
                               batch_interval=batch_interval))
    for rep in reps:
        await rep.start()
    await until(lambda: all(r.subscribers and r.synced for r in reps))
    return reps[0], reps[1]


async def burst(a: Replicator, b: Replicator, start: int, n: int) -> int:
    """``n`` bindings published by ``a`` one loop turn apart, as REGISTERs arrive
    under load; the frames ``a`` wrote for them, once ``b`` has them all."""
    before = a.frames_sent
    for i in range(start, start + n):
        bnd = binding(i, a.name)
        a.store.apply(bnd)
        a.publish(bnd)
        await asyncio.sleep(0)
    await until(lambda: len(b.store) >= start + n)
    return a.frames_sent - before


@pytest.mark.asyncio
async def test_a_burst_shares_frames_and_a_lone_binding_leaves_at_once(
        unused_tcp_port_factory: Any) -> None:
    a, b = await pair(0.05, unused_tcp_port_factory)
    try:
        # quiet link: the first binding is written in its own frame straight away
        assert await burst(a, b, 0, 1) == 1
        await asyncio.sleep(0.1)
        # 200 bindings published back to back: one frame at once, then one per 50 ms
        frames = await burst(a, b, 1, 200)
        assert 1 <= frames <= 3, frames
        assert b.store.get("u200@cluster.lab", "sip:u200@127.0.93.9:5060") is not None
        assert a.status()["frames_sent"] == a.frames_sent and a.status()["batch_ms"] == 50.0
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_without_coalescing_every_turn_writes_a_frame(
        unused_tcp_port_factory: Any) -> None:
    a, b = await pair(0.0, unused_tcp_port_factory)
    try:
        frames = await burst(a, b, 0, 200)
        assert frames >= 150, frames
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_a_siblings_bindings_reach_another_proxy(unused_tcp_port_factory: Any) -> None:
    """Proxy Q subscribes to worker 1 only: what worker 0 originates reaches Q
    through worker 1, coalesced there too."""
    a, b = await pair(0.02, unused_tcp_port_factory)
    q = Replicator("Q", HOST, unused_tcp_port_factory(), BindingStore(),
                   [PeerAddress("P", HOST, b.sibling_port or 0)], log=LOG, retry_interval=0.1)
    # b knows Q as a peer proxy (its cluster file would name it)
    b.peers["Q"] = PeerAddress("Q", HOST, q.port)
    await q.start()
    try:
        await until(lambda: q.synced and len(b.subscribers) == 2)
        await burst(a, b, 0, 100)
        await until(lambda: len(q.store) == 100)
        assert all(bnd.origin == "P~w0" for bnd in q.store.all())
    finally:
        await q.close()
        await a.close()
        await b.close()
