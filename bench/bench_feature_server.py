"""Benchmark of the feature-server's dial plan (docs/feature-server.md, "Figures").

* **look-up**: p50 / p99 of one ``DialPlan.lookup`` at 100 and at 10,000 rules
  (the trie: the cost must not grow with the rules), side by side with the
  straightforward way -- every rule a regular expression, tried in turn -- on the
  same rules and numbers. Target: p99 < 50 µs at 10,000 rules.
* **reload**: 100,000 rules compiled in process (``compile_plan``), and the same
  plan reloaded by a running ``sipcluster feature-server`` (``POST
  /api/dial-plan/reload``: store read + compile + swap) while a client keeps
  querying it over HTTP; every answer must be a decision of the old or the new
  plan. Target: < 1 s, zero failed look-ups.
* **HTTP round trip**: the node's own client (``DialPlanClient``) querying a
  running feature-server, one query at a time: p50 / p99.

Medians over ``--runs`` runs. Run: ``.venv/bin/python bench/bench_feature_server.py
[--runs 5] [--lookups 20000] [--queries 2000]``. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import structlog  # noqa: E402

from daemons.runtime.management import Metrics  # noqa: E402
from daemons.sip_server.dialplan_client import DialPlanClient  # noqa: E402
from protocols.dialplan import compile_plan, parse_pattern  # noqa: E402

HOST = "127.0.107.31"
PORT = 8090


def make_rules(n: int, seed: int) -> list[str]:
    """``n`` distinct rules: 7-digit prefixes with X runs, sets and tails, plus a catch-all."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rules = []
    while len(rules) < n - 1:
        head = str(rng.randint(1_000_000, 9_999_999))
        kind = rng.random()
        if kind < 0.5:
            pattern = head + "X" * rng.randint(0, 3)
        elif kind < 0.7:
            pattern = head[:5] + "[2-7]" + "X" * rng.randint(1, 3)
        elif kind < 0.9:
            pattern = head + "."
        else:
            pattern = head[:6] + "N" + "!"
        if pattern in seen:
            continue
        seen.add(pattern)
        rules.append(f"{pattern}=>+1${{DIGITS}}@trunk")
    rules.append(".=>${DIGITS}")
    return rules


def numbers(n: int, rules: list[str], seed: int) -> list[str]:
    """Half the numbers hit a specific rule, half only the catch-all."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            out.append(str(rng.randint(10**9, 10**10 - 1)))
            continue
        pattern = rules[rng.randrange(len(rules) - 1)].split("=>")[0]
        digits = []
        for e in parse_pattern(pattern).elements:
            if e.char is not None:
                digits.append(e.char)
            elif e.chars is not None:
                digits.append(rng.choice(sorted(e.chars)))
            elif e.tail == ".":
                digits.append(str(rng.randint(0, 999)))
        out.append("".join(digits))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def regex_of(pattern: str) -> re.Pattern[str]:
    out = ""
    for e in parse_pattern(pattern).elements:
        if e.char is not None:
            out += re.escape(e.char)
        elif e.chars is not None:
            out += "[" + "".join(sorted(e.chars)) + "]"
        else:
            out += ".+" if e.tail == "." else ".*"
    return re.compile(out)


def bench_lookup(n_rules: int, n_lookups: int, seed: int) -> dict[str, float]:
    rules = make_rules(n_rules, seed)
    plan = compile_plan({"P": {"rules": rules}}, {}, {})
    digits = numbers(n_lookups, rules, seed + 1)
    now = time.time()
    clock = time.perf_counter_ns
    trie: list[float] = []
    misses = 0
    for d in digits:
        t0 = clock()
        decision = plan.lookup(d, None, now)
        trie.append((clock() - t0) / 1000)
        misses += decision.rule is None
    # the straightforward way on the same rules: every regex in turn, keep the longest
    # literal prefix (what a plan without a trie must do to find the most specific rule)
    regexes = [(regex_of(r.split("=>")[0]), len(r)) for r in rules]
    linear: list[float] = []
    for d in digits[: max(200, n_lookups // 50)]:
        t0 = clock()
        best = None
        for rx, weight in regexes:
            if rx.fullmatch(d) and (best is None or weight > best):
                best = weight
        linear.append((clock() - t0) / 1000)
    return {"p50_us": statistics.median(trie), "p99_us": percentile(trie, 0.99),
            "linear_p50_us": statistics.median(linear), "linear_p99_us": percentile(linear, 0.99),
            "misses": misses}


def cluster_text(state: Path) -> str:
    return f"""
