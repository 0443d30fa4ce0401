"""The T-Controller mesh with four t-controllers in two data centres
(DC1 = 127.61.1.x, DC2 = 127.61.2.x), each beside a stand-in sip-server
(``FakeNode`` of conftest.py): remote desktops, ownership moves, link loss and
the guide's disaster-recovery scenarios, the Smart Proxy, latency polls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from daemons.cluster.config import OwnershipKind
from daemons.lab.partition import PartitionError, heal, partition
from daemons.t_controller.agent import AgentSnapshot, AgentState, AgentWorkMode
from daemons.t_controller.controller import decision_of
from daemons.t_controller.ownership import OwnershipGranted, OwnershipMoved, OwnershipReleased
from daemons.t_controller.service import TControllerService
from protocols.tlib.mesh import DnGranted, DnMoved, DnReleased, decode_event

NODES = [("A", "127.61.1.11", "dc1"), ("B", "127.61.1.12", "dc1"),
         ("C", "127.61.2.11", "dc2"), ("D", "127.61.2.12", "dc2")]


def cluster4(node_ports: dict[str, int], tc_ports: dict[str, int], *, smart_proxy: bool,
             reconnect: int = 1, auto_restore: bool = False, tserver: str = "") -> str:
    apps = ", ".join(f'"SIPS_{n}"' for n, _, _ in NODES)
    text = f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[switch.tserver]
logout-on-disconnect = true
{tserver}

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = [{apps}]
dn-owner-applications = ["Cluster"]
addp-timeout = 1
addp-remote-timeout = 1
tc-reconnect-timeout = {reconnect}
tc-latency-poll-interval = 0.2
smart-proxy-enabled = {"true" if smart_proxy else "false"}
agent-state-auto-restore = {"true" if auto_restore else "false"}

[dns.5000]
type = "RoutingPoint"

[dns.2001]
type = "Extension"
contact = "sip:+15550102001@127.0.0.1:5999"
"""
    for i in range(1, 9):
        text += f'\n[dns.100{i}]\ntype = "Extension"\ncontact = "*"\npassword = "s-100{i}-x"\n'
    for n, host, geo in NODES:
        text += f"""
[applications.SIPS_{n}]
kind = "sip-server"
host = "127.0.0.1"
geo-location = "{geo}"
sip-port = {5060 + ord(n)}
default-port = {node_ports[n]}

[applications.TC_{n}]
kind = "t-controller"
host = "{host}"
sip-server = "SIPS_{n}"
tc-port = {tc_ports[n]}
smart-proxy-port = 0
http-port = 0
"""
    return text


class Cluster:
    def __init__(self, kit: Any, tmp_path: Path, free_port: Any) -> None:
        self.kit = kit
        self.tmp_path = tmp_path
        self.free_port = free_port
        self.nodes: dict[str, Any] = {}
        self.services: dict[str, TControllerService] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.desktops: list[Any] = []
        self.path = tmp_path / "cluster.toml"

    async def start(self, **options: Any) -> None:
        for n, _, _ in NODES:
            node = self.kit.FakeNode()
            await node.start()
            self.nodes[n] = node
        tc_ports = {n: self.free_port(host) for n, host, _ in NODES}
        self.path.write_text(cluster4({n: self.nodes[n].port for n in self.nodes}, tc_ports,
                                      **options))
        for n, _, _ in NODES:
            await self.start_tc(n)
        await self.until(lambda: all(
            p.link_up and p.conn is not None
            for s in self.services.values() if s.mesh for p in s.mesh.peers.values()))

    async def start_tc(self, n: str) -> None:
        service, task = await self.kit.start_service(self.path, f"TC_{n}")
        self.services[n], self.tasks[n] = service, task
        assert service.node_link is not None
        async with asyncio.timeout(5):
            await service.node_link.wait_up()

    async def stop_tc(self, n: str) -> None:
        await self.kit.stop_service(self.services[n], self.tasks[n])

    def tc(self, n: str) -> Any:
        controller = self.services[n].controller
        assert controller is not None
        return controller

    async def until(self, predicate: Any, timeout: float = 8.0) -> None:
        await self.kit.wait_until(predicate, timeout)

    async def owned(self, dn: str, n: str) -> None:
        """Every t-controller agrees that SIPS_n owns ``dn``."""
        await self.until(lambda: all(self.tc(x).ownership.owner(dn) == f"SIPS_{n}"
                                     for x in self.services
                                     if not self.tasks[x].done()))

    async def desktop(self, n: str, app: str = "wwe", address: str = "tc") -> Any:
        service = self.services[n]
        where = service.tc_address if address == "tc" else service.smart_proxy_address
        assert where is not None
        desk = await self.kit.Desktop.connect(where, app, "legacy")
        self.desktops.append(desk)
        return desk

    async def close(self) -> None:
        for d in self.desktops:
            with contextlib.suppress(Exception):
                await d.close()
        for n, task in self.tasks.items():
            if not task.done():
                await self.kit.stop_service(self.services[n], task)
        for node in self.nodes.values():
            await node.close()


