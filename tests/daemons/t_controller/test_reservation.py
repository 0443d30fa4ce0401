"""Agent reservation (docs/t-controller.md, "Agent reservation"; guide: "Agent
Reservation in SIP Cluster"): the collection window, priorities, conflicts,
expiry and consumption with a fake clock; then RequestReserveAgent against a
running t-controller, and across two data centres (DC1 = 127.0.140.x,
DC2 = 127.0.141.x) through the mesh and across a cut between them."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemons.lab.partition import PartitionError, heal, partition
from daemons.t_controller.reservation import (
    Refused,
    ReservationGranted,
    ReservationRequest,
    ReservationTable,
)
from protocols.tlib.errors import ErrorCode

# -- the table, with a fake clock --------------------------------------------------------


class Agents:
    """What the table asks of the agent table: availability and offered calls."""

    def __init__(self) -> None:
        self.available = {"1001": True, "1002": True}
        self.calls = {"1001": 0, "1002": 0}

    def check(self, dn: str, agent_id: str | None) -> tuple[ErrorCode, str] | None:
        if dn not in self.available:
            return ErrorCode.UNKNOWN_DN, "unknown"
        if not self.available[dn]:
            return ErrorCode.AGENT_NOT_AVAILABLE, "not ready"
        return None

    def offered(self, dn: str) -> int:
        return self.calls.get(dn, 0)


def table(agents: Agents, collection: float = 0.3, timeout: float = 6.0) -> ReservationTable:
    return ReservationTable(agents.check, agents.offered, collection_time=collection,
                            default_timeout=timeout)


def req(holder: str, dn: str = "1001", priority: int = 0, **kw: Any) -> ReservationRequest:
    return ReservationRequest(dn=dn, holder=holder, token=holder, priority=priority, **kw)


def test_highest_priority_in_the_window_wins_and_the_others_conflict() -> None:
    agents = Agents()
    t = table(agents)
    assert t.request(req("urs1", priority=1), 10.0) == []
    assert t.request(req("urs2", priority=8), 10.1) == []
    assert t.request(req("urs3", priority=8), 10.2) == []
    assert t.next_timer() == pytest.approx(10.3)
    assert t.handle_timer(10.29) == []  # the window is still open
    out = t.handle_timer(10.3)
    granted = [o for o in out if isinstance(o, ReservationGranted)]
    refused = [o for o in out if isinstance(o, Refused)]
    assert [g.request.holder for g in granted] == ["urs2"]  # 8 beats 1; urs2 came first
    assert sorted(r.request.holder for r in refused) == ["urs1", "urs3"]
    assert {r.code for r in refused} == {ErrorCode.AGENT_RESERVATION_CONFLICT}
    assert t.next_timer() is None
    held = t.reservation("1001", 10.4)
    assert held is not None and held.holder == "urs2" and held.expires == pytest.approx(16.3)


def test_a_held_agent_is_refused_at_once_and_other_agents_are_independent() -> None:
    agents = Agents()
    t = table(agents)
    t.request(req("urs1"), 0.0)
    t.handle_timer(0.3)
    late = t.request(req("urs2", priority=99), 1.0)
    assert len(late) == 1 and isinstance(late[0], Refused)
    assert late[0].code is ErrorCode.AGENT_RESERVATION_CONFLICT
    assert "urs1" in late[0].text
    # the same holder asking again for the same call keeps its reservation
    again = t.request(req("urs1"), 1.0)
    assert isinstance(again[0], ReservationGranted)
    # another agent has its own window
    assert t.request(req("urs2", dn="1002"), 1.0) == []
    assert [type(o) for o in t.handle_timer(1.3)] == [ReservationGranted]


def test_reservation_expires_without_a_call_and_ends_with_the_next_call() -> None:
    agents = Agents()
    t = table(agents, timeout=6.0)
    t.request(req("urs1"), 0.0)
    t.handle_timer(0.3)
    assert t.reservation("1001", 6.29) is not None
    assert t.reservation("1001", 6.3) is None  # no call followed: the hold lapsed
    assert t.counts["expired"] == 1
    t.request(req("urs2", timeout=20.0), 7.0)
    t.handle_timer(7.3)
    assert t.reservation("1001", 8.0) is not None
    agents.calls["1001"] += 1  # the routed call rings on the DN
    assert t.reservation("1001", 8.1) is None
    assert t.counts["consumed"] == 1


def test_availability_is_checked_on_arrival_and_when_the_window_closes() -> None:
    agents = Agents()
    t = table(agents)
    agents.available["1001"] = False
    out = t.request(req("urs1"), 0.0)
    assert len(out) == 1 and isinstance(out[0], Refused)
    assert out[0].code is ErrorCode.AGENT_NOT_AVAILABLE
    agents.available["1001"] = True
    t.request(req("urs1"), 1.0)
    t.request(req("urs2"), 1.1)
    agents.available["1001"] = False  # went Not Ready inside the window
    out = t.handle_timer(1.3)
    assert [type(o) for o in out] == [Refused, Refused]
    assert {o.code for o in out if isinstance(o, Refused)} == {ErrorCode.AGENT_NOT_AVAILABLE}
    assert t.reservation("1001", 1.4) is None


def test_zero_collection_time_decides_at_once_and_a_gone_holder_lets_go() -> None:
    agents = Agents()
    t = table(agents, collection=0.0)
    out = t.request(req("urs1"), 0.0)
    assert [type(o) for o in out] == [ReservationGranted]
    t.drop_holder("urs1")
    out = t.request(req("urs2"), 0.1)
    assert [type(o) for o in out] == [ReservationGranted]


# -- one running t-controller -------------------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def _ready_agent(h: Any, dn: str = "1001", agent_id: str = "a1001") -> Any:
    desk = await h.desktop("wwe")
    await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
    login = await desk.request("RequestAgentLogin", AttributeThisDN=dn, AttributeAgentID=agent_id,
                               AttributeAgentWorkMode="AutoIn")
    assert login["message"] == "EventAgentLogin"
    await desk.wait_for("EventAgentReady", AttributeThisDN=dn)
    return desk


async def test_two_routers_one_reservation(make_harness: Any) -> None:
    h = await make_harness(registered={"1001": "sip:1001@127.0.0.1:5099"},
                           tserver="request-collection-time = 0.3")
    await _ready_agent(h)
    watcher = await h.desktop("URS_3")  # another router, watching the agent's DN
    await watcher.request("RequestRegisterAddress", AttributeThisDN="1001")
    urs1, urs2 = await h.desktop("URS_1", "smart"), await h.desktop("URS_2", "smart")
    a, b = await asyncio.gather(
        urs1.request("RequestReserveAgent", AttributeThisDN="1001", AttributePriority=1,
                     AttributeConnID="00c1"),
        urs2.request("RequestReserveAgent", AttributeThisDN="1001", AttributePriority=4,
                     AttributeConnID="00c2"))
    assert a["message"] == "EventError"
    assert a["AttributeErrorCode"] == ErrorCode.AGENT_RESERVATION_CONFLICT
    assert b["message"] == "EventAgentReserved"
    assert b["AttributeAgentID"] == "a1001" and b["AttributeConnID"] == "00c2"
    # the DN's other clients learn that the agent is taken, and by whom
    seen = await watcher.wait_for("EventAgentReserved", AttributeThisDN="1001")
    assert "AttributeReferenceID" not in seen
    assert seen["AttributeExtensions"]["holder"].startswith("URS_2")
    assert len(urs2.of("EventAgentReserved")) == 1  # the holder: its answer only
    # held: a later request is refused at once
    late = await urs1.request("RequestReserveAgent", AttributeThisDN="1001")
    assert late["AttributeErrorCode"] == ErrorCode.AGENT_RESERVATION_CONFLICT
    # the routed call reaches the agent: the reservation is used up ...
    h.node.call("EventRinging", "1001", "00c2")
    h.node.call("EventReleased", "1001", "00c2")
    await h.until(lambda: not h.service.controller.agents.on_call("1001")
                  and h.service.controller.agents.offered("1001") == 1)
    # ... and the agent can be reserved for the next call
    again = await urs1.request("RequestReserveAgent", AttributeThisDN="1001")
    assert again["message"] == "EventAgentReserved"
    metrics = await asyncio.to_thread(_get, h.http + "/metrics")
    assert 'tcontroller_agent_reservations_total{outcome="granted"} 2.0' in metrics
    assert 'tcontroller_agent_reservations_total{outcome="conflict"} 2.0' in metrics


async def test_reservation_refusals(make_harness: Any) -> None:
    h = await make_harness(registered={"1001": "sip:1001@127.0.0.1:5099",
                                       "1002": "sip:1002@127.0.0.1:5098"},
                           tserver="request-collection-time = 0.05")
    desk = await _ready_agent(h)
    urs = await h.desktop("URS_1", "smart")
    cases = [
        ({"AttributeThisDN": "9999"}, ErrorCode.UNKNOWN_DN),
        ({"AttributeThisDN": "1001", "AttributeAgentID": "nobody"}, ErrorCode.UNKNOWN_AGENT),
        ({"AttributeThisDN": "1002"}, ErrorCode.AGENT_NOT_LOGGED_IN),
        ({"AttributeThisDN": "2001"}, ErrorCode.DN_OUT_OF_SERVICE),
    ]
    for attributes, code in cases:
        answer = await urs.request("RequestReserveAgent", **attributes)
        assert answer["message"] == "EventError", attributes
        assert answer["AttributeErrorCode"] == code, attributes
    await desk.request("RequestAgentNotReady", AttributeThisDN="1001")
    answer = await urs.request("RequestReserveAgent", AttributeThisDN="1001")
    assert answer["AttributeErrorCode"] == ErrorCode.AGENT_NOT_AVAILABLE
    await desk.request("RequestAgentReady", AttributeThisDN="1001")
    h.node.call("EventEstablished", "1001", "00d1")
    await h.until(lambda: h.service.controller.agents.on_call("1001"))
    answer = await urs.request("RequestReserveAgent", AttributeThisDN="1001")
    assert answer["AttributeErrorCode"] == ErrorCode.AGENT_NOT_AVAILABLE
    assert "on a call" in answer["AttributeErrorMessage"]
    # the t-controller keeps serving
    sp = await h.monitor()
    info = await sp.request("RequestReserveAgent", AttributeThisDN="1001")
    assert info["AttributeErrorCode"] == ErrorCode.REQUEST_NOT_SUPPORTED


# -- two data centres through the mesh ---------------------------------------------------

SITES = [("A", "127.0.140.11", "dc1"), ("C", "127.0.141.11", "dc2")]


def cluster2(node_ports: dict[str, int], tc_ports: dict[str, int]) -> str:
    text = """
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[switch.tserver]
request-collection-time = 0.3
agent-reservation-timeout = 1

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A", "SIPS_C"]
dn-owner-applications = ["Cluster"]
addp-timeout = 1
addp-remote-timeout = 1
tc-reconnect-timeout = 1

