"""The cluster file's T-Library output bounds on the t-controller's TCport:
a desktop that registers a DN and reads nothing is dropped past
``tlib-max-output`` while the DN's events keep coming; a desktop that reads
gets every event."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from typing import Any

import pytest

from protocols.tlib.framing import encode_frame

pytestmark = pytest.mark.timeout(60)

EVENTS = 5000


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        return str(answer.read().decode())


async def test_a_desktop_that_does_not_read_is_dropped_at_the_configured_bound(
    make_harness: Any,
) -> None:
    h = await make_harness(tserver="tlib-output-high-water = 4096\ntlib-max-output = 65536",
                           registered={"1001": "sip:1001@127.0.0.1:5099"})
    reader = await h.desktop("reads")
    await reader.request("RequestRegisterAddress", AttributeThisDN="1001")
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, h.tc)
    await loop.sock_sendall(sock, encode_frame({
        "message": "RequestRegisterClient", "AttributeReferenceID": 1,
        "AttributeApplicationName": "reads-nothing", "AttributeClientType": "legacy",
        "AttributeProtocolVersion": 1}) + encode_frame({
            "message": "RequestRegisterAddress", "AttributeReferenceID": 2,
            "AttributeThisDN": "1001"}))
    controller = h.service.controller
    await h.until(lambda: len(controller.tcport_clients) == 2)
    try:
        # ~2 KB per event: 5,000 of them (10 MB) are far past 64 KiB plus what the
        # kernel's socket buffers take in (tcp_wmem's 4 MiB), and below the 16 MiB default
        for i in range(EVENTS):
            h.node.call("EventEstablished", "1001", f"conn-{i:05d}",
                        AttributeUserData={"pad": "x" * 2000})
            if i % 100 == 99:
                await asyncio.sleep(0)
        try:
            await h.until(lambda: len(controller.tcport_clients) == 1, timeout=20)
        except TimeoutError:
            raise AssertionError("the desktop that reads nothing was not dropped; the other "
                                 f"got {len(reader.of('EventEstablished'))} events") from None
        await reader.wait_for("EventEstablished", count=EVENTS, timeout=20)
        metrics = await asyncio.to_thread(scrape, h.http)
        assert ('sipcluster_tlib_slow_consumers_total{outcome="dropped",port="tc-port"} 1.0'
                in metrics), [line for line in metrics.splitlines() if "slow" in line]
    finally:
        sock.close()
