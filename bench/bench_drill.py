"""Faults under load for a long run: the lab (the shipped cluster file moved to
127.0.191.x / 127.0.192.x) started, ``sipcluster lab drill`` for ``--minutes``
(30 by default), the lab stopped.

    .venv/bin/python bench/bench_drill.py [--minutes 30] [--register-rate 10] [--call-rate 4]

Prints the drill's report (failed calls per fault window, lost bindings,
calls left up, memory growth per hour of every daemon) and, last, one
``RESULT {json}`` line for bench/run_all.py. Exit status 1 when the drill
lost accepted state.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
SUBNETS = {"127.0.1.": "127.0.191.", "127.0.2.": "127.0.192."}
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--register-rate", type=float, default=10.0)
    parser.add_argument("--call-rate", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp:
        work = Path(tmp)
        text = CLUSTER.read_text()
        for old, new in SUBNETS.items():
            text = text.replace(old, new)
        config = work / "cluster.toml"
        config.write_text(text)
        lab = work / "lab"
        started = subprocess.run([*SIPCLUSTER, "lab", "start", "--dir", str(lab), "--config",
                                  str(config), "--timeout", "120"], cwd=ROOT,
                                 capture_output=True, text=True)
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
                cwd=ROOT, capture_output=True, text=True)
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
        print("RESULT " + json.dumps(result))
        return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
