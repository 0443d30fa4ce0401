"""status-aggregator figures (docs/status-aggregator.md, "Figures"): a real
``sipcluster status-aggregator`` process over mutual TLS on 127.0.139.x,
driven by publishers and watchers of our client library in child processes
of this script, each with its own event loop (uvloop), so that no load
generator is the limit of what is measured.

Per run (median of ``--runs``):

* **load**: ``--publishers`` publishers (spread over
  ``--publisher-processes`` processes) connect and send their snapshots,
  ``--users`` users in all; the time until the aggregator holds every user
  (its ``sipcluster_status_users`` gauge), and its resident memory growth per
  user (``/proc/PID/status`` VmRSS before and after);
* **rate**: then ``--watches`` watches spread over ``--watch-connections``
  consumer connections, which are spread over ``--watcher-processes``
  processes; the publishers change watched users at ``--rate`` changes per
  second for ``--seconds`` seconds; publish-to-event latency (p50, p99,
  measured at the watcher from the time stamp the change carries:
  ``time.time()`` is one clock for every process of the host), events
  missing, event sequence gaps, the aggregator's CPU seconds per 1,000
  changes, and the CPU of every process during the rate phase (the
  aggregator's from ``/proc/PID/stat``, each generator's own
  ``time.process_time()``) with the load average, so the output says which
  side was the limit;
* **fail-over**: two mirrored aggregators, a publisher and a watcher on the
  first; SIGKILL to the first; the time until a change published after the
  kill reaches the watcher through the second (watches restored).

Once, before the runs (``--table-only``: only this), in this process: the
**status table** filled as the aggregator fills it (the publishers' snapshot
frames encoded, decoded and parsed, then taken by the table), ``--users``
users in all; the collector's pauses while it fills (count, longest, total),
the time of a full ``gc.collect()`` with every user held (median of 5), the
objects the collector tracks and the resident memory growth per user. What
the table holds stays out of the collector's walks only if it is untracked
(docs/status-aggregator.md, "Memory").

Usage: ``.venv/bin/python bench/bench_status.py [--users 500000] [--publishers 30]
[--rate 5000] [--seconds 10] [--watches 10000] [--watch-connections 100]
[--watcher-processes 4] [--publisher-processes 1] [--runs 3]``
The last line is ``RESULT {json}`` (bench/run_all.py).

A generator process is this script run with ``--child publishers|watchers``:
it reads one JSON command a line on stdin and answers one JSON line on the
descriptor its stdout was (its own stdout goes to stderr, the log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from daemons.runtime import certs
from daemons.runtime.status_client import RECORDS_PER_FRAME, AggregatorAddress, StatusClient
from protocols.status.framing import FrameDecoder, encode
from protocols.status.messages import Role, Snapshot, StatusRecord, parse
from protocols.status.table import StatusTable

HOSTS = {"SA_1": "127.0.139.1", "SA_2": "127.0.139.2"}
CLIENT_HOST = "127.0.139.9"
SCRIPT = Path(__file__).resolve()
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: longest JSON line between the bench and a generator process (the latencies)
LINE_LIMIT = 64 * 1024 * 1024


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_cluster(root: Path, publishers: list[str]) -> dict[str, int]:
    ports = {n: free_port(h) for n, h in HOSTS.items()}
    http = {n: free_port(h) for n, h in HOSTS.items()}
    apps = ""
    for name, host in HOSTS.items():
        apps += f"""
[applications.{name}]
kind = "status-aggregator"
host = "{host}"
status-port = {ports[name]}
http-port = {http[name]}

[applications.{name}.options]
status-aggregators = ["SA_1", "SA_2"]
consumers = ["desk"]
publishers = {json.dumps(publishers)}
publisher-timeout = 60
"""
    (root / "cluster.toml").write_text(f"""
