"""``workers = 2``: the sip-proxy as a supervisor and two worker processes on one
SIP port (docs/sip-proxy.md, "Workers"), driven by SIPp over UDP.

The node is a SIPp UAS answering REGISTER and the proxy's OPTIONS checks; the
phones' REGISTERs come from a SIPp UAC with one socket per registration
(``-t un``), so their source ports differ and SO_REUSEPORT spreads them over
both workers; their Contacts name a SIPp UAS (the phone). Calls come from a
SIPp UAC at the node's address, also one socket per call, to each registered
user in turn.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.sip_proxy_site import NODE_XML, PHONE_XML, call_xml, write_proxy_site

ROOT = Path(__file__).resolve().parents[3]
PROXY, NODE, PHONE, REG_UAC = "127.0.248.21", "127.0.248.22", "127.0.248.23", "127.0.248.24"
SIPP = ["sipp", "-nostdin", "-timer_resol", "1", "-deadcall_wait", "2000", "-buff_size",
        str(2**20)]

pytestmark = pytest.mark.skipif(subprocess.run(["which", "sipp"], capture_output=True)
                                .returncode != 0, reason="sipp not installed")

REGISTER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500"><![CDATA[
REGISTER sip:cluster.lab SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:w[call_number]@cluster.lab>;tag=[call_number]
To: <sip:w[call_number]@cluster.lab>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:w[call_number]@PHONE_ADDR>
Expires: 600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

CALL_XML = call_xml("w[call_number]")


def _port_run(host: str, count: int) -> int:
    """The first of ``count`` consecutive ports free for UDP and TCP on ``host``."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            base = int(s.getsockname()[1])
        if base + count > 65000:
            continue
        try:
            for p in range(base, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as t:
                        t.bind((host, p))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


@dataclass
class Cluster:
    """A sip-proxy with workers = 2 and its SIPp node and phone."""

    dir: Path
    proc: subprocess.Popen[bytes]
    proxy_port: int
    http_port: int
    phone_port: int
    node_port: int
    worker_ports: tuple[int, int]
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{PROXY}:{self.http_port}{path}",
                                        timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/healthz")
        return status, json.loads(body)

    def worker_pids(self) -> dict[str, int | None]:
        _, body = self.health()
        return {k: v["pid"] for k, v in body["checks"]["workers"]["workers"].items()}

    def metric(self, name: str, **labels: str) -> dict[str, float]:
        """``name``'s samples with ``labels``, by worker."""
        _, text = self.get("/metrics")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                w = got.get("worker", "")
                out[w] = out.get(w, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def sipp(self, scenario: str, text: str, host: str, target: str, calls: int,
             rate: int = 50) -> subprocess.CompletedProcess[bytes]:
        path = self.dir / scenario
        path.write_text(text.replace("PHONE_ADDR", f"{PHONE}:{self.phone_port}"))
        return subprocess.run(
            [*SIPP, "-sf", str(path), "-i", host, "-p", "0", "-t", "un", "-m", str(calls),
             "-r", str(rate), "-max_socket", "200", "-trace_err", "-error_file",
             str(self.dir / f"{scenario}.err"), target],
            capture_output=True, timeout=60, cwd=self.dir)


def wait_for(check: Any, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def write_config(path: Path, proxy_port: int, node_port: int, http_port: int,
                 worker_base: int, workers: int | str = 2) -> None:
    write_proxy_site(path, proxy_host=PROXY, proxy_port=proxy_port, node_host=NODE,
                     node_port=node_port, http_port=http_port, oos=1, workers=workers,
                     worker_port_base=worker_base)


@pytest.fixture(name="cluster")
def _cluster(tmp_path: Path, free_port: Any) -> Iterator[Cluster]:
    proxy_port = free_port(PROXY)
    http_port = free_port(PROXY, socket.SOCK_STREAM)
    node_port = free_port(NODE)
    phone_port = free_port(PHONE)
    base = _port_run(PROXY, 4)
    cfg = tmp_path / "cluster.toml"
    write_config(cfg, proxy_port, node_port, http_port, base)
    (tmp_path / "node.xml").write_text(NODE_XML)
    (tmp_path / "phone.xml").write_text(PHONE_XML)
    peers = [subprocess.Popen([*SIPP, "-sf", "node.xml", "-i", NODE, "-p", str(node_port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL),
             subprocess.Popen([*SIPP, "-sf", "phone.xml", "-i", PHONE, "-p", str(phone_port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemons.cli", "sip-proxy", "--config", str(cfg),
             "--name", "SPX_1", "--log-format", "json"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    c = Cluster(tmp_path, proc, proxy_port, http_port, phone_port, node_port,
                (base, base + 1), log)
    try:
        wait_for(lambda: _healthy(c), 40.0, "a healthy proxy")
        yield c
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for p in peers:
            p.kill()
            p.wait()


def _healthy(c: Cluster) -> bool:
    try:
        return c.health()[0] == 200
    except (OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _log_events(c: Cluster, event: str) -> list[dict[str, Any]]:
    out = []
    for line in c.log.read_text().splitlines():
        with_event = f'"{event}"' in line
        if with_event:
            out.append(json.loads(line))
    return out


def test_registrations_spread_over_both_workers_and_every_user_is_called(
        cluster: Cluster) -> None:
    users = 40
    reg = cluster.sipp("register.xml", REGISTER_XML, REG_UAC,
                       f"{PROXY}:{cluster.proxy_port}", users)
    assert reg.returncode == 0, (reg.stdout[-2000:], reg.stderr[-2000:])
    stored = cluster.metric("sipcluster_proxy_registrations_total", action="stored")
    # both workers took REGISTERs, and together every one
    assert set(stored) == {"0", "1"} and min(stored.values()) > 0, stored
    assert sum(stored.values()) == users

    # every user is called, whichever worker the INVITE reaches
    calls = cluster.sipp("call.xml", CALL_XML, NODE, f"{PROXY}:{cluster.proxy_port}", users)
    assert calls.returncode == 0, (calls.stdout[-2000:], calls.stderr[-2000:])
    invites = cluster.metric("sipcluster_proxy_requests_total", method="INVITE", action="aor")
    assert set(invites) == {"0", "1"} and sum(invites.values()) == users, invites
    # answers reached the worker that sent the request: nothing timed out or failed
    failed = cluster.metric("sipcluster_proxy_responses_forwarded_total", status_class="4xx")
    failed.update(cluster.metric("sipcluster_proxy_responses_forwarded_total",
                                 status_class="5xx"))
    assert not any(failed.values()), failed
    assert cluster.metric("sipcluster_proxy_responses_forwarded_total",
                          status_class="2xx").keys() == {"0", "1"}


def test_sigterm_stops_the_supervisor_and_every_worker(cluster: Cluster) -> None:
    pids = cluster.worker_pids()
    assert len(pids) == 2 and all(pids.values())
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(15) == 0
    for pid in pids.values():
        assert pid is not None
        wait_for(lambda pid=pid: not _alive(pid), 5.0, f"worker {pid} to end")
    assert _log_events(cluster, "sip_proxy_workers_stopped")
    # the shared SIP port is free again
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((PROXY, cluster.proxy_port))


def test_a_killed_worker_is_restarted_with_every_binding(cluster: Cluster) -> None:
    users = 20
    reg = cluster.sipp("register.xml", REGISTER_XML, REG_UAC,
                       f"{PROXY}:{cluster.proxy_port}", users)
    assert reg.returncode == 0, reg.stdout[-2000:]
    before = cluster.worker_pids()
    victim = before["0"]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: cluster.worker_pids()["0"] not in (None, victim) and _healthy(cluster),
             15.0, "worker 0 to be restarted and healthy")
    assert cluster.worker_pids()["1"] == before["1"]
    assert cluster.metric("sipcluster_proxy_worker_restarts_total") == {"0": 1.0}
    exited = _log_events(cluster, "sip_proxy_worker_exited")
    assert [(e["worker"], e["pid"]) for e in exited] == [(0, victim)]
    # the new worker caught up from its sibling: every user registered before is called
    calls = cluster.sipp("call.xml", CALL_XML, NODE, f"{PROXY}:{cluster.proxy_port}", users)
    assert calls.returncode == 0, (calls.stdout[-2000:], calls.stderr[-2000:])
    invites = cluster.metric("sipcluster_proxy_requests_total", method="INVITE", action="aor")
    assert set(invites) == {"0", "1"} and sum(invites.values()) == users, invites


def test_bad_workers_value_is_refused(tmp_path: Path, free_port: Any) -> None:
    cfg = tmp_path / "cluster.toml"
    write_config(cfg, free_port(PROXY), free_port(NODE), 0, 0, workers=0)
    done = subprocess.run([sys.executable, "-m", "daemons.cli", "sip-proxy", "--config",
                           str(cfg), "--name", "SPX_1"], cwd=ROOT, capture_output=True,
                          timeout=30)
    assert done.returncode == 2
    assert b"workers" in done.stderr, done.stderr


def test_bad_replication_batch_is_refused(tmp_path: Path, free_port: Any) -> None:
    cfg = tmp_path / "cluster.toml"
    write_config(cfg, free_port(PROXY), free_port(NODE), 0, 0, workers=2)
    done = subprocess.run([sys.executable, "-m", "daemons.cli", "sip-proxy", "--config",
                           str(cfg), "--name", "SPX_1", "--replication-batch-ms", "-1"],
                          cwd=ROOT, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"--replication-batch-ms must be 0 to 1000" in done.stderr, done.stderr