@pytest.fixture
async def cluster(kit: Any, tmp_path: Path, free_port: Any) -> AsyncIterator[Cluster]:
    c = Cluster(kit, tmp_path, free_port)
    yield c
    await c.close()


def answer_with(name: str) -> Any:
    """A FakeNode answer: the event the request causes, with its ReferenceID."""
    def answer(conn: Any, request: Any) -> None:
        message = request.message
        conn.answer(request, name, {"AttributeThisDN": message["AttributeThisDN"],
                                    "AttributeConnID": message["AttributeConnID"],
                                    "AttributeOtherDN": "+15551230000"})
    return answer


def names(desk: Any, dn: str | None = None) -> list[str]:
    return [e["message"] for e in desk.events
            if dn is None or e.get("AttributeThisDN") == dn]


async def test_desktop_on_another_node_sees_call_of_a_third_node(cluster: Cluster) -> None:
    """Phone of 1001 on node A (DC1), desktop on node B... of DC2 (D), call on
    node C: the desktop sees the whole sequence in order, and its call control
    reaches the node of the call through the owner."""
    await cluster.start(smart_proxy=False, tserver="wrap-up-time = 1")
    cluster.nodes["A"].register("1001", "sip:1001@127.0.0.1:5099")
    await cluster.owned("1001", "A")
    desk = await cluster.desktop("D")
    registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    assert registered["message"] == "EventRegistered"
    assert registered["AttributeExtensions"]["owner"] == "SIPS_A"
    assert registered["AttributeExtensions"]["dn-state"] == "in-service"
    login = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                               AttributeAgentID="a1001")
    assert login["message"] == "EventAgentLogin"
    ready = await desk.request("RequestAgentReady", AttributeThisDN="1001")
    assert ready["message"] == "EventAgentReady"
    assert ready["AttributeReason"] == {"site": "dc1"}  # the owner's site
    assert cluster.tc("A").agents.state("1001").value == "Ready"

    node_c = cluster.nodes["C"]
    node_c.answers["RequestAnswerCall"] = answer_with("EventEstablished")
    node_c.answers["RequestReleaseCall"] = answer_with("EventReleased")
    node_c.call("EventRinging", "1001", "00c1", AttributeOtherDN="+15551230000",
                AttributeThisDNRole="Destination")
    await desk.wait_for("EventRinging")
    assert cluster.tc("A").agents.on_call("1001")
    answered = await desk.request("RequestAnswerCall", AttributeThisDN="1001",
                                  AttributeConnID="00c1")
    assert answered["message"] == "EventEstablished"
    assert [r["message"] for r in node_c.requests] == ["RequestAnswerCall"]
    released = await desk.request("RequestReleaseCall", AttributeThisDN="1001",
                                  AttributeConnID="00c1")
    assert released["message"] == "EventReleased"
    await desk.wait_for("EventAgentReady", count=2)
    assert names(desk) == [
        "EventRegistered", "EventAgentLogin", "EventAgentReady", "EventRinging",
        "EventEstablished", "EventReleased", "EventAgentNotReady", "EventAgentReady"]
    acw = desk.of("EventAgentNotReady")[0]
    assert acw["AttributeAgentWorkMode"] == "AfterCallWork"
    # every event once, the answers with the desktop's own ReferenceIDs
    references = [e.get("AttributeReferenceID") for e in desk.events]
    assert references[:3] == [registered["AttributeReferenceID"],
                              login["AttributeReferenceID"], ready["AttributeReferenceID"]]
    assert references[4] == answered["AttributeReferenceID"]
    # node C's own clients did not get the events of a DN it does not own twice
    assert [r["message"] for r in node_c.requests] == ["RequestAnswerCall",
                                                       "RequestReleaseCall"]


