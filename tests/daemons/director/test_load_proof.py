"""Load proof of ``sipcluster director`` on real processes: 20 SIPp agents over
two data centres (DC1 = 127.0.195.x, DC2 = 127.0.196.x) logged in from
T-Library desktops, 200 calls offered at 20 calls/s by a SIPp caller into
routing point 5000. Every call is answered by an agent with the skill, no
agent is offered a call while it is on another one or reserved, every INVITE
an agent's phone got is a call the director routed to it, and the first calls
go to the agents in the order they became Ready (longest idle)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.daemons.director.conftest import (
    INTEGRATION,
    INTEROP,
    Desktop,
    DirectorLab,
    Sipp,
)
from tests.daemons.director.test_director import (
    ringing_overlaps,
)
from tests.support.two_sites import extensions_text, head_text, node_ports, nodes_text

pytestmark = pytest.mark.timeout(240)

DC = {"dc1": "127.0.195.", "dc2": "127.0.196."}
CALLER_HOST = "127.0.195.200"
CALLS = 200
RATE = 20
#: agent DN -> (AgentID, data centre, skills); every fifth agent has no sales skill
AGENTS = {
    str(2000 + i): (f"a{2000 + i}", "dc1" if i % 2 else "dc2",
                    "{ support = 3 }" if i % 5 == 0 else f"{{ sales = {1 + i % 5} }}")
    for i in range(1, 21)
}
SALES = [dn for dn, (_, _, skills) in AGENTS.items() if "sales" in skills]
DEFAULT_PHONE = "2099"
#: the nodes' ADDP with their desktops and the t-controllers' reconnection
ADDP = "addp-timeout = 2\naddp-remote-timeout = 3\ntc-reconnect-timeout = 1"


def host_of(dn: str) -> str:
    return DC[AGENTS[dn][1]] + str(100 + int(dn[-2:])) if dn in AGENTS else "127.0.195.199"


def config_text(ports: dict[str, int]) -> str:
    text = head_text(domain="cluster.test", tserver=f"""
router-timeout = 30
default-dn = "{DEFAULT_PHONE}"
extn-no-answer-timeout = 5
request-collection-time = 0.3
agent-reservation-timeout = 3
wrap-up-time = 0
logout-on-disconnect = false
""", service=ADDP) + f"""
[dns.Trunk_SBC_dc1]
type = "Trunk"
contact = "{CALLER_HOST}:5060"
geo-location = "dc1"
"""
    text += extensions_text(((dn, host_of(dn)) for dn in (DEFAULT_PHONE, *AGENTS)), ports)
    text += nodes_text(DC, ports)
    text += f"""
[applications.Director1]
kind = "director"
host = "127.0.195.80"
geo-location = "dc1"
http-port = {ports["director_1"]}
director-port = {ports["dport_1"]}

