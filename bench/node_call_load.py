"""SIPp call load on a SIP Server node and the CPU it costs, for the node benchmarks
(bench_node_forward_all.py, bench_prack.py): start a daemon and wait for its health
page, run SIPp callers to a DN and read their statistics, count a process's CPU
seconds, and the medians of several runs (docs/benchmarks.md, TESTING.md
"Benchmarks": CPU per 1,000 calls beside every rate, failures next to it).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]


def load_arguments(doc: str | None, calls: int, rate: int) -> argparse.Namespace:
    """``--calls``, ``--rate`` (offered calls/s) and ``--runs``, with these defaults."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=calls)
    parser.add_argument("--rate", type=int, default=rate, help="offered calls/s")
    parser.add_argument("--runs", type=int, default=3)
    return parser.parse_args()


def find_sipp() -> str | None:
    """SIPp's path; None (said on stdout) when it is not installed."""
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (apt-get install sip-tester)")
    return sipp


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start(kind: str, config: Path, name: str, health: str, log: Path) -> subprocess.Popen[bytes]:
    """``daemons.cli kind --name name`` on ``config`` (warnings to ``log``), once its
    ``health`` page answers 200."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", kind, "--config", str(config), "--name", name,
         "--log-level", "warning"],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")


def stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each daemon still running; kill one that does not end within 10 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def cpu(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` so far."""
    t = proc.cpu_times()
    return float(t.user + t.system)


def run_sipp(sipp: str, target: str, scenario: list[str], dn: str, caller: str, calls: int,
             rate: int, workdir: Path) -> dict[str, str]:
    """``calls`` calls at ``rate``/s from ``caller`` to ``dn`` at ``target`` (at most 200
    at once), SIPp's ``scenario`` arguments; the last row of its statistics."""
    workdir.mkdir()
    subprocess.run(
        [sipp, target, *scenario, "-s", dn, "-i", caller,
         "-p", str(free_port(caller)), "-m", str(calls), "-r", str(rate),
         "-l", "200", "-nostdin", "-trace_stat", "-stf", str(workdir / "stat.csv"),
         "-fd", "1", "-timeout", "120s", "-timeout_error"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180,
        env={**os.environ, "TERM": "dumb"})
    rows = list(csv.DictReader((workdir / "stat.csv").open(), delimiter=";"))
    return rows[-1] if rows else {}


def elapsed(row: dict[str, str]) -> float:
    h, m, s = row.get("ElapsedTime(C)", "0:0:0").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def call_figures(row: dict[str, str]) -> tuple[int, dict[str, float]]:
    """The successful calls of a SIPp run, and its rate, failed calls and retransmissions."""
    ok = int(row.get("SuccessfulCall(C)", 0))
    return ok, {"rate": ok / max(elapsed(row), 1e-9),
                "failed": int(row.get("FailedCall(C)", 0)),
                "retransmissions": int(row.get("Retransmissions(C)", 0))}


def medians(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure's median over the runs, and ``failed_total``: the failed calls of all."""
    out: dict[str, Any] = {key: round(statistics.median(r[key] for r in runs), 3)
                           for key in runs[0]}
    out["failed_total"] = sum(int(r["failed"]) for r in runs)
    return out


def node_cluster(node: str, host: str, ports: dict[str, int],
                 extensions: dict[str, str]) -> str:
    """The cluster file's text for one node ``SIPS_<node>`` at ``host`` (its
    t-controller ``TC_<node>`` named, not started): ``ports`` has its ``sip``,
    ``default``, ``http`` and ``tc`` ports, ``extensions`` maps each DN to its contact."""
    text = f"""
[switch]
name = "Bench"
domain = "bench.test"

[switch.tserver]
extn-no-answer-timeout = 10
sip-enable-strict-auth = false

[dns.Nodes]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_{node}"]
"""
    for dn, contact in extensions.items():
        text += f"""
[dns.{dn}]
type = "Extension"
contact = "{contact}"
"""
    return text + node_applications(node, host, ports)


def node_applications(node: str, host: str, ports: dict[str, int]) -> str:
    """The ``SIPS_<node>`` and ``TC_<node>`` entries of a cluster file at ``host``:
    ``ports`` has ``sip``, ``default``, ``http`` and ``tc``, and may have ``ip``
    (IPport), ``sp`` (Smart Proxy port) and ``tc_http`` (the t-controller's HTTP)."""
    ip = f"ip-port = {ports['ip']}\n" if "ip" in ports else ""
    sp = f"smart-proxy-port = {ports['sp']}\n" if "sp" in ports else ""
    tc_http = f"http-port = {ports['tc_http']}\n" if "tc_http" in ports else ""
    return f"""
[applications.SIPS_{node}]
kind = "sip-server"
host = "{host}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}
{ip}http-port = {ports['http']}

[applications.TC_{node}]
kind = "t-controller"
host = "{host}"
sip-server = "SIPS_{node}"
tc-port = {ports['tc']}
{sp}{tc_http}"""


def summarize(calls: int, rate: int, results: dict[str, list[dict[str, float]]]
              ) -> dict[str, Any]:
    """The RESULT object: the load offered, and each flow's :func:`medians`."""
    runs = len(next(iter(results.values()), []))
    summary: dict[str, Any] = {"calls": calls, "rate_offered": rate, "runs": runs}
    for flow, figures in results.items():
        summary[flow] = medians(figures)
    return summary


def cpu_ratio(summary: dict[str, Any], flow: str, base: str = "plain") -> float:
    """The node's CPU per call in ``flow`` over that in ``base`` (same run)."""
    return round(summary[flow]["node_cpu_per_1000"]
                 / max(summary[base]["node_cpu_per_1000"], 1e-9), 2)


def flow_line(flow: str, s: dict[str, Any]) -> str:
    """One flow's medians: rate, failed calls, retransmissions, node CPU per 1,000 calls."""
    return (f"{flow:6} median {s['rate']:.1f} calls/s, failed {s['failed_total']}, "
            f"retransmissions {s['retransmissions']:.0f}, node CPU "
            f"{s['node_cpu_per_1000']:.2f} s / 1000 calls")
