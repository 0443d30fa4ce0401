"""Monitored servers on real processes (docs/director.md, "Monitored servers";
guide: Interaction Director Monitored Server). Two data centres (DC1 =
127.0.205.x, DC2 = 127.0.206.x), each with its site's director (a Monitored
Server reporting its own agents), and a Director Server (127.0.207.80) that
asks both for their reports over T-Library and spreads the calls of routing
point 5100 to the sites' entry numbers (9001, 9002: SIPp phones) by the
agents each reports available. A site whose director is stopped goes stale and
gets no more calls until it reports again; a monitored server that answers
nonsense is refused with a counter and a log line while the rest goes on."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from daemons.runtime.tlib_server import TLibConnection, TLibServer
from protocols.tlib.events import RequestReceived
from tests.daemons.director.conftest import (
    INTEGRATION,
    INTEROP,
    ROOT,
    DirectorLab,
)

pytestmark = pytest.mark.timeout(150)

HOST = {"dc1": "127.0.205.", "dc2": "127.0.206.", "hq": "127.0.207."}
#: agent DN -> (AgentID, data centre, skills)
AGENTS = {"2001": ("b2001", "dc1", "{ sales = 3 }"), "2002": ("b2002", "dc1", "{ sales = 2 }"),
          "2003": ("b2003", "dc2", "{ sales = 4 }"), "2004": ("b2004", "dc2", "{ support = 1 }")}
CALLER = HOST["dc1"] + "200"
ENTRY = {"SiteDirector1": ("9001", HOST["hq"] + "101"),
         "SiteDirector2": ("9002", HOST["hq"] + "102")}
BAD_SITE = "SiteDirector3"


def cluster(ports: dict[str, int], *, bad_site: bool = False) -> str:
    text = f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[switch.tserver]
router-timeout = 20
default-dn = "9009"
request-collection-time = 0.2
wrap-up-time = 0
logout-on-disconnect = false

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A", "SIPS_C"]
dn-owner-applications = ["Cluster"]
addp-timeout = 2
addp-remote-timeout = 3
tc-reconnect-timeout = 1

[dns.5100]
type = "RoutingPoint"
[dns.8100]
type = "VirtualQueue"
[dns.5001]
type = "RoutingPoint"
[dns.8001]
type = "VirtualQueue"
[dns.5002]
type = "RoutingPoint"
[dns.8002]
type = "VirtualQueue"

[dns.Trunk_SBC]
type = "Trunk"
contact = "{CALLER}:5060"
geo-location = "dc1"

[dns.9009]
type = "Extension"
contact = "sip:9009@{HOST['hq']}109:{ports['phone_9009']}"
"""
    for name, (dn, host) in ENTRY.items():
        text += f'\n[dns.{dn}]\ntype = "Extension"\ncontact = "sip:{dn}@{host}:{ports[name]}"\n'
    for dn, (_, dc, _) in AGENTS.items():
        text += (f'\n[dns.{dn}]\ntype = "Extension"\n'
                 f'contact = "sip:{dn}@{HOST[dc]}{int(dn) - 1900}:{ports["phone_" + dn]}"\n')
    for n, dc in (("A", "dc1"), ("C", "dc2")):
        text += f"""
[applications.SIPS_{n}]
kind = "sip-server"
host = "{HOST[dc]}11"
geo-location = "{dc}"
sip-port = {ports[f"sip_{n}"]}
default-port = {ports[f"default_{n}"]}
http-port = {ports[f"http_{n}"]}

[applications.TC_{n}]
kind = "t-controller"
host = "{HOST[dc]}11"
sip-server = "SIPS_{n}"
tc-port = {ports[f"tc_{n}"]}
http-port = {ports[f"tchttp_{n}"]}
"""
    skills = "".join(f"{aid} = {levels}\n" for aid, _, levels in AGENTS.values())
    for i, dc in ((1, "dc1"), (2, "dc2")):
        n = str(i)
        text += f"""
[applications.SiteDirector{n}]
kind = "director"
host = "{HOST[dc]}81"
geo-location = "{dc}"
http-port = {ports[f"site_http_{n}"]}
director-port = {ports[f"site_port_{n}"]}

[applications.SiteDirector{n}.options]
store = "none"
site = "{dc}"

[applications.SiteDirector{n}.options.skills]
{skills}
[applications.SiteDirector{n}.options.strategies.800{n}]
routing-points = ["500{n}"]
skill = "sales"
"""
    text += f"""
[applications.Director]
kind = "director"
host = "{HOST['hq']}80"
http-port = {ports["director_http"]}

[applications.Director.options]
store = "none"
report-interval = 0.5
site-stale-after = 3.0

[applications.Director.options.strategies.8100]
routing-points = ["5100"]
skill = "sales"
spread = "monitored-sites"
"""
    sites = dict(ENTRY)
    if bad_site:
        sites[BAD_SITE] = ("9001", "")
    for i, name in enumerate(sites, 1):
        text += f"""
[applications.Director.options.monitored-servers.{name}]
address = "{HOST['dc1' if i != 2 else 'dc2']}{81 if i < 3 else 82}:{ports[f"site_port_{i}"]}"
route-to = "{sites[name][0]}"
"""
    return text


