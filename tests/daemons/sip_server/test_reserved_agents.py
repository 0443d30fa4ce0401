"""A node offers no call to an agent reserved for another call (docs/node.md,
"Reserved agents"; guide: "Agent Reservation in SIP Cluster"): the
reservation is made at the agent DN's owner t-controller (node C), the call
waits on a routing point of node A, and A learns of the reservation through
its own t-controller. Driven through real SIP (SIPp caller and agents' phones)
and T-Library routers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocols.tlib.errors import ErrorCode

pytestmark = pytest.mark.timeout(90)


async def _reserve(lab: Any, app: str, dn: str, conn_id: str, **extra: Any) -> dict[str, Any]:
    """RequestReserveAgent from router ``app`` at node A's t-controller (the owner
    of ``dn`` may be another node); waits until node A has noted the grant."""
    router = await lab.desktop("A", app=app)
    answer = await router.request("RequestReserveAgent", AttributeThisDN=dn,
                                  AttributeAgentID=f"a{dn}", AttributeConnID=conn_id, **extra)
    assert answer["message"] == "EventAgentReserved", answer
    await lab.until(f"node A notes {dn} reserved", lambda: any(
        e["dn"] == dn and e.get("reserved_for") == conn_id
        for e in lab.node("A").events("agent_reservation_noted")))
    return dict(answer)


async def test_route_to_an_agent_reserved_for_another_call_is_refused(node_lab: Any) -> None:
    lab = await node_lab(router_timeout=15)
    reserved_phone = lab.agent_phone("1003")  # dc2: owned by node C
    free_phone = lab.agent_phone("1001")
    await lab.login_agents(["1001", "1003"])
    urs = await lab.router("A", "URS", "5000")
    caller = lab.call("A", "5000")
    request = (await lab.until("EventRouteRequest", lambda: urs.of("EventRouteRequest")))[0]
    conn_id = request["AttributeConnID"]

    # another router holds agent 1003 for a call of its own; URS holds 1001 for this one
    await _reserve(lab, "URS_other", "1003", "00000000000000ff", AttributeTimeout=30)
    await _reserve(lab, "URS", "1001", conn_id)

    refused = await urs.request("RequestRouteCall", AttributeThisDN="5000",
                                AttributeConnID=conn_id, AttributeOtherDN="1003")
    assert refused["message"] == "EventError", refused
    assert refused["AttributeErrorCode"] == int(ErrorCode.AGENT_RESERVATION_CONFLICT)
    # the owner (TC_C) names the router as the t-controller it asked through saw it
    assert "reserved for TC_A/URS_other#" in refused["AttributeErrorMessage"], refused
    # the call still waits on the routing point: its own reserved agent takes it
    routed = await urs.request("RequestRouteCall", AttributeThisDN="5000",
                               AttributeConnID=conn_id, AttributeOtherDN="1001")
    assert routed["message"] == "EventRouteUsed", routed

    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    assert (await asyncio.to_thread(free_phone.stats, 10)).get("SuccessfulCall(C)") == "1"
    assert reserved_phone.received("INVITE") == []  # never offered the call
    assert [(e["dn"], e["router"]) for e in
            lab.node("A").events("route_to_reserved_agent_refused")] == [("1003", "URS")]
    assert lab.metric("A", 'sipcluster_routes_to_reserved_agents_total{outcome="refused"}') == 1
    # routers reserve at the t-controllers; the node takes reservations from its own only
    direct = await urs.request("RequestReserveAgent", AttributeThisDN="1002")
    assert direct["message"] == "EventError" and \
        direct["AttributeErrorCode"] == int(ErrorCode.REQUEST_NOT_SUPPORTED), direct
    assert lab.status("A", "/status/reservations")["reserved"][0]["dn"] == "1003"
    # the reservation URS made for this call was used up by it
    assert lab.status("A", "/status/reservations")["ended"]["consumed"] == 1


async def test_default_routing_waits_until_the_reservation_ends(node_lab: Any) -> None:
    lab = await node_lab(router_timeout=1, extra="""
[dns.5001]
type = "RoutingPoint"
default-dn = "1003"
""")
    phone = lab.agent_phone("1003")
    await lab.login_agents(["1003"])
    # held for another call for 3 s; nobody routes the call to 5001
    await _reserve(lab, "URS_other", "1003", "00000000000000ff", AttributeTimeout=3)
    caller = lab.call("A", "5001")
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "1"

    node = lab.node("A").events()
    waited = [i for i, e in enumerate(node)
              if e.get("event") == "default_route_waits_for_reservation"]
    routed = [i for i, e in enumerate(node) if e.get("event") == "call_routed"]
    assert len(waited) == 1 and node[waited[0]]["dn"] == "1003"
    # the agent was offered the call only once the reservation had ended
    assert len(routed) == 1 and routed[0] > waited[0]
    assert node[routed[0]]["to"] == "1003" and node[routed[0]]["default"] is True
    assert lab.status("A", "/status/reservations")["ended"]["expired"] == 1
    assert lab.metric("A", 'sipcluster_routes_to_reserved_agents_total{outcome="held"}') == 1
    assert len(phone.received("INVITE")) == 1
