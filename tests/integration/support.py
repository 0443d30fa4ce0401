"""Support for end-to-end tests on the real daemons of ``sipcluster lab``: the
cluster file on test subnets, a running lab, polling of status pages and SIPp
phones. The fixtures that use it live in the conftest.py files of the test
directories; they import it as ``tests.integration.support``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
#: SIPp scenarios shared by the integration tests
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
PROXIES = ("SIPProxy_dc1_1", "SIPProxy_dc1_2", "SIPProxy_dc2_1", "SIPProxy_dc2_2")
#: proxies check the nodes every PROXY_OOS_CHECK s, out of service PROXY_OOS_FORCE s later
PROXY_OOS_CHECK = 1
PROXY_OOS_FORCE = 2
#: nodes check the proxies (SIP Outbound Proxy DN oos-check / oos-force)
NODE_OOS_CHECK = 2
NODE_OOS_FORCE = 1
#: what a status page may raise while a daemon starts, stops or is cut off
TRANSIENT = (urllib.error.URLError, OSError, ValueError, KeyError)


# ====================================================================== cluster file


def _sub_once(pattern: str, repl: str, text: str) -> str:
    text, count = re.subn(pattern, repl, text, flags=re.M | re.S)
    assert count == 1, f"the example cluster file changed shape: {pattern}"
    return text


def generate_cluster_file(
    path: Path, subnets: Mapping[str, str], *,
    node_oos: tuple[int, int] = (NODE_OOS_CHECK, NODE_OOS_FORCE),
    proxy_oos: tuple[int, int] = (PROXY_OOS_CHECK, PROXY_OOS_FORCE),
    options: Mapping[str, int] | None = None,
) -> Path:
    """``deploy/etc/cluster.toml`` with its addresses moved to ``subnets`` (old
    prefix -> new prefix), each of ``options`` (``addp-timeout``, ``wrap-up-time``
    ...) set, the SIP Outbound Proxy DN's oos-check / oos-force (how the nodes
    watch the proxies) set to ``node_oos`` and every proxy's (how it watches
    the nodes) to ``proxy_oos``."""
    text = EXAMPLE_CLUSTER.read_text()
    for old, new in subnets.items():
        text = text.replace(old, new)
    for option, value in (options or {}).items():
        text = _sub_once(rf"^{re.escape(option)} = \d+", f"{option} = {value}", text)
    text = _sub_once(r"(service-type = \"sip-outbound-proxy\".*?)oos-check = \d+\noos-force = \d+",
                     rf"\1oos-check = {node_oos[0]}\noos-force = {node_oos[1]}", text)
    text = re.sub(r"(?ms)^\[applications\.[^\]]+\.sipproxy\]\n.*?(?=^\[|\Z)", "", text)
    for name in PROXIES:
        text += (f"\n[applications.{name}.sipproxy]\noos-check = {proxy_oos[0]}\n"
                 f"oos-force = {proxy_oos[1]}\n")
    path.write_text(text)
    return path


# ====================================================================== status pages


def http_json(host: str, port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read().decode())


def poll(check: Callable[[], Any]) -> Any:
    """``check()``, or None when a status page is not there (yet)."""
    try:
        return check()
    except TRANSIENT:
        return None


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = poll(check)
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {what} (last: {last!r})")


async def until(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (in a thread: it may do HTTP) until it returns something true."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(poll, check)
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {what} (last: {last!r})")


# =============================================================================== lab


@dataclass
class LabDescription:
    """A ``sipcluster lab`` run: its directory and what its lab.json says."""

    directory: Path
    desc: dict[str, Any]

    @property
    def dns(self) -> tuple[str, int]:
        return self.desc["dns"]["host"], int(self.desc["dns"]["port"])

    @property
    def domain(self) -> str:
        return str(self.desc["domain"])

    @property
    def srv_fqdn(self) -> str:
        return str(self.desc["srv_fqdn"])

    def password(self, dn: str) -> str:
        for account in self.desc["accounts"]:
            if account["dn"] == dn:
                return str(account["password"])
        raise KeyError(dn)

    def log(self, name: str) -> str:
        path = self.directory / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class ClusterLab(LabDescription):
    """A lab that the tests start, stop and drive with ``sipcluster lab``."""

    def command(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemons.cli", "lab", *args, "--dir",
                               str(self.directory)], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def nodes(self, geo: str | None = None) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for g, c in self.desc["data_centres"].items() if geo in (None, g)
                for n in c["nodes"]}

    def proxies(self, geo: str | None = None) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for g, c in self.desc["data_centres"].items() if geo in (None, g)
                for p in c["proxies"]}

    def binding(self, proxy: str, dn: str) -> dict[str, Any] | None:
        """The live binding of ``dn`` in ``proxy``'s replicated registrar."""
        p = self.proxies()[proxy]
        regs = http_json(p["host"], p["http_port"], "/status/registrations")
        aor = f"sip:{dn}@{self.domain}"
        for b in regs["bindings"]:
            if b.get("aor") in (aor, f"{dn}@{self.domain}"):
                return dict(b)
        return None


