"""The cluster file's T-Library output bounds on the director's reporting port
(``[switch.tserver]`` ``tlib-output-high-water``): a client that sends
requests and reads none of the answers stops being read once the bound is
queued for it, a reporting client that reads is served meanwhile, and once
the first client reads, every request it sent is answered in order."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from protocols.tlib.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.timeout(120)

DIRECTOR = "127.0.145.80"
REQUESTS = 100_000  # about 8 MB of requests: past what the kernel's buffers take in


def _metrics(lab: Any) -> str:
    with urllib.request.urlopen(f"http://{DIRECTOR}:{lab.ports['director_1']}/metrics",
                                timeout=5) as resp:
        return str(resp.read().decode())


def _paused(metrics: str) -> bool:
    return ('sipcluster_tlib_slow_consumers_total{outcome="paused",port="director-port"}'
            in metrics)


async def test_a_reporting_client_that_does_not_read_stops_being_read(
    director_lab: Any,
) -> None:
    lab = await director_lab(tserver="tlib-output-high-water = 4096\n"
                                     "tlib-max-output = 16777216")
    director = await lab.director()
    await lab.until("agent view", lambda: director.events("t_controller_linked"))
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.bind(("127.0.145.93", 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, (DIRECTOR, lab.ports["dport_1"]))
    payload = encode_frame({
        "message": "RequestRegisterClient", "AttributeReferenceID": 1,
        "AttributeApplicationName": "reads-nothing", "AttributeClientType": "legacy",
        "AttributeProtocolVersion": 1}) + b"".join(encode_frame({
            "message": "RequestQueryAddress", "AttributeReferenceID": i + 2,
            "AttributeThisDN": "8000"}) for i in range(REQUESTS))
    try:
        # write without reading until the director stops taking the requests
        sent, stalled_since = 0, time.monotonic()
        while sent < len(payload) and time.monotonic() - stalled_since < 2.0:
            try:
                n = sock.send(payload[sent:sent + 65536])
            except BlockingIOError:
                await asyncio.sleep(0.05)
                continue
            sent += n
            stalled_since = time.monotonic()
        assert sent < len(payload), "the director read every request of a client that " \
            "reads nothing"
        metrics = await asyncio.to_thread(_metrics, lab)
        assert _paused(metrics), [line for line in metrics.splitlines() if "slow" in line]
        # a reporting client that reads is answered meanwhile
        report = await TLibClient.connect(DIRECTOR, lab.ports["dport_1"], "StatServer",
                                          "legacy", local_addr=("127.0.145.94", 0))
        try:
            info = await asyncio.wait_for(
                report.request("RequestQueryAddress", AttributeThisDN="8000"), 5)
            assert info["message"] == "EventAddressInfo"
        finally:
            await report.close()
        # the client reads now: the director reads the rest, and answers every request
        decoder = FrameDecoder()
        answers: list[int] = []

        async def read_all() -> None:
            while len(answers) < REQUESTS:
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    return
                decoder.feed(data)
                answers.extend(int(f.get("AttributeReferenceID", 0)) for f in decoder
                               if f.get("message") == "EventAddressInfo")

        reader = asyncio.create_task(read_all())
        await loop.sock_sendall(sock, payload[sent:])
        await asyncio.wait_for(reader, 60)
        assert answers == list(range(2, REQUESTS + 2))
    finally:
        sock.close()
