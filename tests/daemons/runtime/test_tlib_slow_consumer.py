"""Slow consumers on a T-Library port: a client that does not read is never
allowed to make the server queue without bound (daemons/runtime/tlib_server).

A raw TCP client registers and then only writes (a small receive buffer, so
the kernel holds little for it); the server stops reading its requests once
``output_high_water`` bytes wait for it, resumes when it reads again, and
drops it past ``max_output_bytes`` when events keep coming. A well-behaved
client on the same port is answered throughout.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from daemons.runtime.management import Metrics
from daemons.runtime.tlib_client import TLibClient
from daemons.runtime.tlib_server import TLibConnection, TLibServer
from protocols.tlib.events import RequestReceived
from protocols.tlib.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.timeout(60)

HIGH_WATER = 32 * 1024
MAX_OUTPUT = 1024 * 1024


class Handler:
    """Answers RequestRegisterAddress; counts what it handled."""

    def __init__(self) -> None:
        self.handled = 0
        self.conns: list[TLibConnection] = []

    def on_registered(self, conn: TLibConnection) -> None:
        self.conns.append(conn)

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        self.handled += 1
        conn.answer(request, "EventRegistered",
                    {"AttributeThisDN": request.message["AttributeThisDN"]})

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        pass


async def start(handler: Handler, metrics: Metrics) -> TLibServer:
    server = TLibServer(handler, application_name="T1", port_name="default-port",
                        metrics=metrics, output_high_water=HIGH_WATER,
                        max_output_bytes=MAX_OUTPUT)
    await server.listen("127.0.0.1", 0)
    return server


async def raw_client(address: tuple[str, int]) -> socket.socket:
    """A registered client socket that reads nothing until told (a small receive
    buffer, so the kernel holds little for it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, address)
    await loop.sock_sendall(sock, encode_frame({
        "message": "RequestRegisterClient", "AttributeReferenceID": 1,
        "AttributeApplicationName": "never-reads", "AttributeClientType": "legacy",
        "AttributeProtocolVersion": 1}))
    return sock


async def send_in_background(sock: socket.socket, data: bytes) -> asyncio.Task[None]:
    """Write ``data`` as the server lets it in (it stops reading a slow client)."""
    return asyncio.create_task(asyncio.get_running_loop().sock_sendall(sock, data))


def requests(count: int, first: int = 2) -> bytes:
    return b"".join(encode_frame({
        "message": "RequestRegisterAddress", "AttributeReferenceID": first + i,
        "AttributeThisDN": f"{1000 + i % 9000}"}) for i in range(count))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_a_client_that_does_not_read_stops_being_read() -> None:
    handler, metrics = Handler(), Metrics("sipcluster")
    server = await start(handler, metrics)
    assert server.address is not None
    sock = await raw_client(server.address)
    sent = 200_000  # ~16 MB of answers: more than the kernel's socket buffers hold
    sending = await send_in_background(sock, requests(sent))
    await until(lambda: any(c.reading_paused for c in handler.conns))
    # the kernel's send buffer may still grow and take some answers; then the
    # server reads nothing more of this client
    last, steady_since = -1, asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - steady_since < 1.0:
        if handler.handled != last:
            last, steady_since = handler.handled, asyncio.get_running_loop().time()
        await asyncio.sleep(0.1)
    assert handler.handled < sent / 2
    slow = next(c for c in handler.conns if c.reading_paused)
    # bounded: the high-water mark plus the answers to the last read (asyncio reads
    # at most 256 KiB at a time)
    assert slow.transport.get_write_buffer_size() <= HIGH_WATER + 1024 * 1024
    assert sample(metrics, "sipcluster_tlib_slow_consumers_total",
                  port="default-port", outcome="paused") >= 1
    # a well-behaved desktop is served meanwhile
    desk = await TLibClient.connect(*server.address, "desk")
    answer = await desk.request("RequestRegisterAddress", AttributeThisDN="5555")
    assert answer["message"] == "EventRegistered"
    await desk.close()
    # the slow client reads at last: every request of it is answered, in order
    decoder = FrameDecoder()
    answers: list[int] = []
    loop = asyncio.get_running_loop()
    while len(answers) < sent:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        assert data, f"connection closed after {len(answers)} answers"
        decoder.feed(data)
        for frame in decoder:
            if frame.get("message") == "EventRegistered":
                answers.append(frame["AttributeReferenceID"])
    assert answers == list(range(2, 2 + sent))
    await sending
    sock.close()
    await server.close()


async def test_a_client_flooded_with_events_it_does_not_read_is_dropped() -> None:
    handler, metrics = Handler(), Metrics("sipcluster")
    server = await start(handler, metrics)
    assert server.address is not None
    sock = await raw_client(server.address)
    await until(lambda: bool(handler.conns))
    slow = handler.conns[0]
    blob = "x" * 2000
    for i in range(10_000):  # 20 MB of events: past the kernel's buffers and the limit
        if slow.send_event("EventAttachedDataChanged", {
                "AttributeThisDN": "1001", "AttributeConnID": "0123456789abcdef",
                "AttributeUserData": {"n": i, "blob": blob}}, trusted=True) is None:
            break
        await asyncio.sleep(0)
    await until(lambda: slow.closed)
    assert sample(metrics, "sipcluster_tlib_slow_consumers_total",
                  port="default-port", outcome="dropped") == 1
    assert slow not in server.connections
    desk = await TLibClient.connect(*server.address, "desk")
    answer = await desk.request("RequestRegisterAddress", AttributeThisDN="5555")
    assert answer["message"] == "EventRegistered"
    await desk.close()
    sock.close()
    await server.close()
