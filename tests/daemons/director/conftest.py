"""Real processes for the director's tests: two cluster nodes (sip-server +
t-controller) in two data centres, DC1 = 127.0.145.x and DC2 = 127.0.146.x,
the director (127.0.145.80, or more than one), SIPp agents and callers, and
T-Library desktops that log the agents in.

Agents have a fixed contact (their SIPp UAS on 127.0.14x.1NN, a port picked
for the run), so any
node reaches them directly; their DN's owner is the node whose t-controller
their desktop registered them on (T-Library-based ownership).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.support.processes import ROOT, Proc, ProcessLab, Sipp
from tests.support.two_sites import extensions_text, head_text, node_ports, nodes_text

INTEROP = ROOT / "tests" / "interop" / "scenarios"
INTEGRATION = ROOT / "tests" / "integration" / "scenarios"
DC = {"dc1": "127.0.145.", "dc2": "127.0.146."}
#: agent DN -> (AgentID, data centre, skills)
AGENTS = {
    "1001": ("a1001", "dc1", "{ sales = 5 }"),
    "1002": ("a1002", "dc1", "{ sales = 3 }"),
    "1003": ("a1003", "dc2", "{ sales = 4 }"),
    "1004": ("a1004", "dc2", "{ sales = 2, support = 1 }"),
    "1005": ("a1005", "dc1", "{ support = 5 }"),
    "1006": ("a1006", "dc2", "{ support = 5 }"),
}
DEFAULT_PHONE = "1099"
UNREGISTERED = "1098"
CALLER_HOST = "127.0.145.200"


def agent_host(dn: str) -> str:
    return DC[AGENTS[dn][1]] + str(100 + int(dn[-2:])) if dn in AGENTS else "127.0.145.199"


def cluster_text(ports: dict[str, int], *, directors: int, router_timeout: float,
                 overflow_after: float, collection: float = 0.3, tserver: str = "") -> str:
    text = head_text(domain="cluster.test", tserver=f"""
router-timeout = {router_timeout}
default-dn = "{DEFAULT_PHONE}"
extn-no-answer-timeout = 5
request-collection-time = {collection}
agent-reservation-timeout = 3
{"" if "wrap-up-time" in tserver else "wrap-up-time = 0"}
logout-on-disconnect = false
{tserver}
""", service="addp-timeout = 2\naddp-remote-timeout = 3\ntc-reconnect-timeout = 1") + f"""
[dns.Trunk_SBC_dc1]
type = "Trunk"
contact = "{CALLER_HOST}:5060"
geo-location = "dc1"

# a SIP phone that never registered: out of service
[dns.{UNREGISTERED}]
type = "Extension"
contact = "*"
password = "s-{UNREGISTERED}-x"
"""
    text += extensions_text(((dn, agent_host(dn)) for dn in (DEFAULT_PHONE, *AGENTS)), ports)
    text += nodes_text(DC, ports)
    for d in range(1, directors + 1):
        text += f"""
[applications.Director{d}]
kind = "director"
host = "127.0.145.{79 + d}"
geo-location = "dc1"
http-port = {ports[f"director_{d}"]}
director-port = {ports[f"dport_{d}"]}

[applications.Director{d}.options]
reservation-priority = {d}

