"""The management listener serves health and Prometheus metrics over HTTP, and
refuses malformed requests with a 400, one log line and a count."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemons.runtime.management import ManagementServer, Metrics
from tests.support.processes import START_TIMEOUT


async def test_healthz_metrics_and_status_pages() -> None:
    metrics = Metrics("sipcluster")
    counter = metrics.counter("sip_malformed_total", "Malformed SIP messages", ("transport",))
    counter.labels("udp").inc(3)
    server = ManagementServer(metrics, app_name="SIPS_A1")
    healthy = {"ok": True}
    server.add_health_check("sip", lambda: (healthy["ok"], {"listeners": 2}))
    server.add_status_page("/status/peers", lambda: {"peers": ["a", "b"]})
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["status"] == "ok"
                assert body["checks"]["sip"] == {"ok": True, "listeners": 2}
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
                assert 'sipcluster_sip_malformed_total{transport="udp"} 3.0' in text
            async with http.get(f"http://127.0.0.1:{port}/status/peers") as resp:
                assert (await resp.json()) == {"peers": ["a", "b"]}
            healthy["ok"] = False
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "unhealthy"
    finally:
        await server.stop()


# -- requests the listener refuses, in a real daemon ----------------------------

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.77.61"  # the daemon's listeners
CLIENT = "127.0.77.62"  # where the bad requests come from


def _ask(port: int, payload: bytes) -> bytes:
    """Send ``payload`` from CLIENT over a fresh TCP connection; the answer."""
    with socket.create_connection((HOST, port), timeout=5.0,
                                  source_address=(CLIENT, 0)) as sock:
        sock.sendall(payload)  # no half-close: aiohttp drops the answer on an early EOF
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2.0) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def geo_dns(free_port: Any) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``sipcluster geo-dns`` with its JSON log on stdout; its management port."""
    http_port = free_port(HOST, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "geo-dns",
         "--config", str(ROOT / "deploy" / "etc" / "cluster.toml"),
         "--listen", f"{HOST}:{free_port(HOST)}", "--http", f"{HOST}:{http_port}",
         "--name", "GeoDNS", "--log-format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"geo-dns exited {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                if _get(http_port, "/healthz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("geo-dns did not become healthy")
            time.sleep(0.1)
        yield proc, http_port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_refused_requests_are_one_line_and_a_count(
    geo_dns: tuple[subprocess.Popen[str], int]
) -> None:
    proc, port = geo_dns
    oversized = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 100_000
                 + b"\r\n\r\n")
    for payload in (oversized, b"NOT AN HTTP REQUEST LINE\r\n\r\n", oversized):
        answer = _ask(port, payload)
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), answer[:80]
    status, body = _get(port, "/metrics")
    assert status == 200
    lines = body.splitlines()
    assert 'sipcluster_http_bad_requests_total{reason="line_too_long"} 2.0' in lines
    assert any(ln.startswith("sipcluster_http_bad_requests_total{") and ln.endswith(" 1.0")
               and "line_too_long" not in ln for ln in lines), body
    assert _get(port, "/healthz")[0] == 200  # still serving

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    log = proc.stdout.read()  # type: ignore[union-attr]
    assert "Traceback" not in log
    events = [json.loads(line) for line in log.splitlines()]  # every line is one JSON event
    refused = [e for e in events if e["event"] == "http_bad_request"]
    assert len(refused) == 3
    assert [e["reason"] for e in refused][::2] == ["line_too_long", "line_too_long"]
    for event in refused:
        assert event["peer"] == CLIENT
        assert event["status"] == 400
        assert event["level"] == "warning"
        assert event["application"] == "GeoDNS"
        assert len(event["detail"]) < 300  # not the 100 KB header
    assert events[-1]["event"] == "daemon_stopped"


def test_tally_counts_per_label_set_and_exposes_like_a_counter() -> None:
    from daemons.runtime.management import Metrics

    metrics = Metrics(namespace="sipcluster")
    calls = metrics.tally("calls", "Finished calls by outcome", ("outcome",))
    calls.labels("answered").inc()
    calls.labels("answered").inc(2)
    calls.labels("busy").inc()
    assert calls.labels("answered") is calls.labels("answered")
    text = metrics.render().decode()
    assert 'sipcluster_calls_total{outcome="answered"} 3.0' in text
    assert 'sipcluster_calls_total{outcome="busy"} 1.0' in text
    real = Metrics(namespace="sipcluster")
    real.counter("calls", "Finished calls by outcome", ("outcome",)).labels("busy").inc()
    type_line = next(line for line in real.render().decode().splitlines()
                     if line.startswith("# TYPE"))
    assert type_line in text  # the same exposition as the client library's Counter
