"""Faults under load for a long run: the lab (the shipped cluster file moved to
127.0.191.x / 127.0.192.x) started, ``sipcluster lab drill`` for ``--minutes``
(30 by default), the lab stopped.

    .venv/bin/python bench/bench_drill.py [--minutes 30] [--register-rate 10] [--call-rate 4]
        [--tracemalloc sip-server[,sip-proxy...]] [--tracemalloc-every 120]

Prints the drill's report (failed calls per fault window, lost bindings,
calls left up, memory growth per hour of every daemon) and, last, one
``RESULT {json}`` line for bench/run_all.py. Exit status 1 when the drill
lost accepted state.

``--tracemalloc KINDS`` runs the daemons of those kinds with ``tracemalloc``
(``bench/tracemalloc_hook``: a base snapshot after ``--tracemalloc-every``
seconds, then one every as many seconds) and prints, per daemon, how fast its
traced Python heap grew after the base snapshot and the allocation sites that
grew most, marking those that grew at every snapshot. tracemalloc slows the
daemons it traces, so a run with it is for finding what grows, not for the
RSS figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
SUBNETS = {"127.0.1.": "127.0.191.", "127.0.2.": "127.0.192."}
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
TRACEMALLOC_HOOK = ROOT / "bench" / "tracemalloc_hook"
#: allocation sites printed per traced daemon
SITES_SHOWN = 6


def heap_growth(snapshot_dir: Path) -> dict[str, dict]:
    """Per traced daemon: its traced heap's growth per hour between the first
    and last snapshot, and the sites that grew most between the base snapshot
    and the last one (``steady``: larger at every snapshot than at the one
    before)."""
    result: dict[str, dict] = {}
    for path in sorted(snapshot_dir.glob("*.jsonl")):
        snaps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not snaps:
            continue
        first, last = snaps[0], snaps[-1]
        hours = (last["t"] - first["t"]) / 3600
        history: dict[str, list[int]] = {}
        for snap in snaps:
            for site in snap["sites"]:
                history.setdefault(" <- ".join(reversed(site["traceback"])), []).append(
                    site["size_diff"])
        sites = []
        for site in last["sites"][:SITES_SHOWN]:
            key = " <- ".join(reversed(site["traceback"]))
            seen = history.get(key, [])
            steady = len(seen) == len(snaps) and all(b > a for a, b in itertools.pairwise(seen))
            sites.append({"kib_since_base": round(site["size_diff"] / 1024, 1),
                          "blocks_since_base": site["count_diff"], "steady": steady,
                          "where": key})
        name = f"{first['name']} (pid {first['pid']})"
        result[name] = {
            "snapshots": len(snaps),
            "traced_mb": [round(first["traced"] / 1e6, 1), round(last["traced"] / 1e6, 1)],
            "heap_mb_per_hour": (round((last["traced"] - first["traced"]) / 1e6 / hours, 1)
                                 if hours > 0 else None),
            "sites": sites,
        }
    return result


def print_heap_growth(growth: dict[str, dict]) -> None:
    print("\n## traced Python heap (tracemalloc)\n")
    if not growth:
        print("no snapshots: the drill ended before the second snapshot of any traced daemon")
    for name, g in growth.items():
        rate = g["heap_mb_per_hour"]
        print(f"{name}: {g['snapshots']} snapshots, traced heap {g['traced_mb'][0]} -> "
              f"{g['traced_mb'][1]} MB" + (f" ({rate:+.1f} MB/h)" if rate is not None else ""))
        for site in g["sites"]:
            print(f"    {site['kib_since_base']:+9.1f} KiB {site['blocks_since_base']:+7d} blocks"
                  f"{'  steady' if site['steady'] else ''}\n        {site['where']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--register-rate", type=float, default=10.0)
    parser.add_argument("--call-rate", type=float, default=4.0)
    parser.add_argument("--tracemalloc", default="", metavar="KINDS",
                        help="daemon kinds to run with tracemalloc, e.g. sip-server,sip-proxy")
    parser.add_argument("--tracemalloc-every", type=float, default=120.0, metavar="SECONDS",
                        help="seconds to the base snapshot and between snapshots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        snapshot_dir = work / "tracemalloc"
        if args.tracemalloc:
            snapshot_dir.mkdir()
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(TRACEMALLOC_HOOK), env.get("PYTHONPATH")) if p)
            env["SIPCLUSTER_TRACEMALLOC_MATCH"] = args.tracemalloc
            env["SIPCLUSTER_TRACEMALLOC_DIR"] = str(snapshot_dir)
            env["SIPCLUSTER_TRACEMALLOC_EVERY"] = str(args.tracemalloc_every)
        text = CLUSTER.read_text()
        for old, new in SUBNETS.items():
            text = text.replace(old, new)
        config = work / "cluster.toml"
        config.write_text(text)
        lab = work / "lab"
        started = subprocess.run([*SIPCLUSTER, "lab", "start", "--dir", str(lab), "--config",
                                  str(config), "--timeout", "120"], cwd=ROOT,
                                 capture_output=True, text=True, env=env)
        if started.returncode != 0:
            print(started.stdout + started.stderr)
            print("RESULT " + json.dumps({"error": "lab did not start"}))
            return 1
        report_path = work / "drill.json"
        try:
            drill = subprocess.run(
                [*SIPCLUSTER, "lab", "--dir", str(lab), "drill",
                 "--duration", str(args.minutes * 60),
                 "--register-rate", str(args.register_rate),
                 "--call-rate", str(args.call_rate), "--json", str(report_path)],
                cwd=ROOT, capture_output=True, text=True, env=env)
        finally:
            subprocess.run([*SIPCLUSTER, "lab", "stop", "--dir", str(lab)], cwd=ROOT,
                           capture_output=True, text=True)
        print(f"## drill: {args.minutes:g} min, {args.register_rate:g} REGISTER/s, "
              f"{args.call_rate:g} calls/s\n")
        print("```\n" + drill.stdout.strip() + "\n```")
        if not report_path.exists():
            print(drill.stderr[-3000:])
            print("RESULT " + json.dumps({"error": "no drill report"}))
            return 1
        report = json.loads(report_path.read_text())
        calls = report["calls"]
        result = {
            "minutes": args.minutes, "ok": report["ok"],
            "lost_bindings": len(report["lost_bindings"]),
            "stale_bindings": len(report.get("stale_bindings", [])),
            "calls_left_up": sum(report["calls_left_up"].values()),
            "calls_ok": sum(w["ok"] for w in calls.values()),
            "calls_failed": sum(w["failed"] for w in calls.values()),
            "failed_by_fault": {k: w["failed"] for k, w in calls.items()},
            "memory_mb_per_hour": report["memory_mb_per_hour"],
        }
        if args.tracemalloc:
            growth = heap_growth(snapshot_dir)
            print_heap_growth(growth)
            result["heap_mb_per_hour"] = {n: g["heap_mb_per_hour"] for n, g in growth.items()}
        print("RESULT " + json.dumps(result))
        return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