async def test_link_cut_between_data_centres_and_heal(cluster: Cluster) -> None:
    await cluster.start(smart_proxy=False, reconnect=1)
    cluster.nodes["A"].register("1001")
    cluster.nodes["C"].register("1003")
    await cluster.owned("1001", "A")
    await cluster.owned("1003", "C")
    desk_a = await cluster.desktop("A")
    for dn in ("1001", "1003"):
        await desk_a.request("RequestRegisterAddress", AttributeThisDN=dn)
    await desk_a.request("RequestAgentLogin", AttributeThisDN="1003", AttributeAgentID="a3")
    try:
        partition(cluster.tmp_path, *_subnets())
    except PartitionError as exc:
        pytest.skip(f"no nftables: {exc}")
    try:
        # 1 + 1 s ADDP, then tc-reconnect-timeout = 1 s
        await desk_a.wait_for("EventDNOutOfService", AttributeThisDN="1003", timeout=10)
        assert cluster.tc("A").ownership.owner("1003") is None
        assert cluster.tc("C").ownership.owner("1001") is None
        assert cluster.tc("B").ownership.owner("1001") == "SIPS_A"  # same side: still there
        # D's view of the agent on 1003 (logged in from a desktop in DC1): logged out
        logout = await desk_a.wait_for("EventAgentLogout", AttributeThisDN="1003")
        assert logout["AttributeAgentID"] == "a3"
        await cluster.until(lambda: cluster.tc("C").agents.agent("1003") is None)
        # local routing goes on: DC1 serves its own DN
        login = await desk_a.request("RequestAgentLogin", AttributeThisDN="1001",
                                     AttributeAgentID="a1")
        assert login["message"] == "EventAgentLogin"
        cluster.nodes["A"].call("EventRinging", "1001", "00a1")
        await desk_a.wait_for("EventRinging", AttributeThisDN="1001")
    finally:
        heal(cluster.tmp_path)
    back = await desk_a.wait_for("EventDNBackInService", AttributeThisDN="1003", timeout=15)
    assert back["AttributeExtensions"]["owner"] == "SIPS_C"
    assert back["AttributeExtensions"]["dn-state"] == "in-service"
    await cluster.owned("1001", "A")
    await cluster.owned("1003", "C")