[dns.1001]
type = "Extension"
contact = "*"
password = "s-1001-x"
"""
    for n, host, geo in SITES:
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
http-port = 0
"""
    return text


@pytest.fixture
async def mesh(kit: Any, tmp_path: Path, free_port: Any) -> AsyncIterator[dict[str, Any]]:
    nodes: dict[str, Any] = {}
    services: dict[str, Any] = {}
    desktops: list[Any] = []
    for n, _, _ in SITES:
        nodes[n] = kit.FakeNode()
        await nodes[n].start()
    path = tmp_path / "cluster.toml"
    path.write_text(cluster2({n: nodes[n].port for n in nodes},
                             {n: free_port(host) for n, host, _ in SITES}))
    try:
        for n, _, _ in SITES:
            services[n] = await kit.start_service(path, f"TC_{n}")
            async with asyncio.timeout(5):
                await services[n][0].node_link.wait_up()
        await kit.wait_until(lambda: all(
            p.link_up and p.conn is not None for s, _ in services.values()
            for p in s.mesh.peers.values()), 8)

        async def desktop(n: str, app: str) -> Any:
            desk = await kit.Desktop.connect(services[n][0].tc_address, app, "smart")
            desktops.append(desk)
            return desk

        yield {"nodes": nodes, "services": services, "desktop": desktop, "path": tmp_path,
               "until": kit.wait_until}
    finally:
        for d in desktops:
            with contextlib.suppress(Exception):
                await d.close()
        for service, task in services.values():
            if not task.done():
                await kit.stop_service(service, task)
        for node in nodes.values():
            await node.close()


