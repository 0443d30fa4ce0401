"""The hub's timers and limits with a fake wall clock (request timeouts, late
responses, message-ttl, max-queue-bytes, a request waiting forever across a
hub restart): a real hub on a real socket and store, in this process, its
clock driven by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemons.rtm_server.hub import Hub, HubMetrics, HubOptions
from daemons.rtm_server.service import HubProtocol
from daemons.rtm_server.store import SqliteStore
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics
from daemons.runtime.rtm_client import Delivery, HandlerTable, RequestTimeout, RtmClient
from protocols.rtm.elements import MessageBuilder
from tests.conftest import free_port
from tests.daemons.rtm_server.conftest import PASSWORDS, until

HOST = "127.0.124.1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Running:
    hub: Hub
    server: asyncio.Server
    store: SqliteStore
    metrics: Metrics


class Bench:
    """Starts and restarts the in-process hub on one port and store."""

    def __init__(self, tmp: Path, options: HubOptions) -> None:
        self.tmp = tmp
        self.options = options
        self.port = free_port(HOST)
        self.clock = Clock()
        self.running: Running | None = None
        self.clients: list[RtmClient] = []

    async def start(self) -> Hub:
        store = SqliteStore(self.tmp / "hub.db")
        await store.open()
        assert await store.acquire()
        metrics = Metrics("sipcluster")
        hub = Hub("RTM1", self.options, store, await store.load(),
                  metrics=HubMetrics(metrics, self.options.sites), log=get_logger("hub"),
                  clock=self.clock)
        hub.start()
        server = await asyncio.get_running_loop().create_server(
            lambda: HubProtocol(hub), HOST, self.port, reuse_address=True)
        self.running = Running(hub, server, store, metrics)
        return hub

    async def stop(self) -> None:
        r = self.running
        if r is None:
            return
        r.server.close()
        await r.hub.close()
        await r.store.close()
        self.running = None

    async def client(self, site: int, handler: object = None) -> RtmClient:
        c = RtmClient(site=site, password=PASSWORDS[site], hubs=[(HOST, self.port)],
                      state=self.tmp / f"site{site}.db", handler=handler,  # type: ignore[arg-type]
                      reconnect_max=0.2)
        await c.start()
        await asyncio.wait_for(c.connected.wait(), 20)
        self.clients.append(c)
        return c

    def metric(self, name: str, **labels: str) -> float:
        assert self.running is not None
        value = self.running.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = Bench(tmp_path, HubOptions(sites=dict(PASSWORDS), sweep_interval=3600.0,
                                   max_queue_bytes=4096, message_ttl=60.0, keepalive=5.0))
    yield b
    for c in b.clients:
        await c.close()
    await b.stop()


def ints(*values: int) -> tuple:  # type: ignore[type-arg]
    builder = MessageBuilder()
    for v in values:
        builder.put_integer(v)
    return builder.elements


async def test_request_to_an_away_site_times_out_and_is_dead_lettered(bench: Bench) -> None:
    hub = await bench.start()
    one = await bench.client(1)
    _, answer = await one.submit_request(2, "o", "where", ints(7), timeout_ms=1500)
    await until(lambda: hub.pending, 20, "the request taken")
    bench.clock.now += 1.0
    hub.sweep(bench.clock.now)
    await asyncio.sleep(0.1)
    assert not answer.done()  # not yet: 1.0 s of 1.5
    bench.clock.now += 1.0
    hub.sweep(bench.clock.now)
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(answer, 20)
    await until(lambda: bench.metric("sipcluster_rtm_dead_letters_total",
                                     reason="request-timeout") == 1, 20, "dead letter")
    got: list[Delivery] = []
    await bench.client(2, got.append)
    await asyncio.sleep(0.3)
    assert got == []  # the timed-out request is not delivered late
    assert bench.metric("sipcluster_rtm_request_timeouts_total", site="1") == 1


async def test_a_late_response_is_discarded_and_counted(bench: Bench) -> None:
    hub = await bench.start()
    requests: list[Delivery] = []
    two = await bench.client(2, requests.append)  # a handler that does not answer
    one = await bench.client(1)
    _, answer = await one.submit_request(2, "o", "where", ints(7), timeout_ms=1000)
    await until(lambda: requests, 20, "the request delivered")
    request = requests[0]
    assert request.correlation != 0 and request.reply_to == 1
    bench.clock.now += 2.0
    hub.sweep(bench.clock.now)
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(answer, 20)
    await two.send_response(request, ints(99))
    await asyncio.wait_for(two.flushed(), 20)
    assert bench.metric("sipcluster_rtm_late_responses_total", site="2") == 1
    await asyncio.sleep(0.2)
    assert one.handled == 1  # the timeout only


async def test_a_request_waiting_forever_survives_a_hub_restart(bench: Bench) -> None:
    await bench.start()
    one = await bench.client(1)
    seq, answer = await one.submit_request(2, "o", "double", ints(21), timeout_ms=0)
    await asyncio.wait_for(one.flushed(), 20)
    await bench.stop()
    bench.clock.now += 86_400 * 30  # a month: no deadline
    hub = await bench.start()
    assert len(hub.pending) == 1
    hub.sweep(bench.clock.now)

    def double(d: Delivery) -> tuple:  # type: ignore[type-arg]
        return ints(d.reader().get_integer() * 2)

    await bench.client(2, double)
    response = await asyncio.wait_for(answer, 20)
    assert response.kind == "response" and response.in_reply_to == seq
    assert response.reader().get_integer() == 42


async def test_message_ttl_moves_what_waits_too_long_to_the_dead_letters(bench: Bench) -> None:
    hub = await bench.start()
    one = await bench.client(1)
    for i in range(3):
        await one.send_event(2, "o", "e", ints(i))
    await asyncio.wait_for(one.flushed(), 20)
    bench.clock.now += 30
    await one.send_event(2, "o", "e", ints(3))  # younger than the TTL at the sweep
    await asyncio.wait_for(one.flushed(), 20)
    bench.clock.now += 31
    hub.sweep(bench.clock.now)
    await until(lambda: hub.queues[2].count == 1, 20, "the TTL sweep")
    assert bench.metric("sipcluster_rtm_dead_letters_total", reason="ttl-expired") == 3
    got: list[Delivery] = []
    await bench.client(2, got.append)
    await until(lambda: got, 20, "the young message")
    assert [d.reader().get_integer() for d in got] == [3]
    dead = await hub.store.dead_letters(10)
    assert sorted(d["reason"] for d in dead) == ["ttl-expired"] * 3


async def test_max_queue_bytes_bounds_an_away_site_queue(bench: Bench) -> None:
    hub = await bench.start()
    one = await bench.client(1)
    text = "x" * 200
    for i in range(40):
        await one.send_event(2, "o", "e", MessageBuilder().put_integer(i).put_string(text)
                             .elements)
    await asyncio.wait_for(one.flushed(), 20)
    q = hub.queues[2]
    assert q.bytes <= 4096 and q.count > 0
    kept = q.count
    assert bench.metric("sipcluster_rtm_dead_letters_total", reason="queue-full") == 40 - kept
    got: list[Delivery] = []
    await bench.client(2, got.append)
    await until(lambda: len(got) == kept, 20, "the queued messages")
    assert [d.reader().get_integer() for d in got] == list(range(kept))


async def test_a_site_whose_state_file_was_replaced_is_not_taken_for_a_resend(
        bench: Bench) -> None:
    """The hub holds seqs 1-3 of site 1; site 1 comes back with a new, empty state
    file (a restored host) and numbers from 1 again: its outbox moves above 3, so
    its new messages are delivered, not dropped as duplicates."""
    await bench.start()
    one = await bench.client(1)
    for i in range(3):
        await one.send_event(2, "o", "e", ints(i))
    await asyncio.wait_for(one.flushed(), 20)
    await one.close()
    bench.clients.remove(one)
    (bench.tmp / "site1.db").unlink()
    again = RtmClient(site=1, password=PASSWORDS[1], hubs=[(HOST, bench.port)],
                      state=bench.tmp / "site1.db", reconnect_max=0.2)
    await again.start()
    bench.clients.append(again)
    first = await again.send_event(2, "o", "e", ints(100))  # numbered 1, before the Welcome
    await asyncio.wait_for(again.connected.wait(), 20)
    await asyncio.wait_for(again.flushed(), 20)
    second = await again.send_event(2, "o", "e", ints(101))
    await asyncio.wait_for(again.flushed(), 20)
    assert (first, second) in ((1, 5), (4, 5))  # numbered before or after the Welcome
    got: list[Delivery] = []
    await bench.client(2, got.append)
    await until(lambda: len(got) == 5, 20, "all five messages")
    assert [d.reader().get_integer() for d in got] == [0, 1, 2, 100, 101]


async def test_handlers_by_object_and_event_id(bench: Bench) -> None:
    """The guide's Handler1/2/3: an event with a string and an integer, a request
    answered by the handler matching its object and event ids; a message no
    handler matches is counted, journaled, not delivered again."""
    await bench.start()
    seen: list[tuple[str, int]] = []
    handlers = HandlerTable()

    @handlers.on("Multisite", "Handler1")
    def handler1(d: Delivery) -> None:
        reader = d.reader()
        seen.append((reader.get_string(), reader.get_integer()))
        assert d.correlation == 0 and d.reply_to == 0  # an event

    @handlers.on("Multisite", "Handler2")
    def handler2(d: Delivery) -> tuple:  # type: ignore[type-arg]
        assert d.correlation != 0 and d.reply_to == 1  # a request
        return ints(d.reader().get_integer() + 1)

    @handlers.on("Multisite", "Boom")
    def boom(d: Delivery) -> None:
        raise ValueError("a handler's bug")

    two = await bench.client(2, handlers)
    one = await bench.client(1)
    await one.send_event(2, "Multisite", "Boom", ints(0))  # logged, counted; the site goes on
    await one.send_event(2, "Multisite", "Handler1",
                         MessageBuilder().put_string("jdoe").put_integer(7).elements)
    await one.send_event(2, "Multisite", "Nobody", ints(0))
    answer = await asyncio.wait_for(one.send_request(2, "Multisite", "Handler2", ints(41),
                                                     timeout_ms=5000), 10)
    assert answer.reader().get_integer() == 42
    await until(lambda: two.handled == 4, 20, "four messages handled")
    assert seen == [("jdoe", 7)]
    assert handlers.unhandled == 1
    assert two.handler_errors == 1


async def test_a_message_larger_than_a_frame_is_refused_at_the_site(bench: Bench) -> None:
    await bench.start()
    one = await bench.client(1)
    with pytest.raises(ValueError, match="largest frame"):
        await one.send_event(2, "o", "e", MessageBuilder().put_string("x" * 2_000_000).elements)
    assert one.outbox_size == 0
    assert await one.send_event(2, "o", "e", ints(1)) == 1  # the site goes on