async def test_owner_forgets_the_calls_of_a_lost_node_until_it_repeats_them(
        cluster: Cluster) -> None:
    """Guide, "TC-layer between DC1 and DC2 fails", Agent 2: DN owned in DC2
    (D), its call on a DC1 node (B). Once D declares B lost, the call no
    longer counts there: no call reported, no release sent, the agent can log
    in. When the link is back B repeats the call, D knows it again (the desktop
    is told), and call control reaches B again."""
    await cluster.start(smart_proxy=False, reconnect=1)
    cluster.nodes["D"].register("1004")
    await cluster.owned("1004", "D")
    owner = cluster.tc("D")
    desk = await cluster.desktop("D")
    await desk.request("RequestRegisterAddress", AttributeThisDN="1004")
    node_b = cluster.nodes["B"]
    node_b.answers["RequestReleaseCall"] = answer_with("EventReleased")
    node_b.call("EventRinging", "1004", "00b4", AttributeOtherDN="+15551230000")
    node_b.call("EventEstablished", "1004", "00b4", AttributeOtherDN="+15551230000")
    await desk.wait_for("EventEstablished", AttributeConnID="00b4")
    assert owner.agents.on_call("1004")
    assert owner.peers.call_nodes["00b4"] == "SIPS_B"
    try:
        partition(cluster.tmp_path, *_subnets())
    except PartitionError as exc:
        pytest.skip(f"no nftables: {exc}")
    try:
        await cluster.until(lambda: not owner.agents.on_call("1004"), timeout=10)
        assert "00b4" not in owner.peers.call_nodes
        assert owner.dn_state("1004")["on-call"] is False
        registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1004")
        assert registered["AttributeExtensions"]["on-call"] is False  # no call reported
        login = await desk.request("RequestAgentLogin", AttributeThisDN="1004",
                                   AttributeAgentID="a4")
        assert login["message"] == "EventAgentLogin"
        assert "EventReleased" not in names(desk, "1004")  # the call is not over
        # the node of the call still knows it
        assert ("1004", "00b4") in cluster.tc("B").node_calls
    finally:
        heal(cluster.tmp_path)
    await cluster.until(lambda: owner.agents.on_call("1004"), timeout=15)
    assert owner.peers.call_nodes["00b4"] == "SIPS_B"
    again = await desk.wait_for("EventEstablished", count=2, AttributeConnID="00b4")
    assert again["AttributeThisDN"] == "1004"
    released = await desk.request("RequestReleaseCall", AttributeThisDN="1004",
                                  AttributeConnID="00b4")
    assert released["message"] == "EventReleased", released
    assert [r["message"] for r in node_b.requests] == ["RequestReleaseCall"]
    await cluster.until(lambda: not owner.agents.on_call("1004"))
    assert ("1004", "00b4") not in cluster.tc("B").node_calls
    # the repeat came once to the desktop, however many times B sent it
    assert [n for n in names(desk, "1004") if n in ("EventRinging", "EventEstablished")] == [
        "EventRinging", "EventEstablished", "EventEstablished"]


def _subnets() -> tuple[Any, Any]:
    import ipaddress
    return ipaddress.ip_network("127.61.1.0/24"), ipaddress.ip_network("127.61.2.0/24")


async def test_dr_desktop_reconnects_to_another_node(cluster: Cluster) -> None:
    """Guide, "WWE reconnects to a new GWS API node": the agent stays on the
    call, is logged out, cannot log in while the call lasts; ownership moves
    to the new node once the call is over."""
    await cluster.start(smart_proxy=False)
    gws1 = await cluster.desktop("A", app="Cluster")
    await gws1.request("RequestRegisterAddress", AttributeThisDN="2001")
    await cluster.owned("2001", "A")
    await gws1.request("RequestAgentLogin", AttributeThisDN="2001", AttributeAgentID="a2")
    cluster.nodes["A"].call("EventEstablished", "2001", "0a01", AttributeOtherDN="5000")
    await gws1.wait_for("EventEstablished")
    await gws1.close()
    await cluster.until(lambda: cluster.tc("A").agents.agent("2001") is None)
    gws2 = await cluster.desktop("B", app="Cluster")
    registered = await gws2.request("RequestRegisterAddress", AttributeThisDN="2001")
    assert registered["AttributeExtensions"]["on-call"] is True  # the call is reported
    refused = await gws2.request("RequestAgentLogin", AttributeThisDN="2001",
                                 AttributeAgentID="a2")
    assert refused["message"] == "EventError"
    assert cluster.tc("A").ownership.owner("2001") == "SIPS_A"  # waits for the call
    cluster.nodes["A"].call("EventReleased", "2001", "0a01")
    await cluster.owned("2001", "B")
    login = await gws2.request("RequestAgentLogin", AttributeThisDN="2001",
                               AttributeAgentID="a2")
    assert login["message"] == "EventAgentLogin"
    assert cluster.tc("B").agents.state("2001").value == "NotReady"


