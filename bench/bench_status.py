"""status-aggregator figures (docs/status-aggregator.md, "Figures"): a real
``sipcluster status-aggregator`` process over mutual TLS on 127.0.139.x,
driven by publishers and watchers of our client library in this process.

Per run (median of ``--runs``):

* **load**: ``--publishers`` publishers connect and send their snapshots,
  ``--users`` users in all; the time until the aggregator holds every user
  (its ``sipcluster_status_users`` gauge), and its resident memory growth per
  user (``/proc/PID/status`` VmRSS before and after);
* **rate**: then ``--watches`` watches spread over ``--watch-connections``
  consumer connections; the publishers change watched users at ``--rate``
  changes per second for ``--seconds`` seconds; publish-to-event latency
  (p50, p99, measured at the watcher from the time stamp the change carries),
  events missing, event sequence gaps, the aggregator's CPU seconds per 1,000
  changes;
* **fail-over**: two mirrored aggregators, a publisher and a watcher on the
  first; SIGKILL to the first; the time until a change published after the
  kill reaches the watcher through the second (watches restored).

Usage: ``.venv/bin/python bench/bench_status.py [--users 500000] [--publishers 30]
[--rate 5000] [--seconds 10] [--watches 10000] [--watch-connections 100] [--runs 3]``
The last line is ``RESULT {json}`` (bench/run_all.py).
"""

from __future__ import annotations

import argparse
import asyncio
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
from daemons.runtime.status_client import AggregatorAddress, StatusClient
from protocols.status.messages import Role, StatusRecord

HOSTS = {"SA_1": "127.0.139.1", "SA_2": "127.0.139.2"}
CLIENT_HOST = "127.0.139.9"
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


async def run_load_and_rate(root: Path, ports: dict[str, int], pubs: list[str],
                            args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(root, "SA_1", ports)
    await daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    clients: list[StatusClient] = []
    try:
        rss_before = rss_kib(pid)
        per = args.users // len(pubs)
        publishers = []
        load_cpu0, own_cpu0 = cpu_seconds(pid), time.process_time()
        started = time.perf_counter()
        total = args.users
        for p, name in enumerate(pubs):
            c = client(root, ports, name, Role.PUBLISHER, ["SA_1"])
            publishers.append(c)
            last = total if p == len(pubs) - 1 else (p + 1) * per
            c.publish([StatusRecord(user=user(i), status="Available", server=name)
                       for i in range(p * per, last)])
        clients += publishers
        loaded = 0
        while loaded < total and time.perf_counter() - started < 300:
            await asyncio.sleep(0.1)
            loaded = await daemon.users()
        load_seconds = time.perf_counter() - started
        load_cpu = cpu_seconds(pid) - load_cpu0
        client_cpu = time.process_time() - own_cpu0
        await asyncio.sleep(1.0)
        rss_after = rss_kib(pid)
        # watches, spread over the consumer connections
        received: list[float] = []
        latencies: list[float] = []

        def on_records(records: list[StatusRecord]) -> None:
            now = time.time()
            for r in records:
                if r.status == "Busy" and r.detail:
                    latencies.append(now - float(r.detail))
                    received.append(now)

        watched = [user(i * (total // args.watches)) for i in range(args.watches)]
        per_conn = args.watches // args.watch_connections
        watchers = [client(root, ports, "desk", Role.CONSUMER, ["SA_1"], on_records=on_records)
                    for _ in range(args.watch_connections)]
        clients += watchers
        for w in watchers:
            await w.wait_open(30)
        for k, w in enumerate(watchers):
            await w.watch(watched[k * per_conn:(k + 1) * per_conn], timeout=60)
        # changes at --rate per second, paced in 20 ms ticks
        owner = {u: publishers[min(int(u[4:11]) // per, len(pubs) - 1)] for u in watched}
        tick = 0.02
        per_tick = max(1, int(args.rate * tick))
        changes = int(args.rate * args.seconds)
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        sent = 0
        while sent < changes:
            batch = {}
            stamp = f"{time.time():.6f}"
            for j in range(min(per_tick, changes - sent)):
                u = watched[(sent + j) % len(watched)]
                batch.setdefault(owner[u], []).append(
                    StatusRecord(user=u, status="Busy", server=owner[u].name, detail=stamp))
            for pub, records in batch.items():
                pub.publish(records)
            sent += min(per_tick, changes - sent)
            target = t0 + (sent / args.rate)
            delay = target - time.perf_counter()
            await asyncio.sleep(max(0.0, delay))
        send_seconds = time.perf_counter() - t0
        for _ in range(200):  # up to 10 s for the last events
            if len(latencies) >= changes:
                break
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(pid) - cpu0
        latencies.sort()
        gaps = sum(w.gaps for w in watchers)

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 \
                if latencies else float("nan")

        return {
            "users": loaded, "load_seconds": load_seconds,
            "load_cpu_s": load_cpu, "load_client_cpu_s": client_cpu,
            "rss_kib_before": rss_before, "rss_kib_after": rss_after,
            "bytes_per_user": (rss_after - rss_before) * 1024 / max(loaded, 1),
            "changes": changes, "achieved_rate": changes / send_seconds,
            "events": len(latencies), "missing": changes - len(latencies), "gaps": gaps,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "cpu_s_per_1000": cpu / changes * 1000,
        }
    finally:
        for c in clients:
            await c.stop()
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


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-status-"))
    os.environ["SIPCLUSTER_STATE_DIR"] = str(root / "state")  # the daemons' stores
    pubs = [f"pub{p:02d}" for p in range(args.publishers)]
    ports = write_cluster(root, pubs)
    certs.init_ca(root / "certs")
    for name in ["SA_1", "SA_2", "desk", *pubs]:
        certs.issue(root / "certs", name)
    runs, failovers, failures = [], [], []
    for r in range(args.runs):
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
    return {"runs": runs, "failovers": failovers, "failures": failures, "args": vars(args)}


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
    }
    print("## status-aggregator\n")
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
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    figures = report(asyncio.run(main(arguments)), arguments)
    print("RESULT " + json.dumps(figures))