async def test_routers_in_two_data_centres_reserve_at_the_owner(mesh: dict[str, Any]) -> None:
    nodes, services, until = mesh["nodes"], mesh["services"], mesh["until"]
    nodes["A"].register("1001")
    await until(lambda: all(s.controller.ownership.owner("1001") == "SIPS_A"
                            for s, _ in services.values()), 8)
    agent = await mesh["desktop"]("A", "wwe")
    await agent.request("RequestRegisterAddress", AttributeThisDN="1001")
    await agent.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1",
                        AttributeAgentWorkMode="AutoIn")
    urs_dc1 = await mesh["desktop"]("A", "URS_dc1")
    urs_dc2 = await mesh["desktop"]("C", "URS_dc2")
    local, remote = await asyncio.gather(
        urs_dc1.request("RequestReserveAgent", AttributeThisDN="1001", AttributePriority=2),
        urs_dc2.request("RequestReserveAgent", AttributeThisDN="1001", AttributePriority=7))
    # the owner in DC1 decided for both: DC2's higher priority won
    assert remote["message"] == "EventAgentReserved" and remote["AttributeAgentID"] == "a1"
    assert local["message"] == "EventError"
    assert local["AttributeErrorCode"] == ErrorCode.AGENT_RESERVATION_CONFLICT
    assert "TC_C" in local["AttributeErrorMessage"]  # held by DC2's router, via the mesh
    # the reservation lapses (no call): cut DC2 off
    reservations = services["A"][0].tcport.requests.reservations
    await until(lambda: reservations.reservation("1001", services["A"][0].controller.clock())
                is None, 10)
    try:
        partition(mesh["path"], "127.0.140.0/24", "127.0.141.0/24")
    except PartitionError as exc:
        pytest.skip(f"no nftables: {exc}")
    try:
        await until(lambda: services["C"][0].controller.ownership.owner("1001") is None, 10)
        # DC2 cannot reserve an agent it cannot reach; DC1 still can: never two calls
        cut = await urs_dc2.request("RequestReserveAgent", AttributeThisDN="1001",
                                    AttributePriority=9)
        assert cut["message"] == "EventError"
        assert cut["AttributeErrorCode"] == ErrorCode.DN_OUT_OF_SERVICE
        ok = await urs_dc1.request("RequestReserveAgent", AttributeThisDN="1001")
        assert ok["message"] == "EventAgentReserved"
    finally:
        heal(mesh["path"])


def test_a_holder_that_is_gone_holds_nothing() -> None:
    agents = Agents()
    gone: set[str] = set()
    t = ReservationTable(agents.check, agents.offered, alive=lambda token: token not in gone)
    t.request(req("urs1", priority=9), 0.0)
    t.request(req("urs2"), 0.1)
    gone.add("urs1")  # disconnected inside the window: no part in the decision
    out = t.handle_timer(0.3)
    assert [(type(o), o.request.holder) for o in out] == [(ReservationGranted, "urs2")]
    gone.add("urs2")  # the holder disconnects: the agent is free again
    assert t.reservation("1001", 1.0) is None and t.counts["holder-gone"] == 1
    t.request(req("urs3"), 1.0)
    assert [type(o) for o in t.handle_timer(1.3)] == [ReservationGranted]
