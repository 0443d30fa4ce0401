"""Starts, watches and stops the lab's daemons as child processes.

Each daemon is a process of its own (as under systemd): started with
``sipcluster KIND --config FILE --name APP``, declared ready when its
``/healthz`` answers 200, stopped with SIGTERM (SIGKILL after a grace period).
Process ids are kept in ``DIR/pids.json`` so that ``lab status`` and ``lab
stop`` work from another shell.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcessSpec:
    """One daemon of the lab: its application name, command line and health URL."""

    name: str
    argv: tuple[str, ...]
    health_url: str | None
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class Supervisor:
    """Child processes of a lab directory."""

    directory: Path
    specs: dict[str, ProcessSpec] = field(default_factory=dict)

    @property
    def pid_file(self) -> Path:
        return self.directory / "pids.json"

    def log_path(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    # -- pid bookkeeping -------------------------------------------------------
    def read_pids(self) -> dict[str, int]:
        try:
            data = json.loads(self.pid_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def _write_pids(self, pids: dict[str, int]) -> None:
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids, indent=2))
        tmp.replace(self.pid_file)

    # -- lifecycle ---------------------------------------------------------------
    def start(self, name: str) -> int:
        spec = self.specs[name]
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(dict(spec.env))
        env.setdefault("PYTHONUNBUFFERED", "1")
        # each daemon's state (stores, voicemail) under the lab directory
        env.setdefault("SIPCLUSTER_STATE_DIR", str(self.directory / "state"))
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                spec.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal reaches the supervisor only
            )
        pids = self.read_pids()
        pids[name] = proc.pid
        self._write_pids(pids)
        return proc.pid

    def start_all(self) -> None:
        for name in self.specs:
            self.start(name)

    def wait_healthy(self, names: list[str] | None = None, timeout: float = 30.0) -> list[str]:
        """Wait until every named daemon answers its health check; return the laggards."""
        pending = list(names if names is not None else self.specs)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if not self.alive(name):
                    raise RuntimeError(
                        f"{name} exited during start; see {self.log_path(name)}:\n"
                        + self.tail_log(name)
                    )
                if self.healthy(name):
                    pending.remove(name)
            if pending:
                time.sleep(0.1)
        return pending

    def healthy(self, name: str) -> bool:
        url = self.specs[name].health_url
        if url is None:
            return self.alive(name)
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def alive(self, name: str) -> bool:
        pid = self.read_pids().get(name)
        if pid is None:
            return False
        try:
            waited, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            waited = 0  # not our child (another shell started it): probe with signal 0
        if waited == pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _not_zombie(pid)

    def stop(self, name: str, *, sig: signal.Signals = signal.SIGTERM, grace: float = 10.0) -> None:
        pids = self.read_pids()
        pid = pids.get(name)
        if pid is None:
            return
        _signal(pid, sig)
        deadline = time.monotonic() + grace
        while self.alive(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive(name):
            _signal(pid, signal.SIGKILL)
            while self.alive(name):
                time.sleep(0.05)
        pids.pop(name, None)
        self._write_pids(pids)

    def kill(self, name: str) -> None:
        """Abrupt failure for drills: SIGKILL, no clean shutdown."""
        self.stop(name, sig=signal.SIGKILL, grace=5.0)

    def stop_all(self) -> None:
        names = list(self.read_pids())
        for name in names:
            pid = self.read_pids().get(name)
            if pid is not None:
                _signal(pid, signal.SIGTERM)
        for name in names:
            self.stop(name)

    def tail_log(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return sys.platform != "linux"
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
