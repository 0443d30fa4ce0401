"""A status changed from another site for an agent logged on through a
t-controller (docs/collective.md, "Status from another site").

The hub and three sites as processes, each its own cluster file, on
127.0.175.x (hub), 127.0.176.x (Boca), 127.0.177.x (Indy), 127.0.178.x
(Lyon). Indy runs a node, its t-controller and a status-aggregator; Indy
grants Boca the trusted-access right manage handlers, not Lyon. User a6001
of Indy logs in on DN 6001 through a desktop on Indy's TCport:

* Boca asks "At Lunch": Indy's collective sends ``RequestAgentNotReady`` with
  the reason to the t-controller, the desktop sees ``EventAgentNotReady``, and
  every site's directory shows the new state;
* Boca asks "Available": ``EventAgentReady``, shown everywhere;
* Lyon asks: refused (409) naming the missing right; the state is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime import certs
from daemons.runtime.tlib_client import TLibClient
from tests.conftest import free_port, require_tool
from tests.daemons.collective.conftest import until
from tests.daemons.rtm_server.conftest import Hub, HubSpec, Proc, write_cluster
from tests.support.agents import agent_login

pytestmark = pytest.mark.timeout(120)

HUB_HOST = "127.0.175.10"
#: site id -> (name, subnet prefix, phone number, password)
SITES = {1: ("Boca", "127.0.176.", "5615550100", "Boca-Secret"),
         2: ("Indy", "127.0.177.", "3175550100", "Indy-Secret"),
         3: ("Lyon", "127.0.178.", "33472000000", "Lyon-Secret")}
WORKGROUP = "Multisite_RTM1"
SCENARIOS = Path(__file__).resolve().parents[2] / "integration" / "scenarios"
#: what Indy grants each peer
MANAGE = {1: True, 3: False}


@dataclass
class Site:
    site_id: int
    root: Path
    ports: dict[str, int]

    @property
    def name(self) -> str:
        return SITES[self.site_id][0]

    @property
    def prefix(self) -> str:
        return SITES[self.site_id][1]

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{self.prefix}61:{self.ports['collective']}{path}", data=data,
            method=method, headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def status_of(self, home: int, user: str) -> dict[str, Any]:
        code, body = self.http("GET", f"/directory/{home}/{user}")
        assert code == 200, body
        status: dict[str, Any] = body["status"] or {}
        return status

    def log_events(self, app: str, event: str) -> list[dict[str, Any]]:
        out = []
        for line in (self.root / f"{app}.log").read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                entry = json.loads(line)
                if entry.get("event") == event:
                    out.append(entry)
        return out


def _cluster(site: Site, hub: HubSpec) -> Path:
    name, prefix, phone, password = SITES[site.site_id]
    p = site.ports
    text = f"""
[switch]
name = "{name}_Switch"
domain = "{name.lower()}.test"
realm = "{name.lower()}.test"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_{name}"]

[dns.6001]
type = "Extension"
contact = "*"
password = "secret-6001"

[applications.SIPS_{name}]
kind = "sip-server"
host = "{prefix}11"
geo-location = "{name.lower()}"
sip-port = {p['sip']}
default-port = {p['default']}
http-port = {p['node_http']}

[applications.TC_{name}]
kind = "t-controller"
host = "{prefix}11"
sip-server = "SIPS_{name}"
tc-port = {p['tc']}
http-port = {p['tc_http']}

[applications.Collective_{name}]
kind = "collective"
host = "{prefix}61"
http-port = {p['collective']}

[applications.Collective_{name}.options]
hubs = ["{hub.host}:{hub.rtm_port}"]
spanning-workgroups = ["{WORKGROUP}"]
store = "sqlite:{site.root / 'collective.db'}"
rtm-state = "{site.root / 'rtm.db'}"

[applications.Collective_{name}.options.home-site]
site-identifier = {site.site_id}
site-name = "{name}"
phone-number = "{phone}"
password = "{password}"
"""
    for peer_id, (peer, _, peer_phone, peer_password) in SITES.items():
        if peer_id == site.site_id:
            continue
        manage = site.site_id == 2 and MANAGE[peer_id]
        text += f"""
[applications.Collective_{name}.options.peer-sites.{peer}]
site-identifier = {peer_id}
phone-number = "{peer_phone}"
password = "{peer_password}"
[applications.Collective_{name}.options.peer-sites.{peer}.trusted-access]
publish-handlers = true
manage-handlers = {"true" if manage else "false"}
"""
    if site.site_id == 2:
        text += f"""
