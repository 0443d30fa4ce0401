"""Run every benchmark script in bench/ and print one report (``make bench``).

Each ``bench/bench_*.py`` prints Markdown tables (medians over several runs,
failures counted beside every rate) and, on its last line, one JSON object
prefixed ``RESULT ``. This driver runs them one after the other (so they do
not compete for the two cores), prints ONE summary table (rows built by
``bench/report.py``: what, ours, target, met?, failures, CPU s per 1,000
transactions, Kamailio and the ratio, memory), then each script's own
output, and writes ``bench/results.json``.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME[,NAME]] [--out FILE]

``--quick`` passes smaller sizes and fewer runs to the scripts that accept
them (a whole report in about 15 minutes on 2 cores); the default is the
full run. ``--only parser,proxy`` runs the scripts whose name contains one
of the words.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import Row, markdown, rows_for  # noqa: E402

#: Smaller sizes for ``--quick`` (each script's own argparse options).
QUICK: dict[str, list[str]] = {
    "bench_parser": ["--n", "5000"],
    "bench_transaction": ["--count", "5000", "--runs", "3"],
    "bench_tlib": ["--frames", "20000", "--runs", "3"],
    "bench_node_calls": ["--calls", "1000", "--runs", "1"],
    "bench_proxy": ["--runs", "1", "--step-seconds", "2", "--bindings", "20000"],
    "bench_tcontroller": ["--events", "5000", "--requests", "1000", "--runs", "1"],
    "bench_mesh": ["--runs", "1", "--dns", "10000", "--memory-dns", "2000"],
    "bench_node_memory": ["--runs", "1"],
    "bench_security": [],
    "bench_status": ["--users", "100000", "--runs", "1", "--seconds", "5"],
    "bench_presence": ["--runs", "1", "--rounds", "2"],
    "bench_rtm": ["--quick"],
    "bench_feature_server": ["--runs", "3", "--lookups", "5000", "--queries", "500"],
    "bench_director": ["--decisions", "5000", "--calls", "500", "--runs", "1"],
    "bench_voicemail": ["--sessions", "200", "--seconds", "10", "--runs", "1"],
    "bench_drill": ["--minutes", "2"],
    "bench_hostile": ["--runs", "1"],
    "bench_failover": ["--runs", "1"],
    "bench_instructions": ["--runs", "1", "--registers", "100", "--calls", "30"],
    "bench_cpu_split": ["--runs", "1", "--seconds", "4"],
    "bench_collective": ["--runs", "1", "--users", "20000"],
    "bench_node_forward_all": ["--runs", "1", "--calls", "300"],
    "bench_prack": ["--runs", "1", "--calls", "200"],
    "bench_treatments": ["--streams", "50", "--seconds", "5", "--runs", "1"],
    # 1,000 connections: a TCP connect costs the proxy about a clock tick per 250
    "bench_proxy_tls": ["--runs", "3", "--connections", "1000"],
    "bench_cluster_scale": ["--runs", "1", "--seconds", "10"],
}
#: Wall-time bound per script (the scripts bound their own loops; this is a last resort).
TIMEOUT = 45 * 60


def run_script(script: Path, extra: list[str]) -> tuple[dict[str, object] | None, str, str, int,
                                                         float]:
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(script), *extra], capture_output=True,
                              text=True, cwd=HERE.parent, timeout=TIMEOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"timed out after {TIMEOUT} s"
        code = -1
    figures = None
    lines = []
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            try:
                figures = json.loads(line[len("RESULT "):])
            except json.JSONDecodeError:
                lines.append(line)
        else:
            lines.append(line)
    return figures, "\n".join(lines), stderr, code, time.monotonic() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument("--only", action="append", default=[],
                        help="run only scripts whose name contains NAME (comma-separated)")
    parser.add_argument("names", nargs="*", help="same as --only")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    wanted = [w for item in [*args.only, *args.names] for w in item.split(",") if w]
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if any(w in s.stem for w in wanted)]
    machine = (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python "
               f"{platform.python_version()}, load average at start "
               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# benchmark report ({'--quick' if args.quick else 'full'})\n\n{machine}\n",
          flush=True)
    results: dict[str, object] = {"mode": "quick" if args.quick else "full",
                                  "machine": machine, "scripts": {}}
    outputs: list[str] = []
    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    for script in scripts:
        extra = QUICK.get(script.stem, []) if args.quick else []
        print(f"running {script.stem} {' '.join(extra)}".rstrip() + " ...", end=" ", flush=True)
        figures, out, err, code, secs = run_script(script, extra)
        print(f"{secs:.0f} s, exit {code}", flush=True)
        if code != 0:
            failed.append(script.stem)
        rows += rows_for(script.stem, figures, code)
        section = [f"## {script.stem} {' '.join(extra)}".rstrip(), "", out.strip()]
        if code != 0:
            section += ["", f"**{script.stem} exited {code}**", "```", err.strip()[-2000:], "```"]
        outputs.append("\n".join(section))
        results["scripts"][script.stem] = {  # type: ignore[index]
            "figures": figures, "seconds": round(secs, 1), "exit": code, "args": extra}
    results["seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = [dict(zip(["what", "ours", "target", "met", "failures", "cpu_s_per_1000",
                                    "kamailio", "ratio", "memory"], r.cells(), strict=True))
                          for r in rows]
    print("\n## Summary\n")
    print(markdown(rows))
    print(f"\n{len(scripts)} scripts in {results['seconds']:.0f} s"
          + (f"; exited non-zero: {', '.join(failed)}" if failed else ""))
    for section in outputs:
        print("\n" + section)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
