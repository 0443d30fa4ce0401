"""rtm-server figures, side by side with NATS JetStream on the same load.

Steps (each run on a fresh server; ours first, then NATS, one after the other):

* ``throughput``: 200 site sessions, each sends ``--messages`` messages to the
  next site with up to ``--window`` unacknowledged; every delivery is
  acknowledged. Durable messages/s from the first send to the last
  acknowledged delivery, and the server's CPU seconds per 1,000 messages.
  Ours: the hub answers ``Accepted`` after its group commit (SQLite WAL,
  ``store-sync = normal``: written to the OS, no fsync per commit); NATS: a
  file-storage stream, ``js.publish`` waits for the PubAck (JetStream's
  default: written to the OS, fsync on its own interval), push consumers with
  manual acks. Same durability: a crash of the server process loses nothing
  acknowledged, a power loss may.
* ``latency``: the same 200 sessions send 1,000 messages/s in total (open
  loop) for ``--seconds``; p50/p99 from the send to the delivery at the
  destination, both in this process (one clock).
* ``memory``: one destination away, ``--queued`` messages of 64 bytes queued
  for it: the server's RSS growth and its store's growth per queued message.
* ``takeover``: ours: two hubs sharing a PostgreSQL, SIGKILL the active one,
  time until a site's message is accepted by the other. NATS: three servers
  with an R3 stream, SIGKILL the stream's leader, time until a publish is
  acknowledged again.
* ``drain`` (``--only drain``; ours only): a site away while ``--backlog``
  messages queue for it, then its durable handler (``sipcluster rtm listen``,
  journal and all) comes back: seconds from its session's opening until the
  last one is journaled, once each and in order, and the hub's and the site's
  CPU seconds per 1,000. ``--profile DIR`` runs both under cProfile.
* ``--drill``: the test drill at full size: three sites exchange
  ``--drill-messages`` events, broadcasts and requests while the hub is
  killed with SIGKILL twice; missing, duplicates and order from the senders'
  logs and the handlers' journals.

Each server's log is read after each step: an error line fails the step.
Medians over ``--runs``; a failed step is reported, not averaged.

Usage: ``.venv/bin/python bench/bench_rtm.py [--runs 3] [--sites 200] [--quick]``
Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402

from protocols.rtm.events import (  # noqa: E402
    AcceptedReceived,
    BusyReceived,
    DeliveryReceived,
    Welcomed,
)
from protocols.rtm.session import SiteSession  # noqa: E402

HOST = "127.0.127.1"
PAYLOAD = "x" * 48


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


#: error lines a step causes on purpose: NATS servers retry the route to a peer
#: that is not up yet or was just killed
EXPECTED = ("error trying to connect to route",)


def log_errors(path: Path) -> list[str]:
    bad = []
    for line in path.read_text(errors="replace").splitlines():
        low = line.lower()
        if any(e in low for e in EXPECTED):
            continue
        if '"level": "error"' in low or "[err]" in low or "[ftl]" in low \
                or "traceback" in low:
            bad.append(line[:300])
    return bad


# ---------------------------------------------------------------------------- our hub


def cluster_text(hubs: list[tuple[str, str, int, int]], sites: int, options: dict[str, Any]
                 ) -> str:
    text = """
