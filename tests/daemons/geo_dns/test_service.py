"""``sipcluster geo-dns`` as a process: serves the cluster file's zones or a
zones directory, /healthz and /metrics, stops on SIGTERM; ``geo-dns zones``
writes and checks the deploy/dns files."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
DEPLOY_DNS = ROOT / "deploy" / "dns"


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemons.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(params=["config", "zones"])
def daemon(request: Any, free_port: Any, tmp_path: Path) -> Iterator[tuple[tuple[str, int], int]]:
    """The daemon started from the cluster file or from a copy of deploy/dns."""
    dns_port = free_port("127.0.0.1")
    http_port = free_port("127.0.0.1")
    if request.param == "config":
        source = ["--config", str(EXAMPLE_CLUSTER)]
    else:
        zones = tmp_path / "zones"
        shutil.copytree(DEPLOY_DNS, zones)
        source = ["--zones", str(zones)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "geo-dns", *source,
         "--listen", f"127.0.0.1:{dns_port}", "--http", f"127.0.0.1:{http_port}",
         "--log-format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"geo-dns exited {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                status, _ = _get(f"http://127.0.0.1:{http_port}/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("geo-dns did not become healthy")
            time.sleep(0.1)
        yield ("127.0.0.1", dns_port), http_port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        out = proc.stdout.read()  # type: ignore[union-attr]
        assert "daemon_stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


async def test_daemon_answers_by_view_and_reports(
    daemon: tuple[tuple[str, int], int], ask: Any
) -> None:
    server, http_port = daemon
    dc1 = await ask(server, "_sip._tcp.spx-srv.cluster.lab", "SRV", source="127.0.1.103")
    dc2 = await ask(server, "_sip._tcp.spx-srv.cluster.lab", "SRV", source="127.0.2.103")
    first = {
        name: sorted((rd.priority, rd.target.to_text()) for rd in msg.answer[0])[:2]
        for name, msg in (("dc1", dc1), ("dc2", dc2))
    }
    assert first == {
        "dc1": [(10, "spx1-dc1.cluster.lab."), (10, "spx2-dc1.cluster.lab.")],
        "dc2": [(10, "spx1-dc2.cluster.lab."), (10, "spx2-dc2.cluster.lab.")],
    }
    nx = await ask(server, "nope.cluster.lab", "A", source="127.0.2.103", tcp=True)
    assert nx.rcode() == dns.rcode.NXDOMAIN
    await asyncio.to_thread(_send_garbage, server)
    ok = await ask(server, "cluster.lab", "SOA", source="127.0.1.103")
    assert ok.rcode() == dns.rcode.NOERROR

    status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{http_port}/metrics")
    assert status == 200
    for line in (
        'sipcluster_geo_dns_queries_total{rcode="NOERROR",transport="udp",view="dc1"} 2.0',
        'sipcluster_geo_dns_queries_total{rcode="NOERROR",transport="udp",view="dc2"} 1.0',
        'sipcluster_geo_dns_queries_total{rcode="NXDOMAIN",transport="tcp",view="dc2"} 1.0',
        'sipcluster_geo_dns_queries_total{rcode="FORMERR",transport="udp",view="default"} 1.0',
        'sipcluster_geo_dns_malformed_total{transport="udp"} 1.0',
    ):
        assert line in body.splitlines(), line
    status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{http_port}/status/views")
    assert status == 200
    assert [v["name"] for v in json.loads(body)] == ["dc1", "dc2", "default"]
    status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{http_port}/healthz")
    assert json.loads(body)["checks"]["listeners"]["ok"] is True


def _send_garbage(server: tuple[str, int]) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", server)
        reply = sock.recv(512)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR


def test_zones_command_writes_and_checks(tmp_path: Path) -> None:
    done = _cli("geo-dns", "zones", "--config", str(EXAMPLE_CLUSTER), "--check",
                "--out", str(DEPLOY_DNS))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "dns"
    done = _cli("geo-dns", "zones", "--config", str(EXAMPLE_CLUSTER), "--out", str(out))
    assert done.returncode == 0, done.stderr
    for path in DEPLOY_DNS.iterdir():
        if path.is_file():
            assert (out / path.name).read_text() == path.read_text()
    zone = out / "cluster.lab.dc2.zone"
    zone.write_text(zone.read_text().replace("200 50 5060", "20 50 5060"))
    done = _cli("geo-dns", "zones", "--config", str(EXAMPLE_CLUSTER), "--check",
                "--out", str(out))
    assert done.returncode == 1
    assert "cluster.lab.dc2.zone is out of date" in done.stderr
    assert "dc1.zone" not in done.stderr


def test_bad_sources_are_reported(tmp_path: Path) -> None:
    (tmp_path / "views.toml").write_text("colour = 1\n")
    done = _cli("geo-dns", "--zones", str(tmp_path), "--listen", "127.0.0.1:0")
    assert done.returncode == 2
    assert "colour: unknown option" in done.stderr
    done = _cli("geo-dns", "zones", "--config", str(EXAMPLE_CLUSTER), "--out", str(tmp_path),
                "--default-view", "dc9")
    assert done.returncode == 2
    assert "default view 'dc9'" in done.stderr


def test_udp_receive_buffer_option(free_port: Any) -> None:
    dns_port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "geo-dns", "--config", str(EXAMPLE_CLUSTER),
         "--listen", f"127.0.0.1:{dns_port}", "--udp-receive-buffer", "262144",
         "--log-format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        sized = None
        for line in proc.stdout:
            if "dns_receive_buffer" in line:
                sized = json.loads(line)
            if "daemon_ready" in line:
                break
        assert sized is not None and sized["wanted"] == 262144, sized
        # what the kernel gave (it doubles the value asked, socket(7)), or a warning
        assert sized["bytes"] >= 262144 or sized["level"] == "warning", sized
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    refused = _cli("geo-dns", "--config", str(EXAMPLE_CLUSTER), "--udp-receive-buffer", "1k")
    assert refused.returncode == 2 and "--udp-receive-buffer" in refused.stderr