[switch]
name = "Bench"
domain = "bench.test"

[dns.Nodes]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.107.11"
geo-location = "dc1"
sip-port = 5070
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.107.11"
sip-server = "SIPS_1"
tc-port = 7002

[applications.FS_bench]
kind = "feature-server"
host = "{HOST}"
geo-location = "dc1"
http-port = {PORT}

[applications.FS_bench.options]
state-dir = "{state}"
"""


def http(method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{HOST}:{PORT}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet_reload(pid: int) -> dict[str, float]:
    """One reload with no query running: wall seconds and the daemon's CPU seconds."""
    c0, t0 = process_cpu(pid), time.perf_counter()
    status, body = http("POST", "/api/dial-plan/reload")
    wall = time.perf_counter() - t0
    time.sleep(0.2)  # the old plan is freed after the answer
    if status != 200:
        raise RuntimeError(f"reload refused: {status} {body}")
    return {"seconds": wall, "cpu_seconds": process_cpu(pid) - c0}


def start_daemon(tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "cluster.toml"
    config.write_text(cluster_text(tmp / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "daemons.cli", "feature-server", "--config",
                             str(config), "--name", "FS_bench", "--log-level", "warning"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http("GET", "/healthz", timeout=1)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("feature-server did not start")


async def reload_under_load(n_rules: int, probe: list[tuple[str, str]]) -> dict[str, Any]:
    """One reload of the running daemon while a client queries it; failed look-ups
    are errors, timeouts and answers that are not the rule's decision."""
    failed = answered = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal failed, answered
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5)) as session:
            i = 0
            while not stop.is_set():
                digits, number = probe[i % len(probe)]
                i += 1
                try:
                    async with session.get(f"http://{HOST}:{PORT}/dialplan",
                                           params={"digits": digits}) as resp:
                        body = await resp.json()
                        ok = resp.status == 200 and body.get("number") == number
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    ok = False
                failed += not ok
                answered += 1

    task = asyncio.create_task(client())
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    status, body = await loop.run_in_executor(None, http, "POST", "/api/dial-plan/reload")
    seconds = time.perf_counter() - t0
    await asyncio.sleep(0.3)
    stop.set()
    await task
    ok = isinstance(body, dict)
    return {"seconds": seconds, "status": status, "rules": body.get("rules") if ok else None,
            "cpu_seconds": body.get("compile_cpu_seconds") if ok else None,
            "failed": failed, "answered": answered}


async def round_trips(n: int) -> dict[str, Any]:
    client = DialPlanClient([f"http://{HOST}:{PORT}/dialplan"], geo_location="dc1",
                            metrics=Metrics("bench"), log=structlog.get_logger())
    times: list[float] = []
    failures = 0
    try:
        for i in range(n):
            t0 = time.perf_counter()
            answer = await client.query(f"9555{i:04d}", caller="1001")
            times.append((time.perf_counter() - t0) * 1e6)
            failures += answer is None
    finally:
        await client.close()
    return {"p50_us": statistics.median(times), "p99_us": percentile(times, 0.99),
            "failed": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--reload-rules", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    lookups: dict[int, list[dict[str, float]]] = {100: [], 10_000: []}
    for run in range(args.runs):
        for n in lookups:
            lookups[n].append(bench_lookup(n, args.lookups, seed=run))
    lookup = {str(n): {k: statistics.median(r[k] for r in runs) for k in runs[0]}
              for n, runs in lookups.items()}

    rules = make_rules(args.reload_rules, seed=7)
    compile_s, compile_cpu = [], []
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        compile_plan({"P": {"rules": rules}}, {}, {})
        compile_s.append(time.perf_counter() - t0)
        compile_cpu.append(time.process_time() - c0)

    probe = []
    for text in rules[:200]:
        digits = numbers(1, [text, ".=>x"], seed=len(probe))[0]
        probe.append((digits, "+1" + digits))
    with tempfile.TemporaryDirectory(prefix="bench-fs-") as tmp:
        proc = start_daemon(Path(tmp))
        try:
            t0 = time.perf_counter()
            status, _body = http("PUT", "/api/partitions/Big", {"rules": rules})
            provision_s = time.perf_counter() - t0
            if status not in (200, 201):
                raise RuntimeError(f"provisioning failed: {status} {_body}")
            quiet = [quiet_reload(proc.pid) for _ in range(args.runs)]
            reloads = [asyncio.run(reload_under_load(args.reload_rules, probe))
                       for _ in range(args.runs)]
            trips = [asyncio.run(round_trips(args.queries)) for _ in range(args.runs)]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    reload = {"seconds": statistics.median(r["seconds"] for r in reloads),
              "cpu_seconds": statistics.median(r["cpu_seconds"] or 0.0 for r in reloads),
              "failed": sum(r["failed"] for r in reloads),
              "answered": sum(r["answered"] for r in reloads),
              "refused": sum(r["status"] != 200 for r in reloads)}
    trip = {"p50_us": statistics.median(t["p50_us"] for t in trips),
            "p99_us": statistics.median(t["p99_us"] for t in trips),
            "failed": sum(t["failed"] for t in trips)}

    print("## Feature-server dial plan\n")
    print(f"medians of {args.runs} runs; {args.lookups:,} look-ups per run\n")
    print("| rules | trie p50 µs | trie p99 µs | regex list p50 µs | regex list p99 µs | "
          "p99 ratio regex/trie |")
    print("|---|---|---|---|---|---|")
    for n, r in lookup.items():
        print(f"| {int(n):,} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
              f"{r['linear_p50_us']:.0f} | {r['linear_p99_us']:.0f} | "
              f"{r['linear_p99_us'] / r['p99_us']:.0f}x |")
    print(f"\nlook-up target p99 < 50 µs at 10,000 rules: "
          f"{'met' if lookup['10000']['p99_us'] < 50 else 'NOT met'}\n")
    print(f"| reload of {args.reload_rules:,} rules | wall s | CPU s | "
          "failed look-ups during it | look-ups |")
    print("|---|---|---|---|---|")
    print(f"| compile_plan, in process, every rule read | {statistics.median(compile_s):.2f} | "
          f"{statistics.median(compile_cpu):.2f} | - | - |")
    quiet_s = statistics.median(q["seconds"] for q in quiet)
    quiet_cpu = statistics.median(q["cpu_seconds"] for q in quiet)
    print(f"| running daemon, POST /api/dial-plan/reload, no query meanwhile (CPU: the "
          f"whole daemon) | {quiet_s:.2f} | {quiet_cpu:.2f} | - | - |")
    print(f"| running daemon, POST /api/dial-plan/reload while a client queries (CPU: the "
          f"compile thread) | {reload['seconds']:.2f} | {reload['cpu_seconds']:.2f} | "
          f"{reload['failed']} | {reload['answered']:,} |")
    print("\n(a reload reads again only the partitions whose source changed; the trie is "
          "always rebuilt)")
    print(f"\n(provisioning the partition of {args.reload_rules:,} rules by PUT: "
          f"{provision_s:.2f} s; refused reloads: {reload['refused']})\n")
    print("| node -> feature-server HTTP query | p50 µs | p99 µs | failed |")
    print("|---|---|---|---|")
    print(f"| DialPlanClient, one at a time, {args.queries:,} per run | {trip['p50_us']:.0f} | "
          f"{trip['p99_us']:.0f} | {trip['failed']} |")
    result = {"lookup": lookup, "compile_seconds": statistics.median(compile_s),
              "compile_cpu_seconds": statistics.median(compile_cpu),
              "reload": reload, "quiet_reload": {"seconds": quiet_s, "cpu_seconds": quiet_cpu},
              "provision_seconds": provision_s, "http": trip,
              "targets": {"lookup_p99_us": 50, "reload_seconds": 1.0}}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
