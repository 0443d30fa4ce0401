"""Fixtures for interop tests against real peers: our responder daemon, SIPp runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


@dataclass
class Responder:
    """A running ``sipcluster sip responder`` process."""

    proc: subprocess.Popen[str]
    port: int
    log_path: Path

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events


@dataclass
class SippResult:
    returncode: int
    stats: dict[str, str]
    errors: str
    output: str

    @property
    def successful(self) -> int:
        return int(self.stats.get("SuccessfulCall(C)", "0"))

    @property
    def failed(self) -> int:
        return int(self.stats.get("FailedCall(C)", "-1"))


def _start_responder(port: int, extra: list[str], tmp: Path) -> Responder:
    log_path = tmp / f"responder-{port}.log"
    log = log_path.open("w")
    cmd = [sys.executable, "-m", "daemons.cli", "sip", "responder",
           "--listen", f"127.0.0.1:{port}", "--log-format", "json", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    # a loaded machine (CI runs two suites at once) starts Python slowly
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if "daemon_ready" in log_path.read_text():
            return Responder(proc, port, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"responder did not start:\n{log_path.read_text()}")


@pytest.fixture
def responder(free_port: object, tmp_path: Path) -> Iterator[object]:
    """Factory: ``responder("--tcp", "--user", "1001:pw")`` -> :class:`Responder`.

    Every responder is stopped with SIGTERM at teardown and must exit 0.
    """
    started: list[Responder] = []

    def start(*extra: str) -> Responder:
        port = free_port("127.0.0.1")  # type: ignore[operator]
        r = _start_responder(port, list(extra), tmp_path)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
        try:
            code = r.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            pytest.fail(f"responder did not stop on SIGTERM in 10 s:\n"
                        f"{r.log_path.read_text()[-3000:]}")
        assert code == 0, r.log_path.read_text()[-3000:]


def run_sipp(
    sipp: str,
    args: list[str],
    workdir: Path,
    *,
    timeout: float = 20.0,
) -> SippResult:
    """Run SIPp to completion with traces in ``workdir``; never hangs (-timeout, kill)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stat = workdir / "stat.csv"
    err = workdir / "errors.log"
    cmd = [sipp, *args, "-nostdin", "-trace_err", "-error_file", str(err),
           "-trace_stat", "-stf", str(stat), "-fd", "1",
           "-timeout", f"{int(timeout)}s", "-timeout_error"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True,
                          timeout=timeout + 10, env={**os.environ, "TERM": "dumb"})
    stats: dict[str, str] = {}
    if stat.exists():
        rows = list(csv.DictReader(stat.open(), delimiter=";"))
        if rows:
            stats = rows[-1]
    errors = err.read_text(errors="replace") if err.exists() else ""
    return SippResult(proc.returncode, stats, errors, proc.stdout[-4000:] + proc.stderr[-2000:])


@pytest.fixture
def sipp(require_tool: object) -> str:
    return require_tool("sipp")  # type: ignore[operator,no-any-return]


@pytest.fixture
def scenarios() -> Path:
    return SCENARIOS


@pytest.fixture
def sipp_run() -> object:
    """Fixture form of :func:`run_sipp`."""
    return run_sipp


@pytest.fixture
def repo_root() -> Path:
    return ROOT
