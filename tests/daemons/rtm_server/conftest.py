"""Real processes for the rtm-server's tests: hubs (``sipcluster rtm-server``)
and sites (``sipcluster rtm listen``, durable handlers that also send a
numbered drill load), on 127.0.120.x-127.0.129.x.

The senders' log is each site's ``sent`` table (written in the outbox's
transaction); the handlers' journal is its ``journal`` table. :func:`verify`
compares them: for every (origin, destination) pair the numbers handled are
exactly the numbers sent, once each, in the order sent.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]

PASSWORDS = {1: "Boca-Secret", 2: "Indy-Secret", 3: "Lyon-Secret", 4: "Oslo-Secret"}

_NODE = """
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A"]

[applications.SIPS_A]
kind = "sip-server"
host = "127.0.129.250"
sip-port = 5060
default-port = 7000
geo-location = "dc1"

[applications.TC_A]
kind = "t-controller"
host = "127.0.129.250"
sip-server = "SIPS_A"
tc-port = 7100
geo-location = "dc1"
"""


@dataclass
class HubSpec:
    name: str
    host: str
    rtm_port: int
    http_port: int


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_cluster(path: Path, hubs: list[HubSpec], options: dict[str, Any],
                  sites: dict[int, str] | None = None) -> Path:
    text = _NODE
    for i, hub in enumerate(hubs):
        text += f"""
[applications.{hub.name}]
kind = "rtm-server"
host = "{hub.host}"
rtm-port = {hub.rtm_port}
http-port = {hub.http_port}
"""
        text += f"\n[applications.{hub.name}.options]\n"
        if len(hubs) == 2:
            text += f'pair = "{hubs[1 - i].name}"\n'

        for key, value in options.items():
            text += f"{key} = {_toml(value)}\n"
        text += f"\n[applications.{hub.name}.options.sites]\n"
        for site, password in (sites or PASSWORDS).items():
            text += f"{site} = {_toml(password)}\n"
    path.write_text(text)
    return path


def hub_spec(name: str, host: str) -> HubSpec:
    return HubSpec(name, host, free_port(host), free_port(host))


@dataclass
class Proc:
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill9(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()


class Hub(Proc):
    def __init__(self, config: Path, spec: HubSpec, log: Path) -> None:
        super().__init__([sys.executable, "-m", "daemons.cli", "rtm-server", "--config",
                          str(config), "--name", spec.name, "--log-format", "json"], log)
        self.spec = spec

    def http(self, path: str) -> tuple[int, bytes]:
        url = f"http://{self.spec.host}:{self.spec.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def role(self) -> str | None:
        try:
            _, body = self.http("/healthz")
        except OSError:
            return None
        return str(json.loads(body)["checks"]["hub"]["role"])

    def wait_role(self, role: str, timeout: float = 60.0) -> float:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"hub exited: {self.log.read_text()[-3000:]}")
            if self.role() == role:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"hub not {role} in {timeout}s: {self.log.read_text()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.http("/metrics")
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                         if labels else "")
        for line in body.decode().splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


class Site(Proc):
    def __init__(self, site: int, state: Path, hubs: list[tuple[str, int]], log: Path, *,
                 send_to: list[str] = (), count: int = 0, request_every: int = 0,
                 timeout_ms: int = 0, rate: float = 0.0, respond: bool = True,
                 handler: str | None = None) -> None:
        self.site = site
        self.handler = handler or f"site{site}"
        self.db = state / f"{self.handler}.db"
        argv = [sys.executable, "-m", "daemons.cli", "rtm", "listen", "--site", str(site),
                "--handler", self.handler, "--state", str(state), "--quiet",
                "--log-level", "info"]
        for host, port in hubs:
            argv += ["--hub", f"{host}:{port}"]
        for dest in send_to:
            argv += ["--send-to", dest]
        if send_to:
            argv += ["--count", str(count), "--request-every", str(request_every),
                     "--timeout-ms", str(timeout_ms), "--rate", str(rate)]
        if respond:
            argv.append("--respond")
        super().__init__(argv, log, env={"SIPCLUSTER_RTM_PASSWORD": PASSWORDS[site]})

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        db = sqlite3.connect(self.db, timeout=5)
        try:
            return list(db.execute(sql))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            db.close()

    def sent(self) -> list[tuple[int, str, str, int]]:
        """(seq, kind, dest, n) of every message this site sent, in order."""
        return [(seq, kind, dest, msgpack.unpackb(el)[0][1]) for seq, kind, dest, el in
                self.query("SELECT seq, kind, dest, elements FROM sent ORDER BY seq")]

    def journal(self) -> list[tuple[int, int, str, int, int]]:
        """(id, origin, kind, n or -1, in_reply_to) of every delivery handled, in order."""
        out = []
        for id_, origin, kind, el, irt in self.query(
                "SELECT id, origin, kind, elements, in_reply_to FROM journal ORDER BY id"):
            elements = msgpack.unpackb(el)
            out.append((id_, origin, kind, elements[0][1] if elements else -1, irt))
        return out

    def outbox(self) -> int:
        rows = self.query("SELECT count(*) FROM outbox")
        return int(rows[0][0]) if rows else -1


def expected_pairs(sites: list[Site]) -> dict[tuple[int, int], list[tuple[str, int]]]:
    """(origin, dest) -> [(kind, n)] in the order sent."""
    ids = [s.site for s in sites]
    expected: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for s in sites:
        for _, kind, dest, n in s.sent():
            targets = [d for d in ids if d != s.site] if dest == "*" else [int(dest)]
            for d in targets:
                expected[(s.site, d)].append((kind, n))
    return expected


def handled_pairs(sites: list[Site]) -> dict[tuple[int, int], list[tuple[str, int]]]:
    got: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for s in sites:
        for _, origin, kind, n, _ in s.journal():
            if kind in ("event", "request"):
                got[(origin, s.site)].append((kind, n))
    return got


@dataclass
class Verdict:
    expected: int
    handled: int
    missing: int
    duplicates: int
    out_of_order: list[tuple[int, int]]
    requests: int
    answered: int
    answered_twice: int


def verify(sites: list[Site]) -> Verdict:
    expected = expected_pairs(sites)
    got = handled_pairs(sites)
    missing = duplicates = 0
    disorder = []
    for pair in set(expected) | set(got):
        want, have = expected.get(pair, []), got.get(pair, [])
        missing += len(set(want) - set(have))
        duplicates += len(have) - len(set(have))
        if have != want and not (set(want) - set(have)) and len(have) == len(set(have)):
            disorder.append(pair)
    requests = answered = twice = 0
    for s in sites:
        asked = {seq for seq, kind, _, _ in s.sent() if kind == "request"}
        replies = [irt for _, _, kind, _, irt in s.journal() if kind in ("response", "timeout")]
        requests += len(asked)
        answered += len(asked & set(replies))
        twice += len(replies) - len(set(replies))
    return Verdict(sum(len(v) for v in expected.values()), sum(len(v) for v in got.values()),
                   missing, duplicates, disorder, requests, answered, twice)


def wait_for(condition: Any, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop(timeout=5)


async def until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` from a coroutine until it holds (AssertionError after ``timeout``)."""
    import asyncio

    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