[switch]
name = "Bench"
domain = "bench.lab"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.139.11"
geo-location = "dc1"
sip-port = 5060
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.139.11"
sip-server = "SIPS_1"
tc-port = 7001
{apps}""")
    return {**ports, **{f"{n}_http": p for n, p in http.items()}}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_queue_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` have been ready to run but waiting for a
    core (``/proc/PID/task/*/schedstat``, second field): what a loaded host
    adds to every latency measured in that process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


class Daemon:
    def __init__(self, root: Path, name: str, ports: dict[str, int]) -> None:
        self.root, self.name, self.ports = root, name, ports
        self.proc: asyncio.subprocess.Process | None = None
        self.log = root / f"{name}.log"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemons.cli", "status-aggregator", "--config",
                str(self.root / "cluster.toml"), "--name", self.name, "--log-level", "warning",
                stdout=log, stderr=log)
        url = f"http://{HOSTS[self.name]}:{self.ports[self.name + '_http']}/healthz"
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(url) as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start; see {self.root / self.name}.log")

    async def users(self) -> int:
        url = f"http://{HOSTS[self.name]}:{self.ports[self.name + '_http']}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as answer:
            for line in (await answer.text()).splitlines():
                if line.startswith("sipcluster_status_users "):
                    return int(float(line.split()[1]))
        return 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def client(root: Path, ports: dict[str, int], name: str, role: Role, names: list[str],
           **kw: Any) -> StatusClient:
    c = StatusClient(name=name, role=role,
                     aggregators=[AggregatorAddress(n, HOSTS[n], ports[n]) for n in names],
                     context=certs.client_context(root / "certs", name), retry=0.1,
                     local_address=CLIENT_HOST, keep_alive_interval=5, keep_alive_timeout=15,
                     **kw)
    c.start()
    return c


def user(i: int) -> str:
    return f"user{i:07d}@bench.lab"


def watched_users(args: argparse.Namespace) -> list[str]:
    """The watched users, every (users / watches)-th one."""
    return [user(i * (args.users // args.watches)) for i in range(args.watches)]


def owner_index(u: str, args: argparse.Namespace) -> int:
    """Which publisher (index into the publishers' names) holds user ``u``."""
    return min(int(u[4:11]) // (args.users // args.publishers), args.publishers - 1)


# -- generator processes -------------------------------------------------------


class Publishers:
    """The publishers of one generator process: every ``count``-th of the
    ``--publishers``, from ``index``."""

    def __init__(self, root: Path, setup: dict[str, Any], index: int, count: int) -> None:
        self.root, self.ports, self.pubs = root, setup["ports"], setup["pubs"]
        self.args = argparse.Namespace(**setup["args"])
        self.mine = list(range(index, len(self.pubs), count))
        self.clients: dict[int, StatusClient] = {}

    async def load(self, command: dict[str, Any]) -> dict[str, Any]:
        total = self.args.users
        per = total // len(self.pubs)
        for p in self.mine:
            name = self.pubs[p]
            c = client(self.root, self.ports, name, Role.PUBLISHER, ["SA_1"])
            self.clients[p] = c
            last = total if p == len(self.pubs) - 1 else (p + 1) * per
            c.publish([StatusRecord(user=user(i), status="Available", server=name)
                       for i in range(p * per, last)])
        return {"publishers": len(self.clients)}

    async def settle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Before the rate phase: what this process holds (a publisher's records
        by user) leaves the collector's full passes, which would stop the
        process for up to a few hundred ms in the middle of the phase (a pause
        of the generator, not of the aggregator)."""
        gc.collect()
        gc.freeze()
        return {"frozen": gc.get_freeze_count()}

    async def rate(self, command: dict[str, Any]) -> dict[str, Any]:
        """Changes at --rate per second (this process's share), paced in 20 ms
        ticks from the wall-clock ``start`` every publisher process is given."""
        args = self.args
        watched = watched_users(args)
        owner = {u: self.clients.get(owner_index(u, args)) for u in watched}
        tick = 0.02
        per_tick = max(1, int(args.rate * tick))
        changes = int(args.rate * args.seconds)
        t0 = time.perf_counter() + (float(command["start"]) - time.time())
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        cpu0, wait0 = time.process_time(), run_queue_seconds(os.getpid())
        sent = published = 0
        while sent < changes:
            batch: dict[StatusClient, list[StatusRecord]] = {}
            stamp = f"{time.time():.6f}"
            n = min(per_tick, changes - sent)
            for j in range(n):
                u = watched[(sent + j) % len(watched)]
                pub = owner[u]
                if pub is not None:
                    batch.setdefault(pub, []).append(
                        StatusRecord(user=u, status="Busy", server=pub.name, detail=stamp))
            for pub, records in batch.items():
                pub.publish(records)
                published += len(records)
            sent += n
            delay = t0 + sent / args.rate - time.perf_counter()
            await asyncio.sleep(max(0.0, delay))
        seconds = time.perf_counter() - t0
        return {"changes": changes, "published": published, "seconds": seconds,
                "cpu_s": time.process_time() - cpu0, "wall_s": seconds,
                "wait_s": run_queue_seconds(os.getpid()) - wait0}

    async def stop(self) -> None:
        for c in self.clients.values():
            await c.stop()


class Watchers:
    """The consumer connections of one generator process: every ``count``-th
    of the ``--watch-connections``, from ``index``, each watching its slice of
    the watched users."""

    def __init__(self, root: Path, setup: dict[str, Any], index: int, count: int) -> None:
        self.root, self.ports = root, setup["ports"]
        self.args = argparse.Namespace(**setup["args"])
        self.mine = list(range(index, self.args.watch_connections, count))
        self.clients: list[StatusClient] = []
        self.latencies: list[float] = []
        #: Busy events this process's watches get in the rate phase
        self.expected = 0
        self.start = self.last_at = 0.0
        self.cpu0 = self.last_cpu = 0.0
        self.complete = asyncio.Event()
        self.pid = os.getpid()
        self.wait0 = 0.0

    def on_records(self, records: list[StatusRecord]) -> None:
        now = time.time()
        for r in records:
            if r.status == "Busy" and r.detail:
                self.latencies.append(now - float(r.detail))
        self.last_at, self.last_cpu = now, time.process_time()
        if len(self.latencies) >= self.expected:
            self.complete.set()

    async def open(self, command: dict[str, Any]) -> dict[str, Any]:
        args = self.args
        watched = watched_users(args)
        per_conn = args.watches // args.watch_connections
        self.clients = [client(self.root, self.ports, "desk", Role.CONSUMER, ["SA_1"],
                               on_records=self.on_records) for _ in self.mine]
        for c in self.clients:
            await c.wait_open(30)
        changes = int(args.rate * args.seconds)
        position = {u: j for j, u in enumerate(watched)}
        for k, c in zip(self.mine, self.clients, strict=True):
            users = watched[k * per_conn:(k + 1) * per_conn]
            await c.watch(users, timeout=60)
            # change i goes to watched[i % len(watched)]
            self.expected += sum(changes // len(watched) +
                                 (1 if position[u] < changes % len(watched) else 0)
                                 for u in users)
        return {"connections": len(self.clients), "expected": self.expected}

    settle = Publishers.settle

    async def mark(self, command: dict[str, Any]) -> dict[str, Any]:
        self.latencies = []
        self.complete.clear()
        self.cpu0 = self.last_cpu = time.process_time()
        self.wait0 = run_queue_seconds(self.pid)
        self.start = self.last_at = float(command["start"])
        return {}

    async def report(self, command: dict[str, Any]) -> dict[str, Any]:
        """The latencies received since ``mark``, once every expected event is
        in (or 10 s after the question)."""
        if len(self.latencies) < self.expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.complete.wait(), 10)
        waited = run_queue_seconds(self.pid) - self.wait0  # idle after the last event
        return {"latencies": [round(x, 6) for x in self.latencies], "expected": self.expected,
                "gaps": sum(c.gaps for c in self.clients), "last_at": self.last_at,
                "cpu_s": self.last_cpu - self.cpu0, "wait_s": waited,
                "wall_s": max(self.last_at - self.start, 1e-9)}

    async def stop(self) -> None:
        for c in self.clients:
            await c.stop()


async def child_main(role: str, index: int, count: int, root: Path, answers: Any) -> None:
    """A generator process: commands on stdin, one JSON answer a line on ``answers``."""
    setup = json.loads((root / "bench.json").read_text())
    generator: Publishers | Watchers = (Publishers if role == "publishers" else Watchers)(
        root, setup, index, count)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    try:
        while line := await commands.readline():
            command = json.loads(line)
            if command["do"] == "stop":
                break
            try:
                answer = await getattr(generator, command["do"])(command)
            except Exception as exc:  # the parent reports it as a failed run
                answer = {"error": repr(exc)}
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
    finally:
        await generator.stop()


class Child:
    """A generator process seen from the bench: this script with ``--child``."""

    def __init__(self, root: Path, role: str, index: int, count: int) -> None:
        self.root, self.role, self.index, self.count = root, role, index, count
        self.proc: asyncio.subprocess.Process | None = None
        self.log = root / f"{role}{index}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SCRIPT), "--child", self.role,
                "--index", str(self.index), "--of", str(self.count), "--root", str(self.root),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=LINE_LIMIT)

    async def ask(self, command: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.role} process {self.index} ended; see {self.log}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.role} process {self.index}: {answer['error']}")
        return answer

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            self.proc.stdin.write(b'{"do": "stop"}\n')
            await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def load_average() -> float:
    return os.getloadavg()[0]


async def run_load_and_rate(root: Path, ports: dict[str, int], pubs: list[str],
                            args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(root, "SA_1", ports)
    await daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    publishers = [Child(root, "publishers", k, args.publisher_processes)
                  for k in range(args.publisher_processes)]
    watchers = [Child(root, "watchers", k, args.watcher_processes)
                for k in range(args.watcher_processes)]
    children: list[Child] = []
    try:
        for child in publishers:
            await child.start()
            children.append(child)
        rss_before = rss_kib(pid)
        load_cpu0 = cpu_seconds(pid)
        client_cpu0 = sum(cpu_seconds(c.pid) for c in publishers)
        started = time.perf_counter()
        total = args.users
        await asyncio.gather(*(c.ask({"do": "load"}) for c in publishers))
        loaded = 0
        while loaded < total and time.perf_counter() - started < 300:
            await asyncio.sleep(0.1)
            loaded = await daemon.users()
        load_seconds = time.perf_counter() - started
        load_cpu = cpu_seconds(pid) - load_cpu0
        client_cpu = sum(cpu_seconds(c.pid) for c in publishers) - client_cpu0
        await asyncio.sleep(1.0)
        rss_after = rss_kib(pid)
        # watches, spread over the consumer connections, spread over the processes
        for child in watchers:
            await child.start()
            children.append(child)
        opened = await asyncio.gather(*(c.ask({"do": "open"}) for c in watchers))
        expected = sum(int(o["expected"]) for o in opened)
        changes = int(args.rate * args.seconds)
        await asyncio.gather(*(c.ask({"do": "settle"}) for c in children))
        load_avg_before = load_average()
        start = time.time() + 0.2
        await asyncio.gather(*(c.ask({"do": "mark", "start": start}) for c in watchers))
        cpu0, own0, wait0 = cpu_seconds(pid), time.process_time(), run_queue_seconds(pid)
        sent = await asyncio.gather(*(c.ask({"do": "rate", "start": start},
                                            timeout=args.seconds + 120) for c in publishers))
        reports = await asyncio.gather(*(c.ask({"do": "report"}) for c in watchers))
        cpu, own = cpu_seconds(pid) - cpu0, time.process_time() - own0
        wait = run_queue_seconds(pid) - wait0
        load_avg_after = load_average()
        end = max([float(r["last_at"]) for r in reports] + [start + max(
            float(s["seconds"]) for s in sent)])
        latencies = sorted(x for r in reports for x in r["latencies"])
        gaps = sum(int(r["gaps"]) for r in reports)
        send_seconds = max(float(s["seconds"]) for s in sent)

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 \
                if latencies else float("nan")

        def busy(report: dict[str, Any], key: str = "cpu_s") -> float:
            return 100 * float(report[key]) / max(float(report["wall_s"]), 1e-9)

        return {
            "users": loaded, "load_seconds": load_seconds,
            "load_cpu_s": load_cpu, "load_client_cpu_s": client_cpu,
            "rss_kib_before": rss_before, "rss_kib_after": rss_after,
            "bytes_per_user": (rss_after - rss_before) * 1024 / max(loaded, 1),
            "changes": changes, "achieved_rate": changes / send_seconds,
            "expected": expected,
            "events": len(latencies), "missing": changes - len(latencies), "gaps": gaps,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "cpu_s_per_1000": cpu / changes * 1000,
            "aggregator_cpu_pct": 100 * cpu / max(end - start, 1e-9),
            "publisher_cpu_pct": [busy(s) for s in sent],
            "watcher_cpu_pct": [busy(r) for r in reports],
            # % of the phase each was ready to run and waiting for a core
            "aggregator_wait_pct": 100 * wait / max(end - start, 1e-9),
            "publisher_wait_pct": [busy(s, "wait_s") for s in sent],
            "watcher_wait_pct": [busy(r, "wait_s") for r in reports],
            "bench_cpu_pct": 100 * own / max(end - start, 1e-9),
            "load_average": [load_avg_before, load_avg_after],
            "rate_phase": [start, end],
        }
    finally:
        for child in children:
            await child.stop()
        await daemon.stop()


async def run_failover(root: Path, ports: dict[str, int], pubs: list[str]) -> dict[str, Any]:
    sa1, sa2 = Daemon(root, "SA_1", ports), Daemon(root, "SA_2", ports)
    await sa1.start()
    await sa2.start()
    clients: list[StatusClient] = []
    try:
        seen: dict[str, StatusRecord] = {}
        changed = asyncio.Event()

        def on_records(records: list[StatusRecord]) -> None:
            for r in records:
                seen[r.user] = r
            changed.set()

        pub = client(root, ports, pubs[0], Role.PUBLISHER, ["SA_1", "SA_2"])
        desk = client(root, ports, "desk", Role.CONSUMER, ["SA_1", "SA_2"], on_records=on_records)
        clients += [pub, desk]
        await pub.wait_open(30)
        await desk.wait_open(30)
        await desk.watch(["fo@bench.lab"])
        pub.publish([StatusRecord(user="fo@bench.lab", status="Available", server="P")])
        while seen.get("fo@bench.lab", StatusRecord("")).status != "Available":
            changed.clear()
            await asyncio.wait_for(changed.wait(), 10)
        for _ in range(200):  # the mirror has the user
            if await sa2.users() >= 1:
                break
            await asyncio.sleep(0.05)
        killed = time.perf_counter()
        sa1.kill()
        pub.publish([StatusRecord(user="fo@bench.lab", status="Away", server="P")])
        while seen["fo@bench.lab"].status != "Away":
            changed.clear()
            await asyncio.wait_for(changed.wait(), 30)
        took = time.perf_counter() - killed
        return {"failover_seconds": took, "watcher_on": desk.connected_to,
                "publisher_on": pub.connected_to, "gaps": desk.gaps}
    finally:
        for c in clients:
            await c.stop()
        await sa1.stop()
        await sa2.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_table(args: argparse.Namespace, pubs: list[str]) -> dict[str, Any]:
    """The status table phase (module docstring), in this process."""
    gc.collect()
    pauses: list[float] = []
    began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        elif info["generation"] == 2:
            pauses.append(time.perf_counter() - began[0])

    tracked_before = len(gc.get_objects())
    rss_before = rss_kib(os.getpid())
    table = StatusTable()
    decoder = FrameDecoder()
    per = args.users // len(pubs)
    incarnation = int(time.time() * 1000)
    gc.callbacks.append(on_gc)
    started = time.perf_counter()
    try:
        for p, name in enumerate(pubs):
            last_user = args.users if p == len(pubs) - 1 else (p + 1) * per
            table.heard(name, incarnation, time.monotonic())
            table.begin_snapshot(name)
            for start in range(p * per, last_user, RECORDS_PER_FRAME):
                end = min(start + RECORDS_PER_FRAME, last_user)
                records = tuple(StatusRecord(user=user(i), status="Available", server=name,
                                             seq=i + 1) for i in range(start, end))
                decoder.feed(encode(Snapshot(ref=start, records=records,
                                             final=end == last_user).to_wire()))
                for frame in decoder:
                    message = parse(frame)
                    assert isinstance(message, Snapshot)
                    table.publish(name, incarnation, message.records, time.monotonic())
            table.end_snapshot(name)
        load_seconds = time.perf_counter() - started
    finally:
        gc.callbacks.remove(on_gc)
    full: list[float] = []
    for _ in range(5):
        t0 = time.perf_counter()
        gc.collect()
        full.append(time.perf_counter() - t0)
    held = len(table)
    return {"users": held, "load_seconds": load_seconds,
            "load_full_collections": len(pauses), "load_longest_pause_ms": 1000 * max(pauses,
                                                                                     default=0),
            "load_pause_total_ms": 1000 * sum(pauses),
            "full_collection_ms": 1000 * median(full),
            "tracked_objects_per_user": (len(gc.get_objects()) - tracked_before) / max(held, 1),
            "bytes_per_user": (rss_kib(os.getpid()) - rss_before) * 1024 / max(held, 1)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-status-"))
    os.environ["SIPCLUSTER_STATE_DIR"] = str(root / "state")  # the daemons' stores
    pubs = [f"pub{p:02d}" for p in range(args.publishers)]
    ports = write_cluster(root, pubs)
    certs.init_ca(root / "certs")
    for name in ["SA_1", "SA_2", "desk", *pubs]:
        certs.issue(root / "certs", name)
    (root / "bench.json").write_text(json.dumps({"ports": ports, "pubs": pubs,
                                                 "args": vars(args)}))
    table = measure_table(args, pubs)
    print(f"status table: {json.dumps(table)}", file=sys.stderr, flush=True)
    runs, failovers, failures = [], [], []
    for r in range(0 if args.table_only else args.runs):
        try:
            result = await run_load_and_rate(root, ports, pubs, args)
            runs.append(result)
            print(f"run {r + 1}: {json.dumps(result)}", file=sys.stderr, flush=True)
        except Exception as exc:  # a failed run is reported, not hidden
            failures.append(f"load/rate run {r + 1}: {exc!r}")
        try:
            failover = await run_failover(root, ports, pubs)
            failovers.append(failover)
            print(f"fail-over {r + 1}: {json.dumps(failover)}", file=sys.stderr, flush=True)
        except Exception as exc:
            failures.append(f"fail-over run {r + 1}: {exc!r}")
    return {"table": table, "runs": runs, "failovers": failovers, "failures": failures,
            "args": vars(args)}


def report(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    runs, fos = data["runs"], data["failovers"]

    def m(key: str, rows: list[dict[str, Any]] = runs) -> float:
        return median([float(r[key]) for r in rows if key in r])

    summary = {
        "users": args.users, "publishers": args.publishers, "runs": len(runs),
        "load_seconds": m("load_seconds"), "bytes_per_user": m("bytes_per_user"),
        "rate": args.rate, "achieved_rate": m("achieved_rate"), "watches": args.watches,
        "watch_connections": args.watch_connections,
        "p50_ms": m("p50_ms"), "p99_ms": m("p99_ms"),
        "missing": sum(int(r["missing"]) for r in runs),
        "gaps": sum(int(r["gaps"]) for r in runs) + sum(int(f["gaps"]) for f in fos),
        "cpu_s_per_1000": m("cpu_s_per_1000"),
        "failover_seconds": m("failover_seconds", fos),
        "failures": data["failures"],
        # what limited each side: CPU % of one core during the rate phase
        "aggregator_cpu_pct": m("aggregator_cpu_pct"),
        "publisher_processes": args.publisher_processes,
        "publisher_cpu_pct": median([max(r["publisher_cpu_pct"]) for r in runs]),
        "watcher_processes": args.watcher_processes,
        "watcher_cpu_pct": median([max(r["watcher_cpu_pct"]) for r in runs]),
        "aggregator_wait_pct": m("aggregator_wait_pct"),
        "publisher_wait_pct": median([max(r["publisher_wait_pct"]) for r in runs]),
        "watcher_wait_pct": median([max(r["watcher_wait_pct"]) for r in runs]),
        "load_average": [r["load_average"] for r in runs],
        "p99_ms_runs": [r["p99_ms"] for r in runs],
        "table": data["table"],
    }
    table = data["table"]
    print("## status-aggregator\n")
    print(f"Status table in the bench's process, {table['users']:,} users:\n")
    print("| figure | measured |")
    print("|---|---|")
    print(f"| filled in | {table['load_seconds']:.1f} s |")
    print(f"| full collections while filling: count, longest, total | "
          f"{table['load_full_collections']}, {table['load_longest_pause_ms']:.0f} ms, "
          f"{table['load_pause_total_ms']:.0f} ms |")
    print(f"| full collection, every user held (median of 5) | "
          f"{table['full_collection_ms']:.1f} ms |")
    print(f"| objects the collector tracks, per user | "
          f"{table['tracked_objects_per_user']:.2f} |")
    print(f"| memory per user | {table['bytes_per_user']:,.0f} B |\n")
    if args.table_only:
        return summary
    print(f"{args.users:,} users from {args.publishers} publishers; {args.watches:,} watches on "
          f"{args.watch_connections} connections; {args.rate:,} changes/s for {args.seconds} s; "
          f"median of {len(runs)} runs (fail-over: {len(fos)} runs)\n")
    print("| figure | measured | target | met? |")
    print("|---|---|---|---|")
    rows = [
        ("load time", f"{summary['load_seconds']:.1f} s", "< 30 s",
         summary["load_seconds"] < 30),
        ("memory per user", f"{summary['bytes_per_user']:,.0f} B", "<= 2,048 B",
         summary["bytes_per_user"] <= 2048),
        ("changes/s achieved", f"{summary['achieved_rate']:,.0f}", f">= {args.rate:,}",
         summary["achieved_rate"] >= args.rate * 0.98),
        ("publish -> event p50", f"{summary['p50_ms']:.1f} ms", "", True),
        ("publish -> event p99", f"{summary['p99_ms']:.1f} ms", "< 100 ms",
         summary["p99_ms"] < 100),
        ("events missing", str(summary["missing"]), "0", summary["missing"] == 0),
        ("sequence gaps", str(summary["gaps"]), "0", summary["gaps"] == 0),
        ("aggregator CPU s / 1,000 changes", f"{summary['cpu_s_per_1000']:.3f}", "", True),
        ("rate phase CPU (waiting for a core): aggregator",
         f"{summary['aggregator_cpu_pct']:.0f} % of a core "
         f"({summary['aggregator_wait_pct']:.0f} %)", "", True),
        (f"rate phase CPU (waiting for a core): busiest of {args.publisher_processes} "
         "publisher process(es)",
         f"{summary['publisher_cpu_pct']:.0f} % of a core ({summary['publisher_wait_pct']:.0f} %)",
         "< 100 %", summary["publisher_cpu_pct"] < 100),
        (f"rate phase CPU (waiting for a core): busiest of {args.watcher_processes} "
         "watcher process(es)",
         f"{summary['watcher_cpu_pct']:.0f} % of a core ({summary['watcher_wait_pct']:.0f} %)",
         "< 100 %", summary["watcher_cpu_pct"] < 100),
        ("load average (1 min) before / after each rate phase",
         ", ".join(f"{a:.1f} / {b:.1f}" for a, b in summary["load_average"]), "", True),
        ("fail-over, watchers restored", f"{summary['failover_seconds']:.2f} s", "< 5 s",
         summary["failover_seconds"] < 5),
    ]
    for what, value, target, met in rows:
        print(f"| {what} | {value} | {target} | {'yes' if met else 'NO'} |")
    for failure in summary["failures"]:
        print(f"\nFAILED: {failure}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--publishers", type=int, default=30)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--watches", type=int, default=10_000)
    parser.add_argument("--watch-connections", type=int, default=100)
    parser.add_argument("--watcher-processes", type=int, default=4,
                        help="processes the consumer connections are spread over")
    parser.add_argument("--publisher-processes", type=int, default=1,
                        help="processes the publishers are spread over")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--table-only", action="store_true",
                        help="only the in-process status table phase")
    parser.add_argument("--child", choices=["publishers", "watchers"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if arguments.child:
        # answers on the descriptor stdout was; what prints to stdout goes to the log
        answers = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        asyncio.run(child_main(arguments.child, arguments.index, arguments.of, arguments.root,
                               answers))
        sys.exit(0)
    figures = report(asyncio.run(main(arguments)), arguments)
    print("RESULT " + json.dumps(figures))
