"""Collective figures: full sync time of many spanning users, and how long a
change of one user takes to show at another site.

* ``sync``: site Boca holds ``--users`` spanning users (written to its store
  before it starts); site Indy joins with an empty store, asks for a full
  sync and the time until its directory holds every one of them is taken
  (the issue's target: 200,000 users in under 60 s). Hub and site CPU
  seconds are read from /proc.
* ``change``: ``--changes`` times, a user's extension changed at Boca (HTTP
  PUT) and Indy's directory polled until it shows it: send to visible, p50
  and p90 (includes the HTTP polling interval of 5 ms).
* ``status``: Boca's t-controller publisher (its own agent table and
  publisher code, in this process) and Boca's status-aggregator process; an
  agent logged in, then ``--changes`` times made Ready / Not Ready: from the
  agent table's change to Indy's directory showing it, p50 and p90 (the
  product's aim: every site within a second).

Real processes (``sipcluster rtm-server``, ``sipcluster collective``) on
127.0.214.x. Medians over ``--runs``; every process's log is read after each
run and a log line at error level fails the run. The last line is
``RESULT {json}`` (medians, each run's figures, the failed runs).

    .venv/bin/python bench/bench_collective.py --runs 3 --users 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.daemons.collective.conftest as lab
from daemons.cluster.config import load_cluster
from daemons.runtime.logs import get_logger
from daemons.t_controller.agent import AgentOptions, AgentTable
from daemons.t_controller.status_publisher import StatusPublisher
from tests.conftest import free_port
from tests.daemons.rtm_server.conftest import Hub, HubSpec, Proc, write_cluster

HUB_HOST = "127.0.214.10"
lab.SITES.update({1: ("Boca", "127.0.214.1"), 2: ("Indy", "127.0.214.2"),
                  3: ("Lyon", "127.0.214.3")})
lab.SA_HOSTS.clear()
lab.SA_HOSTS[1] = "127.0.214.5"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def errors(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") == "error":
            out.append(line)
    return out


def one_run(users: int, changes: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bench-collective-"))
    spec = HubSpec("RTM1", HUB_HOST, free_port(HUB_HOST), free_port(HUB_HOST))
    hub = Hub(write_cluster(root / "hub.toml", [spec],
                            {"store": f"sqlite:{root / 'hub' / 'rtm.db'}"},
                            sites=lab.PASSWORDS), spec, root / "hub.log").start()
    ports = {s: free_port(h) for s, (_, h) in lab.SITES.items()}
    sites: list[lab.SiteProc] = []
    try:
        hub.wait_role("active", 30.0)
        sa_ports = (free_port(lab.SA_HOSTS[1]), free_port(lab.SA_HOSTS[1]))
        configs = {s: lab.site_cluster(root, s, spec, http_port=ports[s],
                                       sa_ports=sa_ports if s == 1 else None) for s in (1, 2)}
        aggregator = Proc([sys.executable, "-m", "daemons.cli", "status-aggregator", "--config",
                           str(configs[1]), "--name", "SA_Boca", "--log-format", "json"],
                          root / "SA_Boca.log",
                          env={"SIPCLUSTER_STATE_DIR": str(root / "sa-state")}).start()
        sites.append(aggregator)  # type: ignore[arg-type]
        state = root / "Boca" / "state"
        state.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(state / "collective.db") as db:
            db.executescript(lab_schema())
            db.executemany("INSERT INTO collective_users VALUES (1, ?, ?, ?, ?, 1, 1, 0)",
                           ((f"u{i}", f"User {i}", str(1_000_000 + i),
                             json.dumps([lab.SPANNING])) for i in range(users)))
            db.execute("INSERT INTO collective_meta VALUES ('joined', 1)")
        boca = lab.SiteProc(1, configs[1], ports[1], root / "Boca.log").start()
        sites.append(boca)
        boca.wait_ready(60.0)
        indy = lab.SiteProc(2, configs[2], ports[2], root / "Indy.log")
        hub_cpu, boca_cpu = cpu_seconds(hub.pid), cpu_seconds(boca.pid)
        started = time.monotonic()
        indy.start()
        sites.append(indy)
        lab.until(lambda: indy.get("/status")["users"]["replicated"] >= users, 600.0,
                  "full sync incomplete", alive=indy)
        sync_s = time.monotonic() - started
        result = {"sync_s": sync_s, "sync_users_per_s": users / sync_s,
                  "hub_cpu_s": cpu_seconds(hub.pid) - hub_cpu,
                  "boca_cpu_s": cpu_seconds(boca.pid) - boca_cpu,
                  "indy_cpu_s": cpu_seconds(indy.pid)}
        lat = []
        for n in range(changes):
            extension = str(2_000_000 + n)
            t0 = time.monotonic()
            boca.put_user("u0", "User 0", extension, [lab.SPANNING])
            while indy.get("/directory/1/u0")["extension"] != extension:
                time.sleep(0.005)
            lat.append(time.monotonic() - t0)
        lat.sort()
        result["change_p50_ms"] = 1000 * lat[len(lat) // 2]
        result["change_p90_ms"] = 1000 * lat[int(len(lat) * 0.9)]
        lab.until(lambda: boca.get("/status")["status_aggregator"] == "SA_Boca", 30.0,
                  "Boca not connected to its status-aggregator")
        boca.put_user("7001", "Agent 7001", "7001", [lab.SPANNING])
        lab.until(lambda: (1, "7001") in indy.users(), 30.0)
        lat = asyncio.run(status_latencies(configs[1], indy, changes))
        result["status_p50_ms"] = 1000 * lat[len(lat) // 2]
        result["status_p90_ms"] = 1000 * lat[int(len(lat) * 0.9)]
        return result
    finally:
        for proc in sites:
            proc.stop()
        hub.stop()
        bad = [line for p in (root / "hub.log", root / "Boca.log", root / "Indy.log",
                              root / "SA_Boca.log")
               for line in errors(p)]
        if bad:
            raise RuntimeError(f"error lines in the logs: {bad[:3]}")


async def status_latencies(config: Path, indy: lab.SiteProc, changes: int) -> list[float]:
    """Agent state changes at Boca's t-controller until Indy's directory shows them."""
    table = AgentTable(AgentOptions())
    publisher = StatusPublisher.from_config(load_cluster(config), "TC_Boca", table,
                                            get_logger("bench"))
    assert publisher is not None
    publisher.start()

    def shown(status: str) -> bool:
        entry = indy.get("/directory/1/7001")["status"]
        return bool(entry and entry["logged_on"] and entry["status"] == status)

    out = []
    try:
        for n in range(changes + 1):
            t0 = time.monotonic()
            if n == 0:
                table.login("7001", "7001", 0.0)
                wanted = "Not Ready"
            elif n % 2:
                table.ready("7001", float(n))
                wanted = "Available"
            else:
                table.not_ready("7001", float(n))
                wanted = "Not Ready"
            while not await asyncio.to_thread(shown, wanted):
                await asyncio.sleep(0.005)
                if time.monotonic() - t0 > 30:
                    raise AssertionError(f"status {wanted} not shown at Indy in 30 s")
            if n:
                out.append(time.monotonic() - t0)
    finally:
        await publisher.stop()
    return sorted(out)


def lab_schema() -> str:
    from daemons.collective.store import _SQLITE_SCHEMA as _SCHEMA
    return _SCHEMA


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    results, failures = [], []
    for run in range(args.runs):
        try:
            r = one_run(args.users, args.changes)
        except (AssertionError, RuntimeError, OSError) as exc:
            failures.append(str(exc)[:300])
            print(f"run {run + 1}: FAILED {exc}"[:400], flush=True)
            continue
        results.append(r)
        print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    medians: dict[str, float] = {}
    per_run: dict[str, list[float]] = {}
    if results:
        print(f"median of {len(results)} runs ({args.users} spanning users):")
        for key in results[0]:
            values = [r[key] for r in results]
            medians[key] = round(statistics.median(values), 3)
            per_run[key] = [round(v, 3) for v in values]
            print(f"  {key:18} {statistics.median(values):10.2f}   "
                  f"[{', '.join(f'{v:.2f}' for v in values)}]")
    print(f"failed runs: {len(failures)}")
    print("RESULT " + json.dumps({"users": args.users, "changes": args.changes,
                                  "runs": args.runs, "failed_runs": len(failures),
                                  "failures": failures, "median": medians,
                                  "per_run": per_run}))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