async def test_dr_desktop_loses_its_node(cluster: Cluster) -> None:
    """Guide, "GWS disconnects from SIP Server": logout-on-disconnect, the call
    is preserved and still reported."""
    await cluster.start(smart_proxy=False)
    cluster.nodes["A"].register("1002")
    await cluster.owned("1002", "A")
    supervisor = await cluster.desktop("C", app="supervisor")
    await supervisor.request("RequestRegisterAddress", AttributeThisDN="1002")
    gws = await cluster.desktop("A")
    await gws.request("RequestRegisterAddress", AttributeThisDN="1002")
    await gws.request("RequestAgentLogin", AttributeThisDN="1002", AttributeAgentID="a2")
    cluster.nodes["A"].call("EventEstablished", "1002", "0b01")
    await supervisor.wait_for("EventEstablished")
    await gws.close()
    logout = await supervisor.wait_for("EventAgentLogout")
    assert logout["AttributeReason"] == {"cause": "logout-on-disconnect"}
    assert cluster.tc("A").agents.on_call("1002")  # the call goes on
    cluster.nodes["A"].call("EventReleased", "1002", "0b01")
    await supervisor.wait_for("EventReleased")


async def test_dr_softphone_reregisters_in_other_data_centre(cluster: Cluster) -> None:
    """Guide, "Softphone disconnects from DC1": no call, no ACW: the old owner
    logs the agent out and moves the ownership at once."""
    await cluster.start(smart_proxy=False)
    cluster.nodes["A"].register("1004")
    await cluster.owned("1004", "A")
    gws = await cluster.desktop("B")
    await gws.request("RequestRegisterAddress", AttributeThisDN="1004")
    await gws.request("RequestAgentLogin", AttributeThisDN="1004", AttributeAgentID="a4")
    cluster.nodes["C"].register("1004", "sip:1004@127.0.0.1:5104")
    await cluster.owned("1004", "C")
    logout = await gws.wait_for("EventAgentLogout")
    assert logout["AttributeReason"] == {"cause": "ownership-moved"}
    assert cluster.tc("A").agents.agent("1004") is None
    again = await gws.request("RequestAgentLogin", AttributeThisDN="1004",
                              AttributeAgentID="a4")
    assert again["message"] == "EventAgentLogin"
    assert cluster.tc("C").agents.agent("1004") is not None


async def test_agent_state_auto_restore_on_move(cluster: Cluster) -> None:
    await cluster.start(smart_proxy=False, auto_restore=True)
    cluster.nodes["A"].register("1005")
    await cluster.owned("1005", "A")
    gws = await cluster.desktop("D")
    await gws.request("RequestRegisterAddress", AttributeThisDN="1005")
    await gws.request("RequestAgentLogin", AttributeThisDN="1005", AttributeAgentID="a5")
    await gws.request("RequestAgentReady", AttributeThisDN="1005")
    cluster.nodes["D"].register("1005", "sip:1005@127.0.0.1:5105")
    await cluster.owned("1005", "D")
    await cluster.until(lambda: cluster.tc("D").agents.state("1005").value == "Ready")
    await gws.wait_for("EventAgentReady", count=2)
    assert names(gws)[-3:] == ["EventAgentLogout", "EventAgentLogin", "EventAgentReady"]


