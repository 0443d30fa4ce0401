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
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.support.processes import ROOT, Proc, ProcessLab, Sipp
from tests.support.two_sites import extensions_text, nodes_text

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
    text += extensions_text(((dn, agent_host(dn)) for dn in AGENTS), ports)
    text += nodes_text(DC, ports)
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
class NodeLab(ProcessLab):
    """The running processes of one test, and what the tests ask of them."""

    clients: list[Client] = field(default_factory=list)

    def node(self, n: str) -> Proc:
        return self.procs[f"SIPS_{n}"]

    def sipp(self, scenario: Path | str, host: str, port: int, args: list[str], *,
             target: str | None = None, calls: int = 1, timeout: int = 60) -> Sipp:
        self.runs += 1
        name = scenario if isinstance(scenario, str) else scenario.stem
        run = Sipp.start(self.sipp_bin, self.path / f"sipp-{self.runs}-{name}", scenario,
                         host, port, args, target=target, calls=calls, timeout=timeout,
                         trace_msg=True, stats_timeout=30.0)
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
        self.stop_processes()


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