@pytest.fixture
async def sites_lab(tmp_path: Path, free_port: Callable[..., int],
                    require_tool: Callable[[str], str]) -> AsyncIterator[Any]:
    labs: list[DirectorLab] = []

    async def make(*, bad_site: bool = False) -> DirectorLab:
        ports: dict[str, int] = {}
        for n, dc in (("A", "dc1"), ("C", "dc2")):
            for key in ("sip", "default", "http", "tc", "tchttp"):
                ports[f"{key}_{n}"] = free_port(HOST[dc] + "11")
        for i, dc in ((1, "dc1"), (2, "dc2")):
            ports[f"site_http_{i}"] = free_port(HOST[dc] + "81")
            ports[f"site_port_{i}"] = free_port(HOST[dc] + "81")
        ports["site_port_3"] = free_port(HOST["dc1"] + "82")
        ports["director_http"] = free_port(HOST["hq"] + "80")
        for name, (_, host) in ENTRY.items():
            ports[name] = free_port(host)
        ports["phone_9009"] = free_port(HOST["hq"] + "109")
        for dn, (_, dc, _) in AGENTS.items():
            ports["phone_" + dn] = free_port(f"{HOST[dc]}{int(dn) - 1900}")
        lab = DirectorLab(tmp_path, ports, require_tool("sipp"), free_port)
        labs.append(lab)
        lab.config.write_text(cluster(ports, bad_site=bad_site))
        for n in ("A", "C"):
            await lab.spawn("sip-server", f"SIPS_{n}")
        for n in ("A", "C"):
            await lab.spawn("t-controller", f"TC_{n}", wait="node_link_up")
        await lab.until("the t-controller mesh", lambda: all(
            "peer_link_up" in lab.procs[f"TC_{n}"].log_path.read_text() for n in "AC"))
        return lab

    yield make
    for lab in labs:
        await lab.close()


def status(lab: DirectorLab, port_key: str, host: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{host}:{lab.ports[port_key]}/status/director",
                                timeout=5) as resp:
        return dict(json.loads(resp.read()))


def get_text(lab: DirectorLab, path: str) -> str:
    with urllib.request.urlopen(f"http://{HOST['hq']}80:{lab.ports['director_http']}{path}",
                                timeout=5) as resp:
        return str(resp.read().decode())


def central(lab: DirectorLab) -> dict[str, Any]:
    return status(lab, "director_http", HOST["hq"] + "80")


async def login(lab: DirectorLab) -> list[TLibClient]:
    """Each agent's desktop on its data centre's t-controller: ownership, login, Ready."""
    desks: dict[str, TLibClient] = {}
    for dn, (agent_id, dc, _) in AGENTS.items():
        n = "A" if dc == "dc1" else "C"
        if n not in desks:
            desks[n] = await TLibClient.connect(HOST[dc] + "11", lab.ports[f"tc_{n}"], "Cluster",
                                                "legacy", local_addr=(HOST[dc] + "90", 0))
        desk = desks[n]
        async with asyncio.timeout(10):
            answer = await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert answer["message"] == "EventRegistered", answer
            login = await desk.request("RequestAgentLogin", AttributeThisDN=dn,
                                       AttributeAgentID=agent_id, AttributeAgentWorkMode="AutoIn")
            assert login["message"] == "EventAgentLogin", login
    return list(desks.values())


def routed_to(lab: DirectorLab) -> dict[str, int]:
    counts = dict.fromkeys(ENTRY, 0)
    for entry in lab.procs["Director"].events("call_routed_to_site"):
        counts[entry["monitored_server"]] += 1
    return counts


def callers(lab: DirectorLab, calls: int) -> Any:
    return lab.sipp(INTEGRATION / "uac_inbound.xml", CALLER, lab.free_port(CALLER),
                    ["-s", "5100", "-set", "caller", "+15550100", "-set", "domain",
                     "cluster.test", "-r", "10", "-l", "10"],
                    target=f"{HOST['dc1']}11:{lab.ports['sip_A']}", calls=calls)