@pytest.mark.parametrize("optimised", [True, False], ids=["optimised", "normal"])
async def test_smart_proxy_client_sees_every_dn_of_four_nodes(cluster: Cluster,
                                                              optimised: bool) -> None:
    await cluster.start(smart_proxy=optimised)
    owners = {"1001": "A", "1002": "B", "1003": "C", "1004": "D"}
    for dn, n in owners.items():
        cluster.nodes[n].register(dn)
    for dn, n in owners.items():
        await cluster.owned(dn, n)
    statserver = await cluster.desktop("A", app="statserver", address="sp")
    if optimised:
        proxy = cluster.services["A"].smart_proxy
        assert proxy is not None
        await cluster.until(lambda: proxy.bulk_up() == 3)
    for dn, n in owners.items():
        info = await statserver.request("RequestRegisterAddress", AttributeThisDN=dn)
        assert info["AttributeExtensions"]["owner"] == f"SIPS_{n}"
        assert info["AttributeExtensions"]["dn-state"] == "in-service"
    for dn, n in owners.items():
        desk = await cluster.desktop(n)
        await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
        await desk.request("RequestAgentLogin", AttributeThisDN=dn, AttributeAgentID=f"a{dn}")
        cluster.nodes[n].call("EventRinging", dn, f"0{dn}")
    for dn in owners:
        await statserver.wait_for("EventAgentLogin", AttributeThisDN=dn)
        await statserver.wait_for("EventRinging", AttributeThisDN=dn)
    counted = [(e["message"], e["AttributeThisDN"]) for e in statserver.events
               if e["message"] in ("EventAgentLogin", "EventRinging")]
    assert len(counted) == len(set(counted)) == 8  # each exactly once
    # the optimised mode sends nothing between t-controllers nobody asked for
    mesh_tx = sum(_metric(cluster.services[n], "tcontroller_mesh_messages_total",
                          direction="tx") for n in owners.values())
    assert (mesh_tx < 40) is optimised
    # DNs coming into service now: one EventDNBackInService each, the same shape
    # for the DN of another node and for the Smart Proxy's own node's
    cluster.nodes["C"].register("1005", "sip:1005@127.0.0.1:5105")
    cluster.nodes["A"].register("1006", "sip:1006@127.0.0.1:5106")
    for dn, n in (("1005", "C"), ("1006", "A")):
        await cluster.owned(dn, n)
        # a later event of the owner's node: whatever it sent before has arrived
        cluster.nodes[n].call("EventRinging", dn, f"0{dn}")
        await statserver.wait_for("EventRinging", AttributeThisDN=dn)
        back = [e for e in statserver.of("EventDNBackInService")
                if e["AttributeThisDN"] == dn]
        assert len(back) == 1, back
        ext = back[0]["AttributeExtensions"]
        assert {k: ext.get(k) for k in ("owner", "ownership", "dn-state", "agent-state",
                                        "on-call")} == {
            "owner": f"SIPS_{n}", "ownership": "sip", "dn-state": "in-service",
            "agent-state": "LoggedOut", "on-call": False}
        assert ext["contact"] == f"sip:{dn}@127.0.0.1:51{dn[-2:]}"


