"""Real processes for the node's routing tests: two cluster nodes (sip-server +
t-controller) in two data centres, DC1 = 127.0.220.x and DC2 = 127.0.221.x,
optionally a feature-server (127.0.222.31) and a PSTN gateway (SIPp's UAS on
127.0.223.40) behind a trunk; SIPp agents' phones (fixed contacts, every
message they get traced), SIPp callers, T-Library desktops and routers.

Agent DNs are owned by the node whose t-controller their desktop registered
them on (T-Library-based ownership, ``dn-owner-applications``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient

ROOT = Path(__file__).resolve().parents[3]
INTEROP = ROOT / "tests" / "interop" / "scenarios"
INTEGRATION = ROOT / "tests" / "integration" / "scenarios"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
DC = {"dc1": "127.0.220.", "dc2": "127.0.221."}
NODE_HOST = {"A": DC["dc1"] + "11", "C": DC["dc2"] + "11"}
FS_HOST = "127.0.222.31"
GATEWAY_HOST = "127.0.223.40"
CALLER_HOST = DC["dc1"] + "200"
#: agent DN -> (AgentID, data centre)
AGENTS = {"1001": ("a1001", "dc1"), "1002": ("a1002", "dc1"), "1003": ("a1003", "dc2")}


def agent_host(dn: str) -> str:
    return DC[AGENTS[dn][1]] + str(100 + int(dn[-2:]))


def cluster_text(ports: dict[str, int], *, router_timeout: float, tserver: str,
                 feature_server: str | None, extra: str) -> str:
    text = f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[switch.tserver]
router-timeout = {router_timeout}
extn-no-answer-timeout = 5
request-collection-time = 0.2
wrap-up-time = 0
logout-on-disconnect = false
sip-enable-strict-auth = false
{tserver}

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A", "SIPS_C"]
dn-owner-applications = ["Cluster"]
addp-timeout = 2
addp-remote-timeout = 3
tc-reconnect-timeout = 1

[dns.5000]
type = "RoutingPoint"

[dns.Trunk_PSTN]
type = "Trunk"
contact = "{GATEWAY_HOST}:{ports['gateway']}"
geo-location = "dc1"
prefix = "+"
"""
    for dn in AGENTS:
        text += (f'\n[dns.{dn}]\ntype = "Extension"\n'
                 f'contact = "sip:{dn}@{agent_host(dn)}:{ports[f"phone_{dn}"]}"\n')
    for n, geo in (("A", "dc1"), ("C", "dc2")):
        text += f"""
[applications.SIPS_{n}]
kind = "sip-server"
host = "{NODE_HOST[n]}"
geo-location = "{geo}"
sip-port = {ports[f"sip_{n}"]}
default-port = {ports[f"default_{n}"]}
http-port = {ports[f"http_{n}"]}

[applications.TC_{n}]
kind = "t-controller"
host = "{NODE_HOST[n]}"
sip-server = "SIPS_{n}"
tc-port = {ports[f"tc_{n}"]}
http-port = {ports[f"tchttp_{n}"]}
"""
    if feature_server is not None:
        text += f"""
[dns.DialPlan_dc1]
type = "VoIPService"
service-type = "feature-server"
url = "http://{FS_HOST}:{ports['fs']}/dialplan"
geo-location = "dc1"

[applications.FS_dc1]
kind = "feature-server"
host = "{FS_HOST}"
geo-location = "dc1"
http-port = {ports['fs']}

[applications.FS_dc1.options]
state-dir = "{{state}}"
{feature_server}
"""
    return text + extra


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[str]
    log_path: Path

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        text = self.log_path.read_text(errors="replace")
        out = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if event is None or entry.get("event") == event:
                    out.append(entry)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class Sipp:
    proc: subprocess.Popen[str]
    workdir: Path

    def stats(self, timeout: float = 30.0) -> dict[str, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        stat = self.workdir / "stat.csv"
        rows = list(csv.DictReader(stat.open(), delimiter=";")) if stat.exists() else []
        return rows[-1] if rows else {}

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

    def errors(self) -> str:
        path = self.workdir / "errors.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass
class Client:
    """A T-Library client (a desktop on a t-controller, a router on a node) and
    every event it got."""

    client: TLibClient
    events: list[dict[str, Any]] = field(default_factory=list)

    def record(self, event: dict[str, Any]) -> None:
        self.events.append(dict(event))

    async def request(self, name: str, **attributes: Any) -> dict[str, Any]:
        async with asyncio.timeout(10):
            return dict(await self.client.request(name, attributes))

    def of(self, name: str, dn: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("message") == name
                and (dn is None or e.get("AttributeThisDN") == dn)]


@dataclass
class NodeLab:
    """The running processes of one test, and what the tests ask of them."""

    path: Path
    ports: dict[str, int]
    sipp_bin: str
    free_port: Callable[..., int]
    procs: dict[str, Proc] = field(default_factory=dict)
    sipps: list[Sipp] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    runs: int = 0

    @property
    def config(self) -> Path:
        return self.path / "cluster.toml"

    def start(self, kind: str, name: str, *, wait: str = "daemon_ready") -> Proc:
        log_path = self.path / f"{name}.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemons.cli", kind, "--config", str(self.config),
             "--name", name, "--log-format", "json"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 45  # a loaded machine starts Python slowly
        while wait not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        p = self.procs[name] = Proc(name, proc, log_path)
        return p

    def node(self, n: str) -> Proc:
        return self.procs[f"SIPS_{n}"]

    async def until(self, what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def sipp(self, scenario: Path | str, host: str, port: int, args: list[str], *,
             target: str | None = None, calls: int = 1, timeout: int = 60) -> Sipp:
        self.runs += 1
        name = scenario if isinstance(scenario, str) else scenario.stem
        workdir = self.path / f"sipp-{self.runs}-{name}"
        workdir.mkdir()
        scen = ["-sn", scenario] if isinstance(scenario, str) else ["-sf", str(scenario)]
        cmd = [self.sipp_bin, *([target] if target else []), *scen,
               "-i", host, "-p", str(port), "-m", str(calls), "-nostdin", "-trace_err",
               "-error_file", str(workdir / "errors.log"), "-trace_stat",
               "-stf", str(workdir / "stat.csv"), "-fd", "1", "-trace_msg",
               "-timeout", f"{timeout}s", "-timeout_error", *args]
        out = (workdir / "stdout.txt").open("w")
        run = Sipp(subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                    text=True, env={**os.environ, "TERM": "dumb"}), workdir)
        self.sipps.append(run)
        return run

    def agent_phone(self, dn: str, calls: int = 1, scenario: str = "node_uas_answer.xml"
                    ) -> Sipp:
        """The agent's phone on its fixed contact: answers ``calls`` calls."""
        return self.sipp(INTEROP / scenario, agent_host(dn), self.ports[f"phone_{dn}"],
                         ["-d", "100"], calls=calls)

    def gateway(self) -> Sipp:
        """The PSTN gateway behind Trunk_PSTN: SIPp's UAS answers every call."""
        return self.sipp("uas", GATEWAY_HOST, self.ports["gateway"], ["-aa"], calls=1000)

    def call(self, node: str, number: str, *, scenario: Path | None = None,
             caller: str = "+15550100") -> Sipp:
        """A call from the SBC's address to ``number`` at ``node``."""
        return self.sipp(scenario or INTEGRATION / "uac_inbound.xml", CALLER_HOST,
                         self.free_port(CALLER_HOST),
                         ["-s", number, "-set", "caller", caller, "-set", "domain",
                          "cluster.test"],
                         target=f"{NODE_HOST[node]}:{self.ports[f'sip_{node}']}")

    async def tlib(self, host: str, port: int, app: str, local: str) -> Client:
        client = await TLibClient.connect(host, port, app, "legacy", local_addr=(local, 0))
        c = Client(client)
        client.add_listener(c.record)
        self.clients.append(c)
        return c

    async def desktop(self, node: str, app: str = "Cluster") -> Client:
        host = NODE_HOST[node]
        return await self.tlib(host, self.ports[f"tc_{node}"], app, host[:-2] + "90")

    async def router(self, node: str, app: str, *dns: str) -> Client:
        """A routing client of ``node``'s default port, registered on ``dns``."""
        host = NODE_HOST[node]
        r = await self.tlib(host, self.ports[f"default_{node}"], app, host[:-2] + "94")
        for dn in dns:
            answer = await r.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert answer["message"] == "EventRegistered", answer
        return r

    async def login_agents(self, dns: list[str]) -> dict[str, Client]:
        """Each agent's desktop on its data centre's t-controller: ownership, login, Ready."""
        desks: dict[str, Client] = {}
        for dn in dns:
            node = "A" if AGENTS[dn][1] == "dc1" else "C"
            desk = desks.get(node) or await self.desktop(node)
            desks[node] = desk
            answer = await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert answer["message"] == "EventRegistered", answer
            await self.until(f"{dn} owned", partial(self.tc_owner, dn), 10)
            login = await desk.request("RequestAgentLogin", AttributeThisDN=dn,
                                       AttributeAgentID=AGENTS[dn][0],
                                       AttributeAgentWorkMode="AutoIn")
            assert login["message"] == "EventAgentLogin", login
        return desks

    def tc_owner(self, dn: str) -> str | None:
        with urllib.request.urlopen(
                f"http://{NODE_HOST['A']}:{self.ports['tchttp_A']}/status/dns", timeout=5) as r:
            entry = json.loads(r.read())["dns"].get(dn) or {}
        return entry.get("owner") if entry.get("dn-state") == "in-service" else None

    def status(self, node: str, page: str) -> Any:
        with urllib.request.urlopen(
                f"http://{NODE_HOST[node]}:{self.ports[f'http_{node}']}{page}", timeout=5) as r:
            return json.loads(r.read())

    def metric(self, node: str, name: str) -> float:
        """Sum of the samples of ``name`` (with labels inside braces) on the node."""
        with urllib.request.urlopen(
                f"http://{NODE_HOST[node]}:{self.ports[f'http_{node}']}/metrics",
                timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.client.close()
        for run in self.sipps:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        failures = []
        for proc in reversed(list(self.procs.values())):
            code = proc.stop()
            text = proc.log_path.read_text()
            if "Traceback" in text:
                failures.append(f"{proc.name}: {text[text.index('Traceback') - 300:][:2000]}")
            elif code not in (0, -signal.SIGKILL):
                failures.append(f"{proc.name} exit {code}: {text[-1500:]}")
        assert not failures, "\n".join(failures)


@pytest.fixture
async def node_lab(tmp_path: Path, free_port: Callable[..., int],
                   require_tool: Callable[[str], str]) -> AsyncIterator[Any]:
    """Factory: ``lab = await node_lab(router_timeout=10)`` starts both nodes
    (sip-server + t-controller) and, with ``feature_server`` (its options:
    partitions, calling profiles), FS_dc1 before them."""
    labs: list[NodeLab] = []

    async def make(*, router_timeout: float = 10.0, tserver: str = "",
                   feature_server: str | None = None, extra: str = "",
                   nodes: str = "AC") -> NodeLab:
        sipp_bin = require_tool("sipp")
        ports: dict[str, int] = {}
        for n in "AC":
            for key in ("sip", "default", "http", "tc", "tchttp"):
                ports[f"{key}_{n}"] = free_port(NODE_HOST[n])
        for dn in AGENTS:
            ports[f"phone_{dn}"] = free_port(agent_host(dn))
        ports["gateway"] = free_port(GATEWAY_HOST)
        ports["fs"] = free_port(FS_HOST)
        lab = NodeLab(tmp_path, ports, sipp_bin, free_port)
        labs.append(lab)
        lab.config.write_text(cluster_text(
            ports, router_timeout=router_timeout, tserver=tserver,
            feature_server=feature_server, extra=extra).replace(
                "{state}", str(tmp_path / "fs-state")))
        if feature_server is not None:
            lab.start("feature-server", "FS_dc1")
        for n in nodes:
            lab.start("sip-server", f"SIPS_{n}")
        for n in nodes:
            lab.start("t-controller", f"TC_{n}", wait="node_link_up")
        if len(nodes) > 1:
            await lab.until("the t-controller mesh", lambda: all(
                "peer_link_up" in lab.procs[f"TC_{n}"].log_path.read_text() for n in nodes))
        return lab

    yield make
    for lab in labs:
        await lab.close()
