"""The director store (docs/director.md, "Director store"): strategies and
skills changed over the HTTP API are checked as the cluster file is (a
strategy naming nothing that exists is refused with the reason), kept in the
store, in force at once and after a restart; the same tests on SQLite and
PostgreSQL. The running director's ``sipcluster director status`` shows them."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemons.director.store import SKILLS, STRATEGY, PostgresStore, SqliteStore, Store
from tests.daemons.director.conftest import ROOT, DirectorLab

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.208."


def cluster(ports: dict[str, int], store: str, extra: str = "") -> str:
    return f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A"]

[dns.5000]
type = "RoutingPoint"
[dns.5001]
type = "RoutingPoint"
[dns.8000]
type = "VirtualQueue"
[dns.8001]
type = "VirtualQueue"

# nodes that are not started: the director serves its HTTP port without them
[applications.SIPS_A]
kind = "sip-server"
host = "{HOST}11"
geo-location = "dc1"
sip-port = {ports["sip"]}
default-port = {ports["default"]}

[applications.TC_A]
kind = "t-controller"
host = "{HOST}11"
sip-server = "SIPS_A"
tc-port = {ports["tc"]}

[applications.Director]
kind = "director"
host = "{HOST}80"
http-port = {ports["http"]}

[applications.Director.options]
store = "{store}"

[applications.Director.options.skills]
a1 = {{ sales = 5 }}
a2 = {{ support = 2 }}

[applications.Director.options.strategies.8000]
routing-points = ["5000"]
skill = "sales"
{extra}"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'director.db'}"
    return str(request.getfixturevalue("postgres_dsn"))


def open_spec(spec: str) -> Store:
    return SqliteStore(spec[len("sqlite:"):]) if spec.startswith("sqlite:") \
        else PostgresStore(spec)


async def test_changes_and_deletions_read_back(store_spec: str) -> None:
    store = open_spec(store_spec)
    await store.open()
    await store.put(STRATEGY, "8001", {"routing-points": ["5001"], "skill": "support"}, 1.0)
    await store.put(STRATEGY, "8000", None, 2.0)  # deleted over the API
    await store.put(SKILLS, "a3", {"support": 4}, 3.0)
    await store.put(SKILLS, "a3", {"support": 1}, 4.0)  # the later change wins
    await store.close()
    again = open_spec(store_spec)
    await again.open()
    try:
        got = await again.load()
    finally:
        await again.close()
    assert dict(got.strategies) == {"8001": {"routing-points": ["5001"], "skill": "support"},
                                    "8000": None}
    assert dict(got.skills) == {"a3": {"support": 1}}


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{HOST}80:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if path != "/metrics" else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_lab(tmp_path: Path, free_port: Callable[..., int], store: str,
              extra: Callable[[dict[str, int]], str] | None = None) -> DirectorLab:
    """The cluster file of one director (``extra``: more of the file, from the ports)."""
    ports = {key: free_port(HOST + "11") for key in ("sip", "default", "tc")}
    for key, host in (("http", "80"), ("site_http", "81"), ("site_port", "81")):
        ports[key] = free_port(HOST + host)
    lab = DirectorLab(tmp_path, ports, "sipp", free_port)
    lab.config.write_text(cluster(ports, store, extra(ports) if extra else ""))
    return lab


async def test_strategies_changed_over_http_are_checked_kept_and_in_force_after_restart(
        tmp_path: Path, free_port: Callable[..., int], store_spec: str) -> None:
    lab = start_lab(tmp_path, free_port, store_spec)
    port = lab.ports["http"]
    try:
        await lab.spawn("director", "Director")
        api = asyncio.to_thread
        # a strategy that names nothing that exists: refused with the reason, nothing kept
        for body, reason in (
                ({"routing-points": ["5077"]}, "5077 is not a DN of the switch"),
                ({"routing-points": ["5000"]}, "already served by virtual queue 8000"),
                ({"routing-points": ["5001"], "skill": "french"}, "no agent has skill 'french'"),
                ({"routing-points": ["5001"], "colour": "red"}, "colour"),
                ({"routing-points": ["5001"], "order": "random"}, "order")):
            code, answer = await api(call, port, "PUT", "/director/strategies/8001", body)
            assert code == 400 and reason in answer["error"], (body, answer)
        code, answer = await api(call, port, "PUT", "/director/strategies/9999",
                                 {"routing-points": ["5001"]})
        assert code == 400 and "9999 is not a DN of the switch" in answer["error"]
        code, answer = await api(call, port, "DELETE", "/director/strategies/8005")
        assert code == 404
        # good changes: a new queue (and a skill it needs), the file's queue deleted
        code, _ = await api(call, port, "PUT", "/director/skills/a3", {"french": 3})
        assert code == 200
        code, answer = await api(call, port, "PUT", "/director/strategies/8001",
                                 {"routing-points": ["5001", "5000"], "skill": "french",
                                  "order": "least-occupied"})
        assert code == 400 and "already served" in answer["error"]  # 8000 still has 5000
        code, _ = await api(call, port, "DELETE", "/director/strategies/8000")
        assert code == 200
        code, answer = await api(call, port, "PUT", "/director/strategies/8001",
                                 {"routing-points": ["5001", "5000"], "skill": "french",
                                  "order": "least-occupied"})
        assert code == 200 and answer["8001"]["order"] == "least-occupied", answer
        # a skill a strategy needs cannot go away under it
        code, answer = await api(call, port, "PUT", "/director/skills/a3", {})
        assert code == 400 and "no agent has skill 'french'" in answer["error"]
        code, status = await api(call, port, "GET", "/status/director")
        assert sorted(status["queues"]) == ["8001"]
        assert status["queues"]["8001"]["skill"] == "french"
        code, metrics = await api(call, port, "GET", "/metrics")
        assert re.search(r'director_api_refused_total\{reason="invalid"\} 8\.0', metrics)

        await asyncio.to_thread(lab.procs.pop("Director").stop)
        await lab.spawn("director", "Director")
        code, strategies = await api(call, port, "GET", "/director/strategies")
        assert sorted(strategies) == ["8001"]
        assert strategies["8001"]["routing-points"] == ["5001", "5000"]
        code, skills = await api(call, port, "GET", "/director/skills")
        assert skills == {"a1": {"sales": 5}, "a2": {"support": 2}, "a3": {"french": 3}}
        # the operators' command reads the running director
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "daemons.cli", "director", "status",
                             "--config", str(lab.config), "--name", "Director"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert re.search(r"^8001 +0 ", out.stdout, re.M), out.stdout
        assert "8000" not in out.stdout
    finally:
        await lab.close()


async def test_an_unusable_store_named_in_the_file_stops_the_start_with_the_reason(
        tmp_path: Path, free_port: Callable[..., int]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    lab = start_lab(tmp_path, free_port, f"sqlite:{blocker / 'director.db'}")
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "daemons.cli", "director", "--config",
                         str(lab.config), "--name", "Director"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "director store sqlite:" in out.stderr and "not-a-dir" in out.stderr, out.stderr