[applications.Director1.options.skills]
""" + "".join(f"{aid} = {skills}\n" for aid, _, skills in AGENTS.values()) + """
[applications.Director1.options.strategies.8000]
routing-points = ["5000"]
skill = "sales"
min-level = 1
order = "longest-idle"
site-preference = false
overflow-after = 0
"""
    return text


def invites(run: Sipp) -> list[str]:
    """Call-IDs of the INVITEs an agent's phone received (from SIPp's message trace)."""
    ids: list[str] = []
    for log in run.workdir.glob("*_messages.log"):
        for chunk in log.read_text(errors="replace").split("message received")[1:]:
            body = chunk.split("\n\n", 1)[-1].lstrip()
            if body.startswith("INVITE "):
                match = re.search(r"^Call-ID:\s*(\S+)", body, re.M | re.I)
                if match and match.group(1) not in ids:
                    ids.append(match.group(1))
    return ids


async def desktop(lab: DirectorLab, subnet: str, port: int) -> Desktop:
    client = await TLibClient.connect(subnet + "11", port, "Cluster", "legacy",
                                      local_addr=(subnet + "90", 0))
    desk = Desktop(client)
    client.add_listener(desk.record)
    lab.desktops.append(desk)
    return desk


def in_service(lab: DirectorLab, dn: str) -> bool:
    """The DN has an owner t-controller (TC_A's view of the cluster)."""
    with urllib.request.urlopen(
            f"http://{DC['dc1']}11:{lab.ports['tchttp_A']}/status/dns", timeout=5) as r:
        entry = json.loads(r.read())["dns"].get(dn) or {}
    return bool(entry.get("dn-state") == "in-service")


async def test_200_calls_at_20_per_second_reach_free_agents_with_the_skill(
        tmp_path: Path, free_port: Callable[..., int],
        require_tool: Callable[[str], str]) -> None:
    started = time.monotonic()
    ports = node_ports(free_port, DC)
    for dn in (*AGENTS, DEFAULT_PHONE):
        ports[f"phone_{dn}"] = free_port(host_of(dn))
    ports["director_1"] = free_port("127.0.195.80")
    ports["dport_1"] = free_port("127.0.195.80")
    lab = DirectorLab(tmp_path, ports, require_tool("sipp"), free_port)
    lab.config.write_text(config_text(ports))
    try:
        for n in ("A", "C"):
            await lab.spawn("sip-server", f"SIPS_{n}")
        for n in ("A", "C"):
            await lab.spawn("t-controller", f"TC_{n}", wait="node_link_up")
        await lab.until("the t-controller mesh", lambda: all(
            "peer_link_up" in lab.procs[f"TC_{n}"].log_path.read_text() for n in "AC"))
        # each agent's phone answers after 50 ms ringing; the caller hangs up 200 ms after
        # the answer (uac_inbound.xml): short calls, so agents take several each
        phones = {dn: lab.sipp(INTEROP / "node_uas_answer.xml", host_of(dn),
                               ports[f"phone_{dn}"], ["-d", "50", "-trace_msg"], calls=CALLS)
                  for dn in AGENTS}
        default = lab.sipp(INTEROP / "node_uas_answer.xml", host_of(DEFAULT_PHONE),
                           ports[f"phone_{DEFAULT_PHONE}"], ["-d", "50", "-trace_msg"],
                           calls=CALLS)
        director = await lab.director()
        await lab.until("the director linked", lambda: director.events("t_controller_linked"))
        # agents log in (Ready) one by one, the two data centres interleaved: the
        # director sees them become available in this order
        desks = {node: await desktop(lab, DC[geo], ports[f"tc_{node}"])
                 for node, geo in (("A", "dc1"), ("C", "dc2"))}
        for dn, (agent_id, geo, _) in AGENTS.items():
            desk = desks["A" if geo == "dc1" else "C"]
            answer = await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert answer["message"] == "EventRegistered", answer
            await lab.until(f"{dn} owned", partial(in_service, lab, dn), 10)
            login = await desk.request("RequestAgentLogin", AttributeThisDN=dn,
                                       AttributeAgentID=agent_id,
                                       AttributeAgentWorkMode="AutoIn")
            assert login["message"] == "EventAgentLogin", login
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        callers = lab.sipp(INTEGRATION / "uac_inbound.xml", CALLER_HOST, free_port(CALLER_HOST),
                           ["-s", "5000", "-set", "caller", "+15550100", "-set", "domain",
                            "cluster.test", "-r", str(RATE), "-l", "60"],
                           target=f"{DC['dc1']}11:{ports['sip_A']}", calls=CALLS, timeout=120)
        stats = await asyncio.to_thread(callers.stats, 150)
        assert stats.get("SuccessfulCall(C)") == str(CALLS), (stats, callers.errors())
        assert stats.get("FailedCall(C)") == "0", callers.errors()
        await asyncio.sleep(1.0)  # the last BYEs and releases are in

        routed = director.events("call_routed")
        assert len(routed) == CALLS, len(routed)
        per_agent = Counter(r["to"] for r in routed)
        # every call went to an agent with the sales skill; none to default-dn
        assert set(per_agent) <= set(SALES), per_agent
        assert not invites(default), "calls reached default-dn"
        # each agent's phone got exactly the calls the director routed to it
        got = {dn: invites(phones[dn]) for dn in AGENTS}
        assert {dn: len(ids) for dn, ids in got.items() if ids} == dict(per_agent), \
            ({dn: len(ids) for dn, ids in got.items()}, per_agent)
        assert sum(len(ids) for ids in got.values()) == CALLS
        # longest idle: the first calls reach every sales agent once, in login order
        assert [r["to"] for r in routed[:len(SALES)]] == SALES, routed[:len(SALES) + 4]
        # nobody was offered a call while on another one
        events = sorted((e for d in desks.values() for e in d.events), key=lambda e: e["at"])
        assert not ringing_overlaps(events), ringing_overlaps(events)
        ringing = Counter(e.get("AttributeThisDN") for e in events
                          if e["message"] == "EventRinging")
        assert dict(ringing) == dict(per_agent), (ringing, per_agent)
        # one router: no reservation conflict and no route to an agent reserved by another
        for n in "AC":
            assert not lab.procs[f"TC_{n}"].events("agent_reservation_refused")
        assert not director.events("call_routed_elsewhere")
        print(f"\n200 calls: per agent {dict(sorted(per_agent.items()))}; "
              f"test took {time.monotonic() - started:.1f} s")
    finally:
        await lab.close()
