"""The daemons and SIPp runs of the multi-process test labs (tests/daemons/director,
tests/daemons/sip_server): start a daemon and wait for its log event, read its JSON
log, stop it; run SIPp with its error and statistics files and read them back.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: how long a daemon may take to log its ready event: a loaded machine starts Python slowly
START_TIMEOUT = 45.0


@dataclass
class Proc:
    """One daemon of a lab and its JSON log."""

    name: str
    proc: subprocess.Popen[str]
    log_path: Path

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The log's entries (only those named ``event``); a line still being written
        is left for the next read."""
        text = self.log_path.read_text(errors="replace")
        out = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if event is None or entry.get("event") == event:
                    out.append(entry)
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_daemon(config: Path, kind: str, name: str, log_path: Path, *,
                 wait: str = "daemon_ready", env: Mapping[str, str] | None = None) -> Proc:
    """``daemons.cli kind --name name`` on ``config``, logging JSON to ``log_path``,
    once ``wait`` stands in its log (``env`` is added to this process's environment)."""
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", kind, "--config", str(config),
         "--name", name, "--log-format", "json"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})
    deadline = time.monotonic() + START_TIMEOUT
    while wait not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return Proc(name, proc, log_path)


async def until(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """``check()``'s first true value. It runs off the event loop (it reads logs and asks
    HTTP status pages, which a loaded machine answers slowly), so the T-Library clients
    on the loop go on answering their ADDP probes meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop_all(procs: Iterable[Proc], sipps: Iterable[Sipp]) -> None:
    """Kill the SIPp runs still going, stop the daemons in reverse order, and fail if
    one logged a traceback or ended other than by SIGTERM (0) or SIGKILL."""
    for run in sipps:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    failures = []
    for proc in reversed(list(procs)):
        code = proc.stop()
        text = proc.log_path.read_text()
        if "Traceback" in text:
            failures.append(f"{proc.name}: {text[text.index('Traceback') - 300:][:2000]}")
        elif code not in (0, -signal.SIGKILL):
            failures.append(f"{proc.name} exit {code}: {text[-1500:]}")
    assert not failures, "\n".join(failures)


@dataclass
class Sipp:
    """One SIPp run in a work directory of its own."""

    proc: subprocess.Popen[str]
    workdir: Path
    #: how long ``stats()`` waits for SIPp to end by default
    stats_timeout: float = 60.0

    @classmethod
    def start(cls, sipp_bin: str, workdir: Path, scenario: Path | str, host: str, port: int,
              args: list[str], *, target: str | None = None, calls: int = 1,
              timeout: int = 60, trace_msg: bool = False,
              stats_timeout: float = 60.0) -> Sipp:
        """SIPp on ``scenario`` (a file, or the name of a built-in one) at ``host:port``:
        ``calls`` calls, errors in errors.log, statistics in stat.csv every second."""
        workdir.mkdir()
        scen = ["-sn", scenario] if isinstance(scenario, str) else ["-sf", str(scenario)]
        cmd = [sipp_bin, *([target] if target else []), *scen,
               "-i", host, "-p", str(port), "-m", str(calls), "-nostdin", "-trace_err",
               "-error_file", str(workdir / "errors.log"), "-trace_stat",
               "-stf", str(workdir / "stat.csv"), "-fd", "1",
               *(["-trace_msg"] if trace_msg else []),
               "-timeout", f"{timeout}s", "-timeout_error", *args]
        out = (workdir / "stdout.txt").open("w")
        return cls(subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                    text=True, env={**os.environ, "TERM": "dumb"}), workdir,
                   stats_timeout)

    def stats(self, timeout: float | None = None) -> dict[str, str]:
        """The last statistics row, once SIPp ended (killed after ``timeout`` s)."""
        try:
            self.proc.wait(timeout=self.stats_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        stat = self.workdir / "stat.csv"
        rows = list(csv.DictReader(stat.open(), delimiter=";")) if stat.exists() else []
        return rows[-1] if rows else {}

    def errors(self) -> str:
        path = self.workdir / "errors.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def messages(self) -> str:
        """Every SIP message SIPp sent or received so far (-trace_msg)."""
        found = list(self.workdir.glob("*_messages.log"))
        return found[0].read_text(errors="replace") if found else ""

    def received(self, method: str) -> list[str]:
        """The request lines of the ``method`` requests SIPp received."""
        return [m.split("\r\n", 1)[0] for m in self.received_messages(method)]

    def received_messages(self, method: str) -> list[str]:
        """The ``method`` requests SIPp received, whole (CRLF line ends)."""
        out, text = [], self.messages()
        for block in text.split("----------------------------------------------- ")[1:]:
            # a block: the time, "UDP message received [N] bytes :", a blank line, the message
            head = block.split("\n", 3)
            if len(head) == 4 and "message received" in head[1] \
                    and head[3].startswith(method + " "):
                out.append(head[3].rstrip("\n"))
        return out


@dataclass
class ProcessLab:
    """The daemons and SIPp runs of one test, on one cluster file (``config``)."""

    path: Path
    ports: dict[str, int]
    sipp_bin: str
    free_port: Callable[..., int]
    procs: dict[str, Proc] = field(default_factory=dict)
    sipps: list[Sipp] = field(default_factory=list)
    runs: int = 0

    @property
    def config(self) -> Path:
        return self.path / "cluster.toml"

    def log_path(self, name: str) -> Path:
        """Where daemon ``name`` logs."""
        return self.path / f"{name}.log"

    def daemon_env(self) -> dict[str, str]:
        """What the daemons get in their environment besides this process's."""
        return {"PYTHONUNBUFFERED": "1"}

    def start(self, kind: str, name: str, *, wait: str = "daemon_ready") -> Proc:
        """Daemon ``kind`` named ``name`` on the lab's cluster file, once ``wait`` is logged."""
        p = self.procs[name] = start_daemon(self.config, kind, name, self.log_path(name),
                                            wait=wait, env=self.daemon_env())
        return p

    async def spawn(self, kind: str, name: str, *, wait: str = "daemon_ready") -> Proc:
        """``start`` off the event loop. The test's T-Library clients live on that loop and
        must go on answering their t-controller's ADDP probes while a process starts: on a
        loaded machine that takes longer than the ADDP timeout, and a desktop that does not
        answer is dropped and its agents with it."""
        return await asyncio.to_thread(self.start, kind, name, wait=wait)

    async def until(self, what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
        return await until(what, check, timeout)

    def stop_processes(self) -> None:
        """:func:`stop_all` on this lab's daemons and SIPp runs."""
        stop_all(self.procs.values(), self.sipps)