def _metric(service: TControllerService, name: str, **labels: str) -> float:
    total = 0.0
    for family in service.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "sipcluster_" + name and all(
                    sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_latency_polls_on_status_peers_and_metrics(cluster: Cluster) -> None:
    await cluster.start(smart_proxy=False)
    service = cluster.services["A"]
    url = f"http://127.61.1.11:{service.management.port}"

    def get(path: str) -> bytes:
        with urllib.request.urlopen(url + path, timeout=5) as resp:
            return bytes(resp.read())

    page: dict[str, Any] = {}

    async def polled() -> bool:
        nonlocal page
        page = json.loads(await asyncio.to_thread(get, "/status/peers"))
        return all(p["LAST_TS"] for p in page["peers"].values())

    for _ in range(80):
        if await polled():
            break
        await asyncio.sleep(0.1)
    assert set(page["peers"]) == {"TC_B", "TC_C", "TC_D"}
    for peer in page["peers"].values():
        assert peer["client-connection"] == "up" and peer["server-connection"] == "up"
        assert peer["RTT"] is not None and peer["RTT"] >= 0
        assert peer["TXT"] is not None and peer["RXT"] is not None
        assert peer["TX_QUEUE_LEN"] == 0 and peer["RX_QUEUE_LEN"] == 0
    metrics = (await asyncio.to_thread(get, "/metrics")).decode()
    assert 'sipcluster_tcontroller_peer_latency_seconds{peer="TC_C",stat="rtt"}' in metrics
    assert 'sipcluster_tcontroller_peer_queue_bytes{peer="TC_D",queue="tx"}' in metrics


def dropped(service: TControllerService, reason: str) -> float:
    """``tcontroller_mesh_dropped{reason}`` of one t-controller."""
    value = service.metrics.registry.get_sample_value(
        "sipcluster_tcontroller_mesh_dropped_total", {"reason": reason})
    return value or 0.0


async def test_malformed_mesh_messages_are_refused_and_the_mesh_keeps_serving(
        cluster: Cluster) -> None:
    """A decision with no owner is counted (bad-decision) and not applied; a
    peer's malformed request gets EventError 41 (malformed); the links go on."""
    await cluster.start(smart_proxy=False)
    a = cluster.services["A"]
    # B's connection to A's link: B's events for A go there
    to_a = cluster.tc("B").peers.peers["SIPS_A"].conn
    assert to_a is not None
    to_a.send_event("EventDNBackInService", {
        "AttributeThisDN": "1001",
        "AttributeExtensions": {"mesh": "granted", "ownership": "sip", "since": 1.0}})
    await cluster.until(lambda: dropped(a, "bad-decision") == 1)
    assert cluster.tc("A").ownership.owner("1001") is None
    cluster.nodes["B"].register("1001")
    await cluster.owned("1001", "B")  # the next decision on the same link is applied

    # A's TCport, as B's link to it: B's own link to A stops, a stand-in takes its place
    link = cluster.tc("B").peers.peers["SIPS_A"].link
    assert link is not None
    await link.stop()
    await cluster.until(lambda: cluster.tc("A").peers.peers["SIPS_B"].conn is None)
    peer = await cluster.kit.Desktop.connect(a.tc_address, "TC_B", "smart")
    cluster.desktops.append(peer)
    await cluster.until(lambda: cluster.tc("A").peers.peers["SIPS_B"].conn is not None)
    refused = await peer.request("RequestRegisterAddress", AttributeThisDN="1002",
                                 AttributeExtensions={"mesh": "claim", "mesh-node": 7,
                                                      "mesh-kind": "sip"})
    assert refused["message"] == "EventError" and refused["AttributeErrorCode"] == 41
    assert "mesh-node" in refused["AttributeErrorMessage"]
    refused = await peer.request("RequestAgentReady", AttributeThisDN="1001",
                                 AttributeExtensions={"mesh-client": ["wwe"]})
    assert refused["message"] == "EventError" and refused["AttributeErrorCode"] == 41
    assert dropped(a, "malformed") == 2
    assert cluster.tc("A").ownership.owner("1002") is None
    interest = await peer.request("RequestRegisterAddress", AttributeThisDN="1001",
                                  AttributeExtensions={"mesh": "interest"})
    assert interest["message"] == "EventRegistered"
    assert interest["AttributeExtensions"]["owner"] == "SIPS_B"
    assert "1001" in cluster.tc("A").peers.peers["SIPS_B"].interests


async def test_ownership_decisions_on_the_mesh_and_back(make_harness: Any) -> None:
    """Each kind of ownership decision, as the owner puts it on the mesh and
    as a peer takes it back (times through Unix seconds, the agent of a move)."""
    h = await make_harness(registered={"1001": "sip:1001@127.0.0.1:5099"})
    controller = h.service.controller
    now = controller.clock()
    agent = AgentSnapshot("a2001", "2001", AgentState.READY, AgentWorkMode.MANUAL_IN,
                          MappingProxyType({"ReasonCode": "7"}))
    decisions = [
        OwnershipGranted("1001", "SIPS_1", OwnershipKind.SIP, now - 5.0),
        OwnershipGranted("2001", "SIPS_1", OwnershipKind.TLIB, now - 1.0, now + 30.0),
        OwnershipMoved("2001", "SIPS_1", "SIPS_2", OwnershipKind.TLIB, now, None, agent),
        OwnershipReleased("1001", "SIPS_1", "unregistered"),
    ]
    for decision, kind in zip(decisions, (DnGranted, DnGranted, DnMoved, DnReleased),
                              strict=True):
        message = controller.decision_message(decision)
        assert type(message) is kind
        received = decode_event(*message.to_wire())
        assert received == message
        assert isinstance(received, DnGranted | DnMoved | DnReleased)
        back = decision_of(received, now, "SIPS_1")
        if isinstance(decision, OwnershipReleased):
            assert back == decision
            continue
        assert isinstance(back, OwnershipGranted | OwnershipMoved)
        assert back.since == pytest.approx(decision.since, abs=0.01)
        if decision.expires is None:
            assert back.expires is None
        else:
            assert back.expires == pytest.approx(decision.expires, abs=0.01)
        assert dataclasses.replace(back, since=decision.since,
                                   expires=decision.expires) == decision
    granted = controller.decision_message(decisions[0])
    assert isinstance(granted, DnGranted)
    assert granted.state["dn-state"] == "in-service"
    assert granted.announced_attributes()["AttributeExtensions"]["owner"] == "SIPS_1"