[applications.Director{d}.options.skills]
""" + "".join(f"{aid} = {skills}\n" for aid, _, skills in AGENTS.values()) + f"""
[applications.Director{d}.options.strategies.8000]
routing-points = ["5000"]
skill = "sales"
min-level = 1
order = "longest-idle"
site-preference = true
overflow-after = {overflow_after}
"""
    return text


@dataclass
class Desktop:
    client: TLibClient
    events: list[dict[str, Any]] = field(default_factory=list)

    def record(self, event: dict[str, Any]) -> None:
        self.events.append({**event, "at": time.monotonic()})

    async def request(self, name: str, **attributes: Any) -> dict[str, Any]:
        async with asyncio.timeout(10):
            return dict(await self.client.request(name, attributes))


@dataclass
class DirectorLab(ProcessLab):
    """The running processes of one test, and what the tests ask of them."""

    desktops: list[Desktop] = field(default_factory=list)

    def log_path(self, name: str) -> Path:
        return self.path / f"{name}.{len(self.procs)}.log"  # a restart logs anew

    def daemon_env(self) -> dict[str, str]:
        return {"SIPCLUSTER_STATE_DIR": str(self.path / "state")}

    async def director(self, n: int = 1) -> Proc:
        return await self.spawn("director", f"Director{n}")

    def sipp(self, scenario: Path, host: str, port: int, args: list[str], *,
             target: str | None = None, calls: int = 1, timeout: int = 60) -> Sipp:
        self.runs += 1
        run = Sipp.start(self.sipp_bin, self.path / f"sipp-{self.runs}-{scenario.stem}",
                         scenario, host, port, args, target=target, calls=calls,
                         timeout=timeout)
        self.sipps.append(run)
        return run

    def agent_phone(self, dn: str, calls: int, ring_ms: int = 100,
                    scenario: str = "node_uas_answer.xml") -> Sipp:
        """The agent's phone: answers ``calls`` calls on its fixed contact (or
        rings and never answers: node_uas_ring.xml; answers busy: node_uas_busy.xml)."""
        return self.sipp(INTEROP / scenario, agent_host(dn), self.ports[f"phone_{dn}"],
                         ["-d", str(ring_ms)], calls=calls)

    def callers(self, node: str, calls: int, rate: float, *, limit: int = 10) -> Sipp:
        """Inbound calls from the SBC's trunk (its address, any port) to routing
        point 5000 at ``node``."""
        host = DC["dc1" if node == "A" else "dc2"] + "11"
        return self.sipp(INTEGRATION / "uac_inbound.xml", CALLER_HOST,
                         self.free_port(CALLER_HOST),
                         ["-s", "5000", "-set", "caller", "+15550100", "-set", "domain",
                          "cluster.test", "-r", str(rate), "-l", str(limit)],
                         target=f"{host}:{self.ports[f'sip_{node}']}", calls=calls)

    async def desktop(self, node: str, app: str = "Cluster") -> Desktop:
        host = DC["dc1" if node == "A" else "dc2"]
        client = await TLibClient.connect(host + "11", self.ports[f"tc_{node}"], app, "legacy",
                                          local_addr=(host + "90", 0))
        desk = Desktop(client)
        client.add_listener(desk.record)
        self.desktops.append(desk)
        return desk

    async def login_agents(self, dns: list[str]) -> dict[str, Desktop]:
        """Each agent's desktop on its data centre's t-controller: ownership, login, Ready."""
        desks: dict[str, Desktop] = {}
        for dn in dns:
            node = "A" if AGENTS[dn][1] == "dc1" else "C"
            desk = desks.setdefault(node, await self.desktop(node))
            answer = await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert answer["message"] == "EventRegistered", answer
            await self.until(f"{dn} owned", lambda dn=dn: self.tc_owner(dn) is not None, 10)
            login = await desk.request("RequestAgentLogin", AttributeThisDN=dn,
                                       AttributeAgentID=AGENTS[dn][0],
                                       AttributeAgentWorkMode="AutoIn")
            assert login["message"] == "EventAgentLogin", login
            await asyncio.sleep(0.05)  # distinct idle times, in login order
        return desks

    def tc_owner(self, dn: str) -> str | None:
        with urllib.request.urlopen(
                f"http://{DC['dc1']}11:{self.ports['tchttp_A']}/status/dns", timeout=5) as r:
            entry = json.loads(r.read())["dns"].get(dn) or {}
        return entry.get("owner") if entry.get("dn-state") == "in-service" else None

    async def close(self) -> None:
        for desk in self.desktops:
            with contextlib.suppress(Exception):
                await desk.client.close()
        self.stop_processes()


@pytest.fixture
async def director_lab(tmp_path: Path, free_port: Callable[..., int],
                       require_tool: Callable[[str], str]) -> AsyncIterator[Any]:
    """Factory: ``lab = await director_lab(directors=1, router_timeout=10)`` starts
    both nodes (sip-server + t-controller); the test starts its directors."""
    labs: list[DirectorLab] = []

    async def make(*, directors: int = 1, router_timeout: float = 10.0,
                   overflow_after: float = 0.5, collection: float = 0.3,
                   tserver: str = "") -> DirectorLab:
        sipp_bin = require_tool("sipp")
        ports = node_ports(free_port, DC)
        for dn in (*AGENTS, DEFAULT_PHONE):
            ports[f"phone_{dn}"] = free_port(agent_host(dn))
        for d in range(1, directors + 1):
            ports[f"director_{d}"] = free_port(f"127.0.145.{79 + d}")
            ports[f"dport_{d}"] = free_port(f"127.0.145.{79 + d}")
        lab = DirectorLab(tmp_path, ports, sipp_bin, free_port)
        labs.append(lab)
        lab.config.write_text(cluster_text(ports, directors=directors,
                                           router_timeout=router_timeout,
                                           overflow_after=overflow_after,
                                           collection=collection, tserver=tserver))
        for n in ("A", "C"):
            lab.start("sip-server", f"SIPS_{n}")
        for n in ("A", "C"):
            lab.start("t-controller", f"TC_{n}", wait="node_link_up")
        await lab.until("the t-controller mesh", lambda: all(
            "peer_link_up" in lab.procs[f"TC_{n}"].log_path.read_text() for n in "AC"))
        return lab

    yield make
    for lab in labs:
        await lab.close()
