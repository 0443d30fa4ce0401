"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def require_tool(name: str) -> str:
    """Path of a third-party peer (sipp, tshark ...).

    On a developer machine a missing tool skips the test; in CI (``CI=true``)
    it fails it, because `make test` installs every tool the tests need.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


#: ports free_port has handed out in this process: two calls in a row (a phone's SIP
#: and control ports) must not get the same one back from the OS
_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
    """A port that is free right now for both UDP and TCP on ``host``, and that this
    process has not been given before."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (host, port) in _HANDED_OUT:
            continue
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add((host, port))
        return port
    raise RuntimeError("no free port")


@pytest.fixture(name="require_tool")
def _require_tool_fixture() -> object:
    """Fixture form: ``sipp = require_tool("sipp")`` inside a test."""
    return require_tool


@pytest.fixture(name="free_port")
def _free_port_fixture() -> object:
    """Fixture form of :func:`free_port`."""
    return free_port


@pytest.fixture(scope="session")
def postgres_server() -> object:
    """A real PostgreSQL server for this test session (tests/support/postgres.py).

    Missing binaries skip on a developer machine and fail in CI, like any peer.
    """
    from tests.support.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        require_tool("initdb")  # fails in CI, skips elsewhere
    assert bindir is not None
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: object) -> str:
    """The DSN of a fresh, empty database on the session's PostgreSQL server."""
    from tests.support.postgres import PostgresServer

    assert isinstance(postgres_server, PostgresServer)
    return postgres_server.create_database()