[switch]
name = "SIP_Cluster"
domain = "cluster.test"
[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A"]
[applications.SIPS_A]
kind = "sip-server"
host = "127.0.129.250"
sip-port = 5060
default-port = 7000
geo-location = "dc1"
[applications.TC_A]
kind = "t-controller"
host = "127.0.129.250"
sip-server = "SIPS_A"
tc-port = 7100
geo-location = "dc1"
"""
    for i, (name, host, rtm_port, http_port) in enumerate(hubs):
        text += (f"[applications.{name}]\nkind = \"rtm-server\"\nhost = \"{host}\"\n"
                 f"rtm-port = {rtm_port}\nhttp-port = {http_port}\n"
                 f"[applications.{name}.options]\n")
        if len(hubs) == 2:
            text += f"pair = \"{hubs[1 - i][0]}\"\n"
        for k, v in options.items():
            text += f"{k} = {json.dumps(v)}\n"
        text += f"[applications.{name}.options.sites]\n"
        text += "".join(f"{n} = \"pw{n}\"\n" for n in range(1, sites + 1))
    return text


def _profiled(path: Path | None) -> list[str]:
    """The interpreter's arguments that run the process under cProfile (statistics
    written to ``path`` when it exits on SIGTERM)."""
    return ["-m", "cProfile", "-o", str(path)] if path is not None else []


class OurHub:
    def __init__(self, work: Path, sites: int, options: dict[str, Any], name: str = "RTM1",
                 host: str = HOST, config: Path | None = None,
                 spec: tuple[int, int] | None = None, profile: Path | None = None) -> None:
        self.work = work
        self.profile = profile
        self.name = name
        self.host = host
        self.rtm_port, self.http_port = spec or (free_port(host), free_port(host))
        self.config = config or work / "cluster.toml"
        if config is None:
            self.config.write_text(cluster_text(
                [(name, host, self.rtm_port, self.http_port)], sites, options))
        self.log = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, role: str = "active") -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *_profiled(self.profile), "-m", "daemons.cli", "rtm-server",
                 "--config", str(self.config),
                 "--name", self.name, "--log-format", "json", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.wait_role(role)

    def role(self) -> str | None:
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/healthz",
                                        timeout=1) as r:
                return str(json.loads(r.read())["checks"]["hub"]["role"])
        except OSError:
            return None

    def wait_role(self, role: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.role() == role:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not {role}: {self.log.read_text()[-1000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RawSite(asyncio.Protocol):
    """One site session of the load generator: the sans-I/O session on a socket,
    sends with a window of unaccepted messages, acknowledges every delivery."""

    def __init__(self, site: int, on_deliver: Callable[[int, Any], None]) -> None:
        self.site = site
        self.loop = asyncio.get_running_loop()
        self.session = SiteSession(site=site, password=f"pw{site}", now=self.loop.time())
        self.on_deliver = on_deliver
        self.transport: asyncio.Transport | None = None
        self.open = self.loop.create_future()
        self.seq = 0
        self.accepted = 0
        self.window_free = asyncio.Event()
        self.window = 100
        self.busy_until = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.session.data_to_send())

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self.session.receive_data(data, now)
        top = 0
        while (e := self.session.next_event()) is not None:
            if isinstance(e, DeliveryReceived):
                top = e.deliver.id
                self.on_deliver(self.site, e.deliver)
            elif isinstance(e, AcceptedReceived):
                self.accepted = max(self.accepted, e.seq)
                self.window_free.set()
            elif isinstance(e, Welcomed):
                self.accepted = self.seq = e.welcome.last_seq
                if not self.open.done():
                    self.open.set_result(True)
            elif isinstance(e, BusyReceived):
                raise RuntimeError("flood control in a bench (set max-rate = 0)")
        if top:
            self.session.ack(top, now)
        out = self.session.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed"))

    async def send(self, dest: int, n: int) -> None:
        while self.seq - self.accepted >= self.window:
            self.window_free.clear()
            await self.window_free.wait()
        self.seq += 1
        self.session.send_map({"message": "Send", "seq": self.seq, "kind": "event",
                               "to": str(dest), "object": "bench", "event": "e",
                               "elements": [["i", n], ["s", PAYLOAD],
                                            ["i", time.perf_counter_ns()]]},
                              self.loop.time())
        assert self.transport is not None
        self.transport.write(self.session.data_to_send())


async def held(site: RawSite, seq: int) -> None:
    """Until the hub holds every message up to ``seq``."""
    while site.accepted < seq:
        site.window_free.clear()
        await site.window_free.wait()


async def our_sessions(host: str, port: int, sites: list[int],
                       on_deliver: Callable[[int, Any], None]) -> list[RawSite]:
    loop = asyncio.get_running_loop()
    out = []
    for site in sites:
        proto = RawSite(site, on_deliver)
        await loop.create_connection(lambda p=proto: p, host, port)  # type: ignore[misc]
        out.append(proto)
    await asyncio.gather(*(p.open for p in out))
    return out


async def drive(send: Callable[[int, int, int], Any], sites: int, per_site: int,
                delivered: Callable[[], int], *, rate: float = 0.0,
                timeout: float = 300) -> float:
    """Every site sends ``per_site`` messages to the next; seconds until every
    delivery is in. ``rate`` > 0: open loop at that total rate."""
    total = sites * per_site
    started = time.perf_counter()

    async def one(i: int) -> None:
        dest = i % sites + 1
        for n in range(per_site):
            if rate > 0:
                due = started + (n * sites + i) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await send(i + 1, dest, n)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(sites))), timeout)
    deadline = time.perf_counter() + timeout
    while delivered() < total:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{delivered()} of {total} delivered")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


class Deliveries:
    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []

    def ours(self, site: int, deliver: Any) -> None:
        self.count += 1
        self.latencies.append((time.perf_counter_ns() - deliver.elements[2].value) / 1e9)

    def nats(self, sent_ns: int) -> None:
        self.count += 1
        self.latencies.append((time.perf_counter_ns() - sent_ns) / 1e9)


async def ours_load(work: Path, sites: int, per_site: int, window: int, rate: float
                    ) -> dict[str, Any]:
    hub = OurHub(work, sites, {"store": f"sqlite:{work}/hub.db", "max-rate": 0,
                               "window": 1024, "keep-alive": 30})
    hub.start()
    try:
        got = Deliveries()
        sessions = await our_sessions(hub.host, hub.rtm_port, list(range(1, sites + 1)),
                                      got.ours)
        for s in sessions:
            s.window = window
        cpu0, client0 = cpu_seconds(hub.pid), time.process_time()
        secs = await drive(lambda i, d, n: sessions[i - 1].send(d, n), sites, per_site,
                           lambda: got.count, rate=rate)
        cpu, client = cpu_seconds(hub.pid) - cpu0, time.process_time() - client0
        for s in sessions:
            assert s.transport is not None
            s.transport.close()
        total = sites * per_site
        return {"rate": total / secs, "cpu_per_1000": cpu / total * 1000,
                "client_cpu_per_1000": client / total * 1000,
                "p50_ms": statistics.median(got.latencies) * 1000,
                "p99_ms": statistics.quantiles(got.latencies, n=100)[98] * 1000,
                "errors": log_errors(hub.log)}
    finally:
        hub.stop()


async def ours_memory(work: Path, queued: int) -> dict[str, Any]:
    hub = OurHub(work, 2, {"store": f"sqlite:{work}/hub.db", "max-rate": 0,
                           "max-queue-bytes": 1 << 34})
    hub.start()
    try:
        (sender,) = await our_sessions(hub.host, hub.rtm_port, [1], lambda s, d: None)
        sender.window = 1000
        await asyncio.sleep(0.5)
        rss0, disk0 = rss_bytes(hub.pid), dir_bytes(work)
        for n in range(queued):
            await sender.send(2, n)
        await held(sender, queued)
        await asyncio.sleep(0.5)
        rss1, disk1 = rss_bytes(hub.pid), dir_bytes(work)
        assert sender.transport is not None
        sender.transport.close()
        return {"rss_per_message": (rss1 - rss0) / queued,
                "disk_per_message": (disk1 - disk0) / queued, "errors": log_errors(hub.log)}
    finally:
        hub.stop()


async def ours_takeover(work: Path, dsn: str) -> dict[str, Any]:
    ports = [(free_port("127.0.127.1"), free_port("127.0.127.1")),
             (free_port("127.0.127.2"), free_port("127.0.127.2"))]
    config = work / "pair.toml"
    config.write_text(cluster_text([("RTM1", "127.0.127.1", *ports[0]),
                                    ("RTM2", "127.0.127.2", *ports[1])], 2,
                                   {"store": dsn, "max-rate": 0, "takeover-poll": 0.2}))
    one = OurHub(work, 2, {}, "RTM1", "127.0.127.1", config, ports[0])
    two = OurHub(work, 2, {}, "RTM2", "127.0.127.2", config, ports[1])
    one.start()
    two.start("standby")
    try:
        (site,) = await our_sessions(one.host, one.rtm_port, [1], lambda s, d: None)
        await site.send(2, 0)
        await held(site, 1)
        assert one.proc is not None
        one.proc.kill()
        killed = time.perf_counter()
        one.proc.wait()
        # the site's retry loop: the other hub of the pair, every 50 ms
        while True:
            try:
                (site,) = await our_sessions(two.host, two.rtm_port, [1], lambda s, d: None)
                break
            except (OSError, ConnectionError):
                await asyncio.sleep(0.05)
        await site.send(2, 1)
        await held(site, site.seq)
        took = time.perf_counter() - killed
        assert site.transport is not None
        site.transport.close()
        return {"takeover_s": took, "errors": log_errors(two.log)}
    finally:
        one.stop()
        two.stop()


async def ours_drain(work: Path, backlog: int, window: int,
                     profile: Path | None = None) -> dict[str, Any]:
    """A site away while ``backlog`` messages queue for it, then its durable
    handler (``sipcluster rtm listen``: outbox, journal) starts: seconds from its
    session's opening to the last delivery journaled, every message once and in
    order; the hub's and the site's CPU seconds over the drain."""
    hub = OurHub(work, 3, {"store": f"sqlite:{work}/hub.db", "max-rate": 0,
                           "window": window, "keep-alive": 5,
                           "max-queue-bytes": 1 << 34},
                 profile=profile / "hub.prof" if profile else None)
    hub.start()
    site: subprocess.Popen[bytes] | None = None
    try:
        (sender,) = await our_sessions(hub.host, hub.rtm_port, [1], lambda s, d: None)
        sender.window = 1000
        for n in range(backlog):
            await sender.send(3, n)
        await held(sender, backlog)
        assert sender.transport is not None
        sender.transport.close()
        state = work / "site3"
        state.mkdir()
        journal = state / "drain.db"
        site = _listen(work, state, hub, profile / "site.prof" if profile else None)
        deadline = time.monotonic() + 600
        while not _hub_connected(hub, 3):
            if time.monotonic() > deadline or site.poll() is not None:
                raise RuntimeError("site 3 never connected")
            await asyncio.sleep(0.01)
        opened = time.perf_counter()
        hub0, site0 = cpu_seconds(hub.pid), cpu_seconds(site.pid)
        while _journaled(journal) < backlog:
            if time.monotonic() > deadline or site.poll() is not None:
                raise RuntimeError(f"{_journaled(journal)} of {backlog} journaled")
            await asyncio.sleep(0.01)
        took = time.perf_counter() - opened
        hub_cpu, site_cpu = cpu_seconds(hub.pid) - hub0, cpu_seconds(site.pid) - site0
        db = sqlite3.connect(journal)
        try:
            numbers = [msgpack.unpackb(el)[0][1] for (el,) in
                       db.execute("SELECT elements FROM journal ORDER BY id")]
        finally:
            db.close()
        return {"seconds": took, "rate": backlog / took,
                "hub_cpu_per_1000": hub_cpu / backlog * 1000,
                "site_cpu_per_1000": site_cpu / backlog * 1000,
                "in_order_once": numbers == list(range(backlog)),
                "errors": log_errors(hub.log) + log_errors(work / "site3.log")}
    finally:
        if site is not None and site.poll() is None:
            site.send_signal(signal.SIGTERM)
            site.wait(timeout=30)
        hub.stop()


def _listen(work: Path, state: Path, hub: OurHub, profile: Path | None
            ) -> subprocess.Popen[bytes]:
    """Site 3's durable handler, journal in ``state``/drain.db."""
    with open(work / "site3.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, *_profiled(profile), "-m", "daemons.cli", "rtm", "listen",
             "--site", "3", "--handler", "drain", "--state", str(state), "--quiet",
             "--hub", f"{hub.host}:{hub.rtm_port}", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "SIPCLUSTER_RTM_PASSWORD": "pw3"})


