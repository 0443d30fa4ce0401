"""A browser that opens the live status feed and never reads it: the feed is
closed once its backlog is full (a log line and a count), the aggregator's
memory for it stays bounded, and the port goes on serving."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest

import daemons.status_aggregator.web as web_module
from protocols.status.messages import Role, StatusRecord
from tests.daemons.status_aggregator.conftest import CLIENT_HOST, Lab


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


@pytest.mark.timeout(60)
async def test_a_feed_nobody_reads_is_closed_not_hoarded(lab: Lab,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    backlog = 50  # batches held for the reader (the shipped size, smaller)
    monkeypatch.setattr(web_module, "MAX_LIVE_BACKLOG", backlog)
    service = await lab.start("SA_1")
    host, port = service.management_host, service.management.port
    tc = lab.client("TC_1", Role.PUBLISHER)
    await tc.wait_open()
    tc.publish([StatusRecord(user="ann@cluster.lab", status="Available", server="SIPS_1")])
    # a reader with a tiny window that never reads
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((CLIENT_HOST, 0))
    sock.connect((host, port))
    sock.sendall(b"GET /status/live?users=ann@cluster.lab HTTP/1.1\r\nHost: x\r\n\r\n")
    web = service.web
    detail = "x" * 1000
    dropped = 0.0
    for n in range(20_000):  # ~20 MB, more than any socket buffers hold
        tc.publish([StatusRecord(user="ann@cluster.lab", status="Available", server="SIPS_1",
                                 detail=f"{n} {detail}")])
        await asyncio.sleep(0.0005)  # one change per frame: one batch each
        if n % 100 == 99:
            dropped = web.live_dropped._value.get()
            if dropped:
                break
    for _ in range(100):
        dropped = web.live_dropped._value.get()
        if dropped:
            break
        await asyncio.sleep(0.1)
    assert dropped == 1.0
    status, metrics = await asyncio.to_thread(_get, f"http://{host}:{port}/metrics")
    assert status == 200
    assert "sipcluster_status_live_feeds_dropped_total 1.0" in metrics.splitlines()
    # the reader, catching up, finds the end of the stream
    sock.settimeout(10)
    while chunk := await asyncio.to_thread(sock.recv, 1 << 20):
        assert chunk
    sock.close()
    assert (await asyncio.to_thread(_get, f"http://{host}:{port}/healthz"))[0] == 200
