"""SIPp call load on a SIP Server node and the CPU it costs, for the node benchmarks
(bench_node_forward_all.py, bench_prack.py): start a daemon and wait for its health
page, run SIPp callers to a DN and read their statistics, count a process's CPU
seconds, and the medians of several runs (docs/benchmarks.md, TESTING.md
"Benchmarks": CPU per 1,000 calls beside every rate, failures next to it).
"""

from __future__ import annotations

import csv
import os
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
