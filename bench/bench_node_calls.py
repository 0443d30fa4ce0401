"""Call setups per second through one cluster node (sip-server as B2BUA).

SIPp UAC (built-in ``uac``: INVITE, ACK, BYE) -> sip-server -> SIPp UAS
(built-in ``uas``, registered as DN 2002) while a reporting client on IPport
counts every call event (3 per call on DN 2002: EventRinging,
EventEstablished, EventReleased). Three runs; prints the median rate, SIPp
failures, events missing at the monitor and the sip-server's CPU seconds
per 1,000 calls (psutil). Last line: ``RESULT {json}``.

    .venv/bin/python bench/bench_node_calls.py [--calls 3000] [--rate 320] [--runs 3] [--profile F]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemons.runtime.tlib_client import TLibClient  # noqa: E402

HOST = "127.0.0.1"
SCENARIOS = ROOT / "tests" / "interop" / "scenarios"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_cluster(path: Path, ports: dict[str, int]) -> None:
    path.write_text(f"""
[switch]
name = "Bench"
domain = "bench.test"

[switch.tserver]
extn-no-answer-timeout = 10

[dns.Nodes]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_B"]

[dns.2002]
type = "Extension"
contact = "*"
password = "bench-2002-pw"

[applications.SIPS_B]
kind = "sip-server"
host = "{HOST}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}
ip-port = {ports['ip']}
http-port = {ports['http']}

[applications.TC_B]
kind = "t-controller"
host = "{HOST}"
sip-server = "SIPS_B"
tc-port = {ports['tc']}
""")


def sipp(args: list[str], workdir: Path) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["sipp", *args, "-i", HOST, "-nostdin", "-trace_stat", "-stf",
         str(workdir / "stat.csv"), "-fd", "1", "-trace_err", "-error_file",
         str(workdir / "errors.log")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TERM": "dumb"})


def stats(workdir: Path) -> dict[str, str]:
    rows = list(csv.DictReader((workdir / "stat.csv").open(), delimiter=";"))
    return rows[-1] if rows else {}


async def one_run(ports: dict[str, int], node: psutil.Process, calls: int, rate: int,
                  workdir: Path, index: int) -> dict[str, Any]:
    uas_port = free_port()
    reg = sipp([f"{HOST}:{ports['sip']}", "-sf", str(SCENARIOS / "register_auth.xml"),
                "-s", "2002", "-au", "2002", "-ap", "bench-2002-pw", "-m", "1",
                "-p", str(uas_port)], workdir / f"reg{index}")
    reg.wait(timeout=20)
    uas = sipp(["-sn", "uas", "-p", str(uas_port), "-m", str(calls)], workdir / f"uas{index}")
    counted = 0
    client = await TLibClient.connect(HOST, ports["ip"], f"bench-monitor-{index}")

    def count(event: dict[str, Any]) -> None:
        nonlocal counted
        if event.get("AttributeConnID"):
            counted += 1
    client.add_listener(count)
    await asyncio.sleep(0.3)
    cpu0 = sum(node.cpu_times()[:2])
    started = time.monotonic()
    uac = sipp([f"{HOST}:{ports['sip']}", "-sn", "uac", "-s", "2002", "-m", str(calls),
                "-r", str(rate), "-d", "0", "-l", str(rate * 2), "-p", str(free_port())],
               workdir / f"uac{index}")
    await asyncio.to_thread(uac.wait, 300)
    elapsed = time.monotonic() - started
    cpu = sum(node.cpu_times()[:2]) - cpu0
    try:
        await asyncio.to_thread(uas.wait, 60)
    except subprocess.TimeoutExpired:
        uas.kill()  # calls the UAS still waits for failed upstream: counted as failures
    deadline = time.monotonic() + 10
    while counted < 3 * calls and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await client.close()
    st = stats(workdir / f"uac{index}")
    ok = int(st.get("SuccessfulCall(C)", "0"))
    failed = int(st.get("FailedCall(C)", "0")) + (calls - ok - int(st.get("FailedCall(C)", "0")))
    return {"rate": ok / elapsed, "elapsed": elapsed, "successful": ok, "failed": failed,
            "events": counted, "events_missing": 3 * ok - counted,
            "cpu_per_1000": 1000 * cpu / max(ok, 1)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-"))
    ports = {name: free_port() for name in ("sip", "default", "ip", "http", "tc")}
    config = tmp / "cluster.toml"
    write_cluster(config, ports)
    log = (tmp / "sip-server.log").open("w")
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    proc = subprocess.Popen(  # noqa: ASYNC220 - the node runs for the whole benchmark
        [sys.executable, *profile, "-m", "daemons.cli", "sip-server", "--config", str(config),
         "--name", "SIPS_B", "--log-format", "json", "--log-level", "warning"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection((HOST, ports["default"]), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("sip-server did not start") from None
                await asyncio.sleep(0.1)
        node = psutil.Process(proc.pid)
        runs = []
        for i in range(args.runs):
            run = await one_run(ports, node, args.calls, args.rate, tmp, i)
            print(f"run {i + 1}: {run['rate']:.1f} calls/s, {run['successful']} ok, "
                  f"{run['failed']} failed, {run['events_missing']} events missing, "
                  f"{run['cpu_per_1000']:.2f} CPU s / 1000 calls", flush=True)
            runs.append(run)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    return {
        "calls_per_run": args.calls, "offered_rate": args.rate,
        "median_calls_per_s": round(statistics.median(r["rate"] for r in runs), 1),
        "failed_calls": sum(r["failed"] for r in runs),
        "events_missing": sum(r["events_missing"] for r in runs),
        "cpu_s_per_1000_calls": round(statistics.median(r["cpu_per_1000"] for r in runs), 3),
        "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                 for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=320, help="offered calls/s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", metavar="FILE",
                        help="run the sip-server under cProfile, statistics to FILE")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print("| median calls/s | failed calls | IPport events missing | CPU s / 1000 calls |")
    print("|---|---|---|---|")
    print(f"| {result['median_calls_per_s']} | {result['failed_calls']} | "
          f"{result['events_missing']} | {result['cpu_s_per_1000_calls']} |")
    print("RESULT " + json.dumps(result))
    return 0 if result["failed_calls"] == 0 and result["events_missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