LabT = TypeVar("LabT", bound=ClusterLab)


def running_lab(lab: LabT, config: Path) -> Iterator[LabT]:
    """Start ``lab`` from the cluster file ``config`` and yield it once it runs
    (its lab.json read); stop it in any case. For a fixture: ``yield from``."""
    try:
        started = lab.command("start", "--config", str(config), "--timeout", "60", timeout=120)
        if started.returncode != 0:
            pytest.fail(f"lab did not start:\n{started.stdout}\n{started.stderr}")
        lab.desc = json.loads((lab.directory / "lab.json").read_text())
        yield lab
    finally:
        lab.command("stop")


# ============================================================================ phones


@dataclass
class SippRun:
    """One SIPp process and its working directory (its output and logs)."""

    proc: subprocess.Popen[str]
    workdir: Path

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def output(self) -> str:
        parts = []
        for name in ("stdout.txt", "errors.log", "messages.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def check(self, timeout: float = 30) -> str:
        """Wait for the end, fail the test unless SIPp succeeded; the message log."""
        code = self.wait(timeout)
        assert code == 0, f"sipp exited {code}\n{self.output()}"
        path = self.workdir / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""


RunT = TypeVar("RunT", bound=SippRun)


class SippPhones(Generic[RunT]):
    """Starts SIPp processes bound to data centre addresses (as ``run_type``);
    :meth:`stop` kills those still running."""

    run_type: type[RunT]

    def __init__(self, lab: ClusterLab, sipp: str, tmp: Path,
                 free_port: Callable[..., int]) -> None:
        self.lab = lab
        self.sipp = sipp
        self.tmp = tmp
        self.free_port = free_port
        self.runs: list[RunT] = []

    def run(self, scenario: Path, address: str, port: int, target: tuple[str, int],
            service: str, *args: str, timeout: int = 20) -> RunT:
        """SIPp plays ``scenario`` once from ``address``:``port`` to ``target``."""
        workdir = self.tmp / f"sipp-{len(self.runs)}-{scenario.stem}-{service}"
        workdir.mkdir()
        cmd = [self.sipp, f"{target[0]}:{target[1]}", "-sf", str(scenario),
               "-i", address, "-p", str(port), "-mi", address,
               "-mp", str(self.free_port(address)), "-s", service, "-t", "u1", "-m", "1",
               "-nostdin", "-trace_err", "-error_file", str(workdir / "errors.log"),
               "-trace_logs", "-log_file", str(workdir / "messages.log"),
               "-timeout", f"{timeout}s", "-timeout_error", "-set", "domain", self.lab.domain,
               *args]
        out = (workdir / "stdout.txt").open("w")
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "TERM": "dumb"})
        run = self.run_type(proc, workdir)
        self.runs.append(run)
        return run

    def stop(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


PhonesT = TypeVar("PhonesT", bound=SippPhones[Any])


def phones_fixture(phones_type: type[PhonesT], lab_fixture: str) -> Any:
    """A ``phones`` fixture: ``phones_type`` on the lab of fixture ``lab_fixture``
    (looked up only once SIPp is found: a missing SIPp skips, or fails in CI,
    before the lab starts); what is still running at the end is killed."""

    @pytest.fixture
    def phones(require_tool: Any, tmp_path: Path, free_port: Callable[..., int],
               request: pytest.FixtureRequest) -> Iterator[PhonesT]:
        """SIPp phones on the lab; those still running at the end are killed."""
        sipp = require_tool("sipp")
        factory = phones_type(request.getfixturevalue(lab_fixture), sipp, tmp_path, free_port)
        yield factory
        factory.stop()

    return phones
