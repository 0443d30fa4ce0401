"""Roaming calls through real nodes (docs/collective.md, "Roaming calls").

Three sites, each its own cluster file, and the hub, as processes on
127.0.240.x (hub), 127.0.241.x (Boca), 127.0.242.x (Indy), 127.0.243.x (Lyon):
a node and a collective at every site, and at Indy the node's t-controller
and a status-aggregator. User a5001 is homed at Boca (extension 5001, a DN
of Boca's switch); its agent logs in at Indy on DN 6001, whose phone is a
SIPp UAS registered at Indy's node. A SIPp caller at Lyon dials 5001:

* logged on at Indy: the INVITE reaches Indy's phone (6001), over Lyon's
  trunk to Indy, with the original caller;
* the hub killed: still Indy (the last site heard of);
* logged off (hub back): the call goes home, to 5001's phone at Boca.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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

HUB_HOST = "127.0.240.10"
#: site id -> (name, subnet prefix, phone number, password)
SITES = {1: ("Boca", "127.0.241.", "5615550100", "Boca-Secret"),
         2: ("Indy", "127.0.242.", "3175550100", "Indy-Secret"),
         3: ("Lyon", "127.0.243.", "33472000000", "Lyon-Secret")}
WORKGROUP = "Multisite_RTM1"
SCENARIOS = Path(__file__).resolve().parents[2] / "integration" / "scenarios"
CALLER = "+15550188"


@dataclass
class Site:
    site_id: int
    root: Path
    name: str = ""
    prefix: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name, self.prefix = SITES[self.site_id][0], SITES[self.site_id][1]

    @property
    def node(self) -> str:
        return self.prefix + "11"

    @property
    def collective(self) -> str:
        return self.prefix + "61"

    def locate(self, extension: str) -> dict[str, Any]:
        url = f"http://{self.collective}:{self.ports['collective']}/locate/{extension}"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return dict(json.loads(resp.read()))

    def log_events(self, name: str, event: str) -> list[dict[str, Any]]:
        out = []
        for line in (self.root / f"{name}.log").read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                entry = json.loads(line)
                if entry.get("event") == event:
                    out.append(entry)
        return out


def _cluster(site: Site, sites: dict[int, Site], hub: HubSpec) -> Path:
    name, prefix, phone, password = SITES[site.site_id]
    p = site.ports
    text = f"""
[switch]
name = "{name}_Switch"
domain = "{name.lower()}.test"
realm = "{name.lower()}.test"

[switch.tserver]
sip-enable-strict-auth = true

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_{name}"]

[dns.{4000 + site.site_id * 1000 + 1}]
type = "Extension"
contact = "*"
password = "{name.lower()}-secret-1"

[applications.SIPS_{name}]
kind = "sip-server"
host = "{site.node}"
geo-location = "{name.lower()}"
sip-port = {p['sip']}
default-port = {p['default']}
http-port = {p['node_http']}

[applications.Collective_{name}]
kind = "collective"
host = "{site.collective}"
geo-location = "{name.lower()}"
http-port = {p['collective']}

[applications.Collective_{name}.options]
hubs = ["{hub.host}:{hub.rtm_port}"]
spanning-workgroups = ["{WORKGROUP}"]
store = "sqlite:{site.root / name / 'collective.db'}"
rtm-state = "{site.root / name / 'rtm.db'}"

[applications.Collective_{name}.options.home-site]
site-identifier = {site.site_id}
site-name = "{name}"
phone-number = "{phone}"
password = "{password}"
"""
    for peer_id, (peer, _, peer_phone, peer_password) in SITES.items():
        if peer_id == site.site_id:
            continue
        text += f"""
[applications.Collective_{name}.options.peer-sites.{peer}]
site-identifier = {peer_id}
phone-number = "{peer_phone}"
password = "{peer_password}"

[dns.Trunk_Site_{peer}]
type = "Trunk"
contact = "{sites[peer_id].node}:{sites[peer_id].ports['sip']}"
collective-site = "{peer}"
prefix = "{peer_phone}"
"""
    text += f"""