[applications.SA_{name}]
kind = "status-aggregator"
host = "{prefix}70"
status-port = {p['sa']}
http-port = {p['sa_http']}

[applications.SA_{name}.options]
publishers = ["Collective_{name}"]
"""
        directory = site.root / "certs"
        certs.init_ca(directory)
        for app in (f"SA_{name}", f"TC_{name}", f"Collective_{name}"):
            certs.issue(directory, app)
    path = site.root / "cluster.toml"
    path.write_text(text)
    return path


def _healthy(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _checker(host: str, port: int) -> Callable[[], bool]:
    return lambda: _healthy(host, port)


@dataclass
class Sites:
    hub: Hub
    sites: dict[int, Site]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    root = tmp_path_factory.mktemp("remote-status")
    spec = HubSpec("RTM1", HUB_HOST, free_port(HUB_HOST), free_port(HUB_HOST))
    hub_config = write_cluster(root / "hub.toml", [spec],
                               {"store": f"sqlite:{root / 'hub' / 'rtm.db'}", "keep-alive": 2},
                               sites={i: s[3] for i, s in SITES.items()})
    hub = Hub(hub_config, spec, root / "hub.log")
    hub.start()
    out: dict[int, Site] = {}
    procs: list[Proc] = []

    def start(site: Site, kind: str, app: str) -> None:
        procs.append(Proc([sys.executable, "-m", "daemons.cli", kind, "--config",
                           str(site.root / "cluster.toml"), "--name", app, "--log-format",
                           "json"], site.root / f"{app}.log",
                          env={"SIPCLUSTER_STATE_DIR": str(site.root / "state")}).start())

    try:
        for site_id, (name, prefix, _, _) in SITES.items():
            ports = {"collective": free_port(prefix + "61")}
            for key in ("sip", "default", "node_http", "tc", "tc_http"):
                ports[key] = free_port(prefix + "11")
            ports["sa"], ports["sa_http"] = free_port(prefix + "70"), free_port(prefix + "70")
            site = out[site_id] = Site(site_id, root / name, ports)
            site.root.mkdir()
            _cluster(site, spec)
        hub.wait_role("active", 30.0)
        indy = out[2]
        start(indy, "status-aggregator", "SA_Indy")
        start(indy, "sip-server", "SIPS_Indy")
        for site in out.values():
            start(site, "collective", f"Collective_{site.name}")
        until(lambda: _healthy(indy.prefix + "70", indy.ports["sa_http"]), 30, "SA_Indy")
        until(lambda: _healthy(indy.prefix + "11", indy.ports["node_http"]), 30, "SIPS_Indy")
        start(indy, "t-controller", "TC_Indy")
        until(lambda: _healthy(indy.prefix + "11", indy.ports["tc_http"]), 30, "TC_Indy")
        for site in out.values():
            until(_checker(site.prefix + "61", site.ports["collective"]), 30, site.name)
        yield Sites(hub, out)
    finally:
        for proc in procs:
            proc.stop()
        hub.stop()


def _register_phone(site: Site, dn: str) -> None:
    """DN ``dn``'s phone (SIPp) registers at the site's node: the DN is in service."""
    address = site.prefix + "150"
    workdir = site.root / f"sipp-register-{dn}"
    workdir.mkdir()
    out = subprocess.run(
        [require_tool("sipp"), f"{site.prefix}11:{site.ports['sip']}",
         "-sf", str(SCENARIOS / "register.xml"), "-i", address, "-p", str(free_port(address)),
         "-s", dn, "-m", "1", "-au", dn, "-ap", f"secret-{dn}", "-set", "expires", "300",
         "-set", "domain", f"{site.name.lower()}.test", "-nostdin", "-timeout", "10s",
         "-timeout_error", "-trace_err", "-error_file", str(workdir / "errors.log")],
        cwd=workdir, capture_output=True, text=True, timeout=20, check=False,
        env={**os.environ, "TERM": "dumb"})
    assert out.returncode == 0, out.stdout[-2000:]


async def _until(check: Any, message: str, timeout: float = 15.0) -> Any:
    return await asyncio.to_thread(until, check, timeout, message)


async def test_a_status_from_another_site_changes_the_agent_state_at_its_t_controller(
        sites: Sites) -> None:
    boca, indy, lyon = (sites.sites[i] for i in (1, 2, 3))
    code, body = await asyncio.to_thread(indy.http, "PUT", "/users/a6001",
                                         {"name": "Agent 6001", "extension": "6001",
                                          "workgroups": [WORKGROUP]})
    assert code == 200, body
    for site in (boca, lyon):
        await _until(lambda s=site: s.status_of(2, "a6001") is not None,
                     f"a6001 not replicated to {site.name}")
    await _until(lambda: indy.http("GET", "/status")[1]["status_aggregator"] == "SA_Indy",
                 "Indy's collective not linked to its status-aggregator", 30.0)

    await asyncio.to_thread(_register_phone, indy, "6001")
    desk = await TLibClient.connect(indy.prefix + "11", indy.ports["tc"], "Desk", "legacy",
                                    local_addr=(indy.prefix + "151", 0))
    try:
        async with asyncio.timeout(30):
            registered = await desk.request("RequestRegisterAddress", AttributeThisDN="6001")
            assert registered["message"] == "EventRegistered", registered
            # the DN comes in service at the t-controller a moment after the phone's 200
            login = await agent_login(desk, "6001", "a6001", "ManualIn")
            assert login["message"] == "EventAgentLogin", login
            ready = await desk.request("RequestAgentReady", AttributeThisDN="6001")
            assert ready["message"] == "EventAgentReady", ready
        for site in (boca, indy, lyon):
            await _until(lambda s=site: (st := s.status_of(2, "a6001")).get("logged_on")
                         and st["status"] == "Available",
                         f"a6001 Available not shown at {site.name}")
        events: list[dict[str, Any]] = []
        desk.add_listener(events.append)

        # Boca (manage handlers at Indy): the agent goes Not Ready with the reason
        code, body = await asyncio.to_thread(boca.http, "POST", "/directory/2/a6001/status",
                                             {"status": "At Lunch"})
        assert code == 200, body
        assert body["result"] == "accepted"
        not_ready = [e for e in events if e["message"] == "EventAgentNotReady"]
        assert len(not_ready) == 1, events
        assert not_ready[0]["AttributeThisDN"] == "6001"
        assert not_ready[0].get("AttributeReason") == {"ReasonCode": "At Lunch"}, not_ready
        for site in (boca, indy, lyon):
            status = await _until(
                lambda s=site: (st := s.status_of(2, "a6001"))["status"] == "Not Ready" and st,
                f"Not Ready not shown at {site.name}")
            assert status["detail"] == "reason At Lunch"
            assert status["logged_on"] is True and status["logged_on_site"] == 2
        line = indy.log_events("Collective_Indy", "collective_agent_state_set")[-1]
        assert (line["by"], line["dn"], line["request"], line["t_controller"]) == \
            (1, "6001", "RequestAgentNotReady", "TC_Indy")

        # and back to Available
        code, body = await asyncio.to_thread(boca.http, "POST", "/directory/2/a6001/status",
                                             {"status": "Available"})
        assert code == 200, body
        assert [e["message"] for e in events].count("EventAgentReady") == 1, events
        for site in (boca, indy, lyon):
            await _until(lambda s=site: s.status_of(2, "a6001")["status"] == "Available",
                         f"Available not shown at {site.name}")

        # Lyon lacks manage handlers at Indy: refused, the agent stays Available
        before = len(events)
        code, body = await asyncio.to_thread(lyon.http, "POST", "/directory/2/a6001/status",
                                             {"status": "Not Ready", "detail": "42"})
        assert code == 409, body
        assert "manage-handlers" in body["error"] and "Lyon" in body["error"], body
        refused = indy.log_events("Collective_Indy", "collective_agent_state_refused")
        assert [(e["by"], e["reason"]) for e in refused] == [(3, "no-permission")]
        assert [e["message"] for e in events[before:]] == [], events[before:]
        for site in (boca, indy, lyon):
            status = await asyncio.to_thread(site.status_of, 2, "a6001")
            assert status["status"] == "Available", status
        async with asyncio.timeout(5):
            logout = await desk.request("RequestAgentLogout", AttributeThisDN="6001")
            assert logout["message"] == "EventAgentLogout", logout
    finally:
        await desk.close()
    # logged off: a status from another site is published at the home site again
    await _until(lambda: not lyon.status_of(2, "a6001")["logged_on"], "log-out not seen at Lyon")
    code, body = await asyncio.to_thread(lyon.http, "POST", "/directory/2/a6001/status",
                                         {"status": "Gone Home"})
    assert code == 200, body
    await _until(lambda: boca.status_of(2, "a6001")["status"] == "Gone Home",
                 "status set from Lyon not shown at Boca")