async def test_calls_spread_across_sites_by_reported_availability_and_a_stale_site_gets_none(
        sites_lab: Any) -> None:
    lab = await sites_lab()
    desks = await login(lab)
    try:
        for name, (_, host) in ENTRY.items():
            lab.sipp(INTEROP / "node_uas_answer.xml", host, lab.ports[name], ["-d", "50"],
                     calls=100)
        await lab.spawn("director", "SiteDirector1")
        await lab.spawn("director", "SiteDirector2")
        await lab.spawn("director", "Director")

        def reported() -> bool:
            sites = central(lab).get("sites", {})
            return [sites.get(n, {}).get("available", {}).get("sales") for n in ENTRY] == [2, 1]

        # each site reports its own agents: dc1 two with sales, dc2 one (2004 has support)
        await lab.until("both sites' reports", reported, 60)  # 7 processes start on 2 cores
        view = await asyncio.to_thread(central, lab)
        one, two = view["sites"]["SiteDirector1"], view["sites"]["SiteDirector2"]
        assert (one["site"], one["state"], one["logged-in"]) == ("dc1", "fresh", 2)
        assert (two["site"], two["available"]["support"], two["logged-in"]) == ("dc2", 1, 2)
        assert two["queues"]["8002"]["waiting"] == 0
        assert view["enterprise-group-details"]["available"]["sales"] == 3

        # 9 calls at 10/s: each report interval, two to dc1 for one to dc2
        run = callers(lab, 9)
        stats = await asyncio.to_thread(run.stats, 60)
        assert stats.get("SuccessfulCall(C)") == "9", run.errors()
        counts = routed_to(lab)
        assert sum(counts.values()) == 9
        assert counts["SiteDirector1"] > counts["SiteDirector2"] > 0, counts
        assert (await asyncio.to_thread(central, lab))["queues"]["8100"]["service-level"] == 1.0

        # the dc2 site's director stops: stale after site-stale-after, no more calls
        await asyncio.to_thread(lab.procs["SiteDirector2"].stop)
        await lab.until("dc2 stale", lambda: central(lab)["sites"]["SiteDirector2"]["state"]
                        == "stale", 20)
        before = routed_to(lab)
        run = callers(lab, 4)
        stats = await asyncio.to_thread(run.stats, 60)
        assert stats.get("SuccessfulCall(C)") == "4", run.errors()
        after = routed_to(lab)
        assert after["SiteDirector2"] == before["SiteDirector2"]
        assert after["SiteDirector1"] == before["SiteDirector1"] + 4

        # it reports again: in the spread again
        await lab.spawn("director", "SiteDirector2")
        await lab.until("dc2 fresh", lambda: central(lab)["sites"]["SiteDirector2"]["state"]
                        == "fresh", 20)
        run = callers(lab, 6)
        stats = await asyncio.to_thread(run.stats, 60)
        assert stats.get("SuccessfulCall(C)") == "6", run.errors()
        assert routed_to(lab)["SiteDirector2"] > after["SiteDirector2"]
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "daemons.cli", "director", "status",
                             "--config", str(lab.config), "--name", "Director"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert re.search(r"^SiteDirector2 +dc2 +fresh +\d+ +0 +\d+$", out.stdout, re.M), \
            out.stdout
    finally:
        for desk in desks:
            await desk.close()


class _Nonsense:
    """A T-Library server that answers a Director Server's query with a report
    that is not one (a broken monitored server)."""

    def on_registered(self, conn: TLibConnection) -> None:
        pass

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        conn.answer(request, "EventAddressInfo", {
            "AttributeThisDN": request.message["AttributeThisDN"],
            "AttributeExtensions": {"site": "x", "available": {"sales": -5}}})

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        pass


async def test_a_bad_report_is_refused_and_the_other_sites_still_count(sites_lab: Any) -> None:
    lab = await sites_lab(bad_site=True)
    desks = await login(lab)
    bad = TLibServer(_Nonsense(), application_name=BAD_SITE, port_name="director-port")
    await bad.listen(HOST["dc1"] + "82", lab.ports["site_port_3"])
    try:
        await lab.spawn("director", "SiteDirector1")
        await lab.spawn("director", "Director")
        await lab.until("the bad report refused", lambda: central(lab)["sites"][BAD_SITE]
                        ["refused-reports"] >= 2, 20)
        view = await asyncio.to_thread(central, lab)
        assert view["sites"][BAD_SITE]["state"] == "never-reported"
        assert view["sites"]["SiteDirector1"]["state"] == "fresh"
        assert view["enterprise-group-details"]["available"]["sales"] == 2  # dc1's only
        metrics = await asyncio.to_thread(get_text, lab, "/metrics")
        assert re.search(r'director_site_reports_total\{monitored_server="SiteDirector3",'
                         r'outcome="refused"\} [1-9]', metrics), metrics
        refused = lab.procs["Director"].events("site_report_refused")
        assert "available" in refused[0]["reason"]
        # a site's director refuses a query for a DN it does not have, and goes on
        client = await TLibClient.connect(HOST["dc1"] + "81", lab.ports["site_port_1"], "Probe",
                                          "legacy", local_addr=(HOST["dc1"] + "91", 0))
        try:
            async with asyncio.timeout(5):
                answer = await client.request("RequestQueryAddress", AttributeThisDN="7777")
                assert answer["message"] == "EventError" and "Unknown DN" in \
                    answer["AttributeErrorMessage"]
                answer = await client.request("RequestQueryAddress", AttributeThisDN="8001")
            assert answer["message"] == "EventAddressInfo"
            assert answer["AttributeAddressInfoStatus"] == 2  # sales agents available at dc1
        finally:
            await client.close()
    finally:
        await bad.close()
        for desk in desks:
            await desk.close()
