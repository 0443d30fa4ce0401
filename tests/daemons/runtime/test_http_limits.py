"""Slow and greedy HTTP clients against a daemon's HTTP port: a request head
that never completes is cut off, connections past the per-address and per-port
limits are closed at once, each with a log line and a count, and a
well-behaved client is served throughout."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest

from daemons.runtime.management import HttpLimits, ManagementServer, Metrics

HOST = "127.0.230.61"
GREEDY = "127.0.230.62"
GOOD = "127.0.230.63"
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) without answering."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


async def _metrics(port: int) -> str:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://{HOST}:{port}/metrics") as resp:
        return await resp.text()


async def _healthz(port: int) -> int:
    connector = aiohttp.TCPConnector(local_addr=(GOOD, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get(f"http://{HOST}:{port}/healthz") as resp:
        return resp.status


@pytest.mark.timeout(30)
async def test_slow_heads_are_cut_and_greedy_peers_refused(capsys: Any) -> None:
    server = ManagementServer(Metrics("sipcluster"), app_name="SIPS_H",
                              limits=HttpLimits(head_timeout=1.0, max_per_peer=20,
                                                max_connections=40))
    port = await server.start(HOST, 0)
    socks: list[socket.socket] = []
    try:
        for _ in range(21):  # a slowloris: heads that are never finished
            s = socket.create_connection((HOST, port), source_address=(GREEDY, 0))
            s.setblocking(False)
            s.send(PARTIAL)
            socks.append(s)
        await asyncio.sleep(0.3)
        # the 21st from one address is closed at once; the 20 before it wait
        assert _closed(socks[20])
        assert not any(_closed(s) for s in socks[:20])
        # another client is served meanwhile
        assert await _healthz(port) == 200
        started = time.monotonic()
        while not all(_closed(s) for s in socks[:20]):
            for s in socks[:20]:
                try:
                    s.send(b"X")  # a byte now and then does not buy more time
                except OSError:
                    pass
            assert time.monotonic() - started < 10, "slow heads were never cut off"
            await asyncio.sleep(0.2)
        assert await _healthz(port) == 200
        text = await _metrics(port)
        lines = text.splitlines()
        assert 'sipcluster_http_connections_closed_total{reason="too_many_from_peer"} 1.0' \
            in lines, text
        assert 'sipcluster_http_connections_closed_total{reason="slow_request_head"} 20.0' \
            in lines, text
    finally:
        for s in socks:
            s.close()
        await server.stop()
    log = capsys.readouterr().out + capsys.readouterr().err
    assert "http_connection_closed" in log


@pytest.mark.timeout(30)
async def test_port_limit_closes_the_excess_and_frees_with_them() -> None:
    server = ManagementServer(Metrics("sipcluster"), app_name="SIPS_H",
                              limits=HttpLimits(head_timeout=30.0, max_per_peer=100,
                                                max_connections=10))
    port = await server.start(HOST, 0)
    socks = []
    try:
        for _ in range(12):
            s = socket.create_connection((HOST, port), source_address=(GREEDY, 0))
            s.setblocking(False)
            socks.append(s)
        await asyncio.sleep(0.3)
        assert [_closed(s) for s in socks] == [False] * 10 + [True] * 2
        for s in socks[:10]:
            s.close()
        await asyncio.sleep(0.3)
        assert await _healthz(port) == 200  # the closed ones gave their places back
        text = await _metrics(port)
        assert 'sipcluster_http_connections_closed_total{reason="too_many_connections"} 2.0' \
            in text.splitlines(), text
    finally:
        for s in socks:
            s.close()
        await server.stop()