[applications.TC_{name}]
kind = "t-controller"
host = "{site.node}"
sip-server = "SIPS_{name}"
tc-port = {p['tc']}
http-port = {p['tc_http']}
"""
    if "sa" in p:  # the site where the agent logs in: its status-aggregator
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


def _start(site: Site, kind: str, app: str, config: Path) -> Proc:
    proc = Proc([sys.executable, "-m", "daemons.cli", kind, "--config", str(config),
                 "--name", app, "--log-format", "json"], site.root / f"{app}.log",
                env={"SIPCLUSTER_STATE_DIR": str(site.root / "state")}).start()
    site.procs.append(proc)
    return proc


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
def roaming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    root = tmp_path_factory.mktemp("roaming")
    spec = HubSpec("RTM1", HUB_HOST, free_port(HUB_HOST), free_port(HUB_HOST))
    hub_config = write_cluster(root / "hub.toml", [spec],
                               {"store": f"sqlite:{root / 'hub' / 'rtm.db'}", "keep-alive": 1},
                               sites={i: s[3] for i, s in SITES.items()})
    hub = Hub(hub_config, spec, root / "hub.log")
    hub.start()
    sites = {i: Site(i, root / SITES[i][0]) for i in SITES}
    for site in sites.values():
        site.root.mkdir()
        keys = ["sip", "default", "node_http", "collective", "tc", "tc_http"]
        if site.name == "Indy":
            keys += ["sa", "sa_http"]
        for key in keys:
            host = {"collective": site.collective, "sa": site.prefix + "70",
                    "sa_http": site.prefix + "70"}.get(key, site.node)
            site.ports[key] = free_port(host)
    try:
        hub.wait_role("active", 30.0)
        for site in sites.values():
            config = _cluster(site, sites, spec)
            if site.name == "Indy":
                _start(site, "status-aggregator", "SA_Indy", config)
            _start(site, "sip-server", f"SIPS_{site.name}", config)
            _start(site, "collective", f"Collective_{site.name}", config)
        indy = sites[2]
        until(lambda: _healthy(indy.prefix + "70", indy.ports["sa_http"]), 30, "SA_Indy")
        for site in sites.values():
            until(_checker(site.node, site.ports["node_http"]), 30, site.name)
            _start(site, "t-controller", f"TC_{site.name}", site.root / "cluster.toml")
        for site in sites.values():
            until(_checker(site.collective, site.ports["collective"]), 30, site.name)
            until(_checker(site.node, site.ports["tc_http"]), 30, f"TC_{site.name}")
        yield Sites(hub, sites)
    finally:
        for site in sites.values():
            for proc in site.procs:
                proc.stop()
        hub.stop()


def _sipp(tmp: Path, scenario: str, address: str, port: int, target: tuple[str, int],
          service: str, domain: str, *args: str) -> tuple[subprocess.Popen[str], Path]:
    workdir = tmp / f"sipp-{scenario}-{address}-{port}"
    workdir.mkdir()
    cmd = [require_tool("sipp"), f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / scenario),
           "-i", address, "-p", str(port), "-mi", address, "-mp", str(free_port(address)),
           "-s", service, "-t", "u1", "-nostdin", "-trace_err",
           "-error_file", str(workdir / "errors.log"), "-trace_msg",
           "-message_file", str(workdir / "wire.log"), "-timeout", "20s", "-timeout_error",
           "-set", "domain", domain, *args]
    out = (workdir / "stdout.txt").open("w")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TERM": "dumb"})
    return proc, workdir


def _done(run: tuple[subprocess.Popen[str], Path], timeout: float = 25) -> str:
    proc, workdir = run
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    wire = (workdir / "wire.log").read_text(errors="replace") \
        if (workdir / "wire.log").exists() else ""
    assert code == 0, f"sipp exited {code}\n{wire[-4000:]}"
    return wire


def _status(request: urllib.request.Request) -> int:
    with urllib.request.urlopen(request, timeout=5) as resp:
        return int(resp.status)


def _invites(wire: str) -> list[str]:
    return [m for m in wire.split("----------------------------------------------")
            if "INVITE sip:" in m and "received" in m.lower()]


def _phone(tmp: Path, site: Site, dn: str, calls: int) -> tuple[subprocess.Popen[str], Path]:
    """DN ``dn``'s phone registers at the site's node, then answers ``calls`` calls."""
    address = site.prefix + "150"
    port = free_port(address)
    domain = f"{site.name.lower()}.test"
    _done(_sipp(tmp, "register.xml", address, port, (site.node, site.ports["sip"]), dn, domain,
                "-m", "1", "-au", dn, "-ap", f"{site.name.lower()}-secret-1",
                "-set", "expires", "300"))
    return _sipp(tmp, "uas_answer.xml", address, port, ("127.0.0.1", 9), dn, domain,
                 "-m", str(calls))


def _call_from_lyon(tmp: Path, lyon: Site) -> None:
    address = lyon.prefix + "160"
    _done(_sipp(tmp, "uac_inbound.xml", address, free_port(address),
                (lyon.node, lyon.ports["sip"]), "5001", "lyon.test", "-m", "1",
                "-set", "caller", CALLER))


async def test_calls_follow_the_user_to_the_site_it_is_logged_on_at(
        roaming: Sites, tmp_path: Path) -> None:
    boca, indy, lyon = (roaming.sites[i] for i in (1, 2, 3))
    request = urllib.request.Request(
        f"http://{boca.collective}:{boca.ports['collective']}/users/a5001", method="PUT",
        data=json.dumps({"name": "Roamer", "extension": "5001",
                         "workgroups": [WORKGROUP]}).encode(),
        headers={"Content-Type": "application/json"})
    assert await asyncio.to_thread(_status, request) == 200
    await asyncio.to_thread(until, lambda: lyon.locate("5001")["site"] == 1, 15,
                            "a5001 not replicated to Lyon")

    indy_phone = await asyncio.to_thread(_phone, tmp_path, indy, "6001", 2)
    desk = await TLibClient.connect(indy.node, indy.ports["tc"], "Desk", "legacy",
                                    local_addr=(indy.prefix + "151", 0))
    try:
        async with asyncio.timeout(30):
            registered = await desk.request("RequestRegisterAddress", AttributeThisDN="6001")
            assert registered["message"] == "EventRegistered", registered
            # the DN comes in service at the t-controller a moment after the phone's 200
            login = await agent_login(desk, "6001", "a5001", "AutoIn")
            assert login["message"] == "EventAgentLogin", login
        await asyncio.to_thread(until, lambda: lyon.locate("5001")["site"] == 2, 15,
                                "a5001 not located at Indy from Lyon")
        # logged on at Indy: Lyon's call goes straight to Indy's phone
        await asyncio.to_thread(_call_from_lyon, tmp_path, lyon)

        # the hub away: the last site heard of, Indy
        roaming.hub.signal(signal.SIGKILL)
        await asyncio.to_thread(until, lambda: not lyon.locate("5001")["hub_connected"], 15,
                                "Lyon still linked to a killed hub")
        await asyncio.to_thread(_call_from_lyon, tmp_path, lyon)
        wire = await asyncio.to_thread(_done, indy_phone)
        invites = _invites(wire)
        assert len(invites) == 2, wire[-3000:]
        assert all(f"From: <sip:{CALLER}@" in m for m in invites), invites
        assert [e["trunk"] for e in lyon.log_events("SIPS_Lyon", "roaming_call")] == \
            ["Trunk_Site_Indy", "Trunk_Site_Indy"]
        assert [e["hub_connected"] for e in lyon.log_events("SIPS_Lyon", "roaming_call")] == \
            [True, False]
        assert [e["dn"] for e in indy.log_events("SIPS_Indy", "roaming_call")] == \
            ["6001", "6001"]

        # the hub back, the agent logs off at Indy: calls go home again
        roaming.hub.start()
        await asyncio.to_thread(roaming.hub.wait_role, "active", 30.0)
        await asyncio.to_thread(until, lambda: lyon.locate("5001")["hub_connected"], 20,
                                "Lyon not back on the hub")
        async with asyncio.timeout(5):
            await desk.request("RequestAgentLogout", AttributeThisDN="6001")
    finally:
        await desk.close()
    await asyncio.to_thread(until, lambda: lyon.locate("5001")["site"] == 1, 15,
                            "the log-off not seen at Lyon")
    boca_phone = await asyncio.to_thread(_phone, tmp_path, boca, "5001", 1)
    await asyncio.to_thread(_call_from_lyon, tmp_path, lyon)
    home = _invites(await asyncio.to_thread(_done, boca_phone))
    assert len(home) == 1 and f"From: <sip:{CALLER}@" in home[0], home
    assert lyon.log_events("SIPS_Lyon", "roaming_call")[-1]["trunk"] == "Trunk_Site_Boca"
