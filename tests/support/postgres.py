"""A real PostgreSQL server for the tests of stores shared by several hosts.

:class:`PostgresServer` runs Debian's PostgreSQL binaries (``initdb`` and
``postgres`` from ``/usr/lib/postgresql/N/bin``, package ``postgresql``, which
``make test`` installs) on a data directory of its own, listening on
127.0.0.1 and a free port, with trust authentication for the test role. As
root (CI containers) the server runs as the ``postgres`` user the package
creates, because PostgreSQL refuses to run as root.

Fixtures (``tests/conftest.py``): ``postgres_server`` (one per session) and
``postgres_dsn`` (a fresh database per test).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def find_bindir() -> str | None:
    """Directory of the newest installed PostgreSQL server binaries, or None."""
    def version(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return str(Path(candidates[-1]).parent)
    found = shutil.which("initdb")
    return str(Path(found).parent) if found else None


def _free_tcp_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throw-away PostgreSQL cluster: ``start()``, ``create_database()``, ``stop()``."""

    def __init__(self, bindir: str, *, host: str = "127.0.0.1", user: str = "sipcluster") -> None:
        self.bindir = bindir
        self.host = host
        self.user = user
        self.port = _free_tcp_port(host)
        self.root = Path(tempfile.mkdtemp(prefix="sipcluster-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, *argv: str) -> list[str]:
        if self._run_as is None:
            return list(argv)
        return ["runuser", "-u", self._run_as, "--", *argv]

    def start(self, timeout: float = 30.0) -> None:
        if self._run_as is not None:
            pw = pwd.getpwnam(self._run_as)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._cmd(f"{self.bindir}/initdb", "-D", str(self.data), "-U", self.user,
                      "--auth=trust", "-E", "UTF8", "--no-sync"),
            check=True, capture_output=True,
        )
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self._cmd(f"{self.bindir}/postgres", "-D", str(self.data), "-p", str(self.port),
                      "-k", str(self.root), "-c", f"listen_addresses={self.host}",
                      "-c", "fsync=off", "-c", "max_connections=200"),
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            ready = subprocess.run(
                [f"{self.bindir}/pg_isready", "-h", self.host, "-p", str(self.port),
                 "-U", self.user],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres not ready in {timeout}s: {self.log_path.read_text()[-2000:]}")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; its DSN."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        subprocess.run(
            [f"{self.bindir}/psql", "-h", self.host, "-p", str(self.port), "-U", self.user,
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True,
        )
        return self.dsn(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: "smart" shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