def _hub_connected(hub: OurHub, site: int) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{hub.host}:{hub.http_port}/status/sites",
                                    timeout=1) as r:
            return bool(json.loads(r.read())["sites"][str(site)]["connected"])
    except OSError:
        return False


def _journaled(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return int(db.execute("SELECT count(*) FROM journal").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


# ---------------------------------------------------------------------------- NATS


class Nats:
    def __init__(self, work: Path, name: str = "n1", host: str = HOST,
                 cluster: list[tuple[str, int]] | None = None, cport: int | None = None) -> None:
        self.work = work / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port(host)
        self.host = host
        self.log = self.work / "nats.log"
        conf = [f"server_name: {name}", f"listen: {host}:{self.port}",
                f"jetstream {{ store_dir: \"{self.work}/js\", max_memory_store: 1G, "
                f"max_file_store: 20G }}", "max_payload: 1MB", "max_connections: 10000",
                "write_deadline: \"10s\"", f"logfile: \"{self.log}\""]
        if cluster is not None and cport is not None:
            routes = ", ".join(f"nats-route://{h}:{p}" for h, p in cluster)
            conf.append(f"cluster {{ name: bench, listen: {host}:{cport}, routes: [{routes}] }}")
        (self.work / "nats.conf").write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["nats-server", "-c", str(self.work / "nats.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def nats_load(work: Path, sites: int, per_site: int, window: int, rate: float
                    ) -> dict[str, Any]:
    import nats

    server = Nats(work)
    server.start()
    conns = []
    try:
        admin = await nats.connect(server.url)
        js = admin.jetstream()
        await js.add_stream(name="RTM", subjects=["site.*"], storage="file")
        got = Deliveries()

        async def on_msg(msg: Any) -> None:
            got.nats(msgpack.unpackb(msg.data)[2])
            await msg.ack()

        streams = []
        for i in range(1, sites + 1):
            nc = await nats.connect(server.url)
            conns.append(nc)
            j = nc.jetstream()
            await j.subscribe(f"site.{i}", durable=f"site{i}", cb=on_msg, manual_ack=True)
            streams.append((j, asyncio.Semaphore(window)))
        pending: set[asyncio.Task[Any]] = set()

        async def publish(i: int, dest: int, n: int) -> None:
            j, sem = streams[i - 1]
            await sem.acquire()
            body = msgpack.packb([n, PAYLOAD, time.perf_counter_ns()])

            async def go() -> None:
                try:
                    await j.publish(f"site.{dest}", body)
                finally:
                    sem.release()

            task = asyncio.create_task(go())
            pending.add(task)
            task.add_done_callback(pending.discard)

        cpu0, client0 = cpu_seconds(server.pid), time.process_time()
        secs = await drive(publish, sites, per_site, lambda: got.count, rate=rate)
        cpu, client = cpu_seconds(server.pid) - cpu0, time.process_time() - client0
        total = sites * per_site
        return {"rate": total / secs, "cpu_per_1000": cpu / total * 1000,
                "client_cpu_per_1000": client / total * 1000,
                "p50_ms": statistics.median(got.latencies) * 1000,
                "p99_ms": statistics.quantiles(got.latencies, n=100)[98] * 1000,
                "errors": log_errors(server.log)}
    finally:
        for nc in conns:
            await nc.close()
        server.stop()


async def nats_memory(work: Path, queued: int) -> dict[str, Any]:
    import nats

    server = Nats(work)
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="RTM", subjects=["site.*"], storage="file")
        await js.add_consumer("RTM", durable_name="site2", filter_subject="site.2",
                              ack_policy="explicit")
        await asyncio.sleep(0.5)
        rss0, disk0 = rss_bytes(server.pid), dir_bytes(server.work / "js")
        sem = asyncio.Semaphore(1000)

        async def one(n: int) -> None:
            async with sem:
                await js.publish("site.2", msgpack.packb([n, PAYLOAD, 0]))

        await asyncio.gather(*(one(n) for n in range(queued)))
        await asyncio.sleep(0.5)
        rss1, disk1 = rss_bytes(server.pid), dir_bytes(server.work / "js")
        await nc.close()
        return {"rss_per_message": (rss1 - rss0) / queued,
                "disk_per_message": (disk1 - disk0) / queued, "errors": log_errors(server.log)}
    finally:
        server.stop()


async def nats_takeover(work: Path) -> dict[str, Any]:
    import nats

    hosts = ["127.0.127.11", "127.0.127.12", "127.0.127.13"]
    cports = [free_port(h) for h in hosts]
    routes = list(zip(hosts, cports, strict=True))
    servers = [Nats(work, f"n{i + 1}", h, routes, cports[i]) for i, h in enumerate(hosts)]
    for s in servers:
        s.start()
    try:
        urls = [s.url for s in servers]
        nc = await nats.connect(servers=urls, reconnect_time_wait=0.05,
                                max_reconnect_attempts=-1)
        js = nc.jetstream()
        for _ in range(100):
            try:
                await js.add_stream(name="RTM", subjects=["site.*"], storage="file",
                                    num_replicas=3)
                break
            except Exception:  # the cluster is still electing its meta leader
                await asyncio.sleep(0.2)
        await js.publish("site.2", b"0")
        info = await js.stream_info("RTM")
        leader = info.cluster.leader if info.cluster else None
        victim = next(s for s in servers if s.work.name == leader)
        assert victim.proc is not None
        victim.proc.kill()
        killed = time.perf_counter()
        victim.proc.wait()
        while True:
            try:
                await js.publish("site.2", b"1", timeout=0.5)
                break
            except Exception:
                await asyncio.sleep(0.05)
        took = time.perf_counter() - killed
        await nc.close()
        errors = [e for s in servers if s is not victim for e in log_errors(s.log)]
        return {"takeover_s": took, "errors": errors}
    finally:
        for s in servers:
            s.stop()


# ---------------------------------------------------------------------------- drill


def drill(work: Path, per_site: int) -> dict[str, Any]:
    from tests.daemons.rtm_server.conftest import Hub, Site, hub_spec, verify, write_cluster

    spec = hub_spec("RTM1", "127.0.128.1")
    config = write_cluster(work / "cluster.toml", [spec],
                           {"store": f"sqlite:{work}/hub.db", "keep-alive": 2.0, "max-rate": 0})
    hub = Hub(config, spec, work / "hub.log").start()
    hub.wait_role("active", 30)
    state = work / "state"
    state.mkdir()
    plan = {1: ["2", "3", "*"], 2: ["3", "1", "*"], 3: ["1", "2", "*"]}
    sites = [Site(n, state, [(spec.host, spec.rtm_port)], work / f"site{n}.log",
                  send_to=plan[n], count=per_site, request_every=7) for n in plan]
    started = time.monotonic()
    for s in sites:
        s.start()
    try:
        for kill in (1, 2):
            while sum(len(s.sent()) for s in sites) < kill * per_site:
                time.sleep(0.5)
            hub.kill9()
            time.sleep(0.3)
            hub.start()
            hub.wait_role("active", 30)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if all(s.outbox() == 0 and len(s.sent()) >= per_site for s in sites):
                v = verify(sites)
                if v.handled >= v.expected and v.answered == v.requests:
                    break
            time.sleep(2)
        v = verify(sites)
        return {"messages": sum(len(s.sent()) for s in sites), "deliveries": v.expected,
                "handled": v.handled, "missing": v.missing, "duplicates": v.duplicates,
                "out_of_order_pairs": len(v.out_of_order), "requests": v.requests,
                "answered": v.answered, "seconds": time.monotonic() - started,
                "errors": log_errors(hub.log)}
    finally:
        for s in sites:
            s.stop()
        hub.stop()


# ---------------------------------------------------------------------------- main


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if not r.get("errors") and key in r]
    return statistics.median(values) if values else None


def run_step(name: str, runs: int, fn: Callable[[Path], Any]) -> list[dict[str, Any]]:
    out = []
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix=f"bench-rtm-{name}-"))
        try:
            result = fn(work)
        except Exception as exc:
            result = {"errors": [f"{type(exc).__name__}: {exc}"]}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out.append(result)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--messages", type=int, default=250, help="per site, throughput step")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="latency step")
    parser.add_argument("--queued", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="one run, smaller sizes")
    parser.add_argument("--drill", action="store_true", help="also the 100,000-message drill")
    parser.add_argument("--drill-messages", type=int, default=100_000)
    parser.add_argument("--only", default="throughput,latency,memory,takeover",
                        help="comma-separated steps; drain (ours only, no NATS) is not in "
                             "the default")
    parser.add_argument("--backlog", type=int, default=7000,
                        help="drain step: messages queued for the site that is away")
    parser.add_argument("--drain-window", type=int, default=512,
                        help="drain step: the hub's window")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="drain step: run the hub and the site under cProfile, "
                             "statistics to DIR/hub.prof and DIR/site.prof (one run)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.messages, args.queued, args.seconds = 1, 100, 20_000, 5.0
    steps = set(args.only.split(","))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if steps - {"drain"} and shutil.which("nats-server") is None:
        print("nats-server is not installed (make bench-tools)", file=sys.stderr)
        return 2
    figures: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str]] = []

    def side(step: str, ours: Callable[[Path], Any], theirs: Callable[[Path], Any],
             keys: list[tuple[str, str, str]]) -> None:
        a = run_step(f"ours-{step}", args.runs, lambda w: asyncio.run(ours(w)))
        b = run_step(f"nats-{step}", args.runs, lambda w: asyncio.run(theirs(w)))
        figures[step] = {"ours": a, "nats": b}
        for key, label, fmt in keys:
            x, y = median_of(a, key), median_of(b, key)
            ratio = f"{x / y:.2f}x" if x is not None and y else "n/a"
            rows.append((label, format(x, fmt) if x is not None else "failed",
                         format(y, fmt) if y is not None else "failed", ratio))
        for who, results in (("ours", a), ("nats", b)):
            for r in results:
                for e in r.get("errors", []):
                    rows.append((f"{step} {who} FAILURE", e[:80], "", ""))

    sites, per = args.sites, args.messages
    if "drain" in steps:
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        results = run_step("drain", 1 if args.profile else args.runs,
                           lambda w: asyncio.run(ours_drain(w, args.backlog, args.drain_window,
                                                            args.profile)))
        figures["drain"] = results
        for key, label, fmt in (
                ("seconds", f"drain: {args.backlog} queued msgs to a returning site, s", ".2f"),
                ("rate", "drain: msgs/s journaled at the site", ".0f"),
                ("hub_cpu_per_1000", "drain: hub CPU s / 1,000 msgs", ".3f"),
                ("site_cpu_per_1000", "drain: site CPU s / 1,000 msgs", ".3f")):
            x = median_of(results, key)
            rows.append((label, format(x, fmt) if x is not None else "failed", "", ""))
        for r in results:
            if not r.get("in_order_once", False) and not r.get("errors"):
                r["errors"] = ["drain: a message missing, twice or out of order"]
            for e in r.get("errors", []):
                rows.append(("drain ours FAILURE", e[:80], "", ""))
    if "throughput" in steps:
        side("throughput",
             lambda w: ours_load(w, sites, per, args.window, 0.0),
             lambda w: nats_load(w, sites, per, args.window, 0.0),
             [("rate", f"durable msg/s, {sites} sessions", ".0f"),
              ("cpu_per_1000", "server CPU s / 1,000 msgs", ".3f"),
              ("client_cpu_per_1000", "load generator CPU s / 1,000 msgs (Python)", ".3f")])
    if "latency" in steps:
        n = max(1, int(1000 * args.seconds / sites))
        side("latency",
             lambda w: ours_load(w, sites, n, args.window, 1000.0),
             lambda w: nats_load(w, sites, n, args.window, 1000.0),
             [("p50_ms", "p50 latency ms at 1,000 msg/s", ".2f"),
              ("p99_ms", "p99 latency ms at 1,000 msg/s", ".2f")])
    if "memory" in steps:
        side("memory", lambda w: ours_memory(w, args.queued),
             lambda w: nats_memory(w, args.queued),
             [("rss_per_message", "RSS bytes per queued msg", ".0f"),
              ("disk_per_message", "store bytes per queued msg", ".0f")])
    if "takeover" in steps:
        from tests.support.postgres import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            rows.append(("takeover", "no PostgreSQL (make tools)", "", ""))
        else:
            pg = PostgresServer(bindir)
            pg.start()
            try:
                side("takeover", lambda w: ours_takeover(w, pg.create_database()),
                     nats_takeover, [("takeover_s", "take-over s (SIGKILL active)", ".2f")])
            finally:
                pg.stop()
    if args.drill:
        per_site = args.drill_messages // 3 + 1
        result = run_step("drill", 1, lambda w: drill(w, per_site))[0]
        figures["drill"] = result
        rows.append(("drill: messages / deliveries", f"{result.get('messages')} / "
                     f"{result.get('deliveries')}", "", ""))
        rows.append(("drill: missing / duplicates / disorder",
                     f"{result.get('missing')} / {result.get('duplicates')} / "
                     f"{result.get('out_of_order_pairs')}", "", ""))
        rows.append(("drill: seconds (2 SIGKILLs)", f"{result.get('seconds', 0):.0f}", "", ""))
    print(f"# rtm-server vs NATS JetStream {nats_version()} (medians of {args.runs})\n")
    print("| figure | rtm-server | NATS JetStream | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("RESULT " + json.dumps({k: v for k, v in figures.items()}, default=str))
    failed = any(r[0].endswith("FAILURE") for r in rows)
    return 1 if failed else 0


def nats_version() -> str:
    if shutil.which("nats-server") is None:
        return "(not installed)"
    out = subprocess.run(["nats-server", "--version"], capture_output=True, text=True)
    return out.stdout.strip().split()[-1] if out.returncode == 0 else "?"


if __name__ == "__main__":
    sys.exit(main())
