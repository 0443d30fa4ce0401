"""A router does not conflict with itself (docs/node.md, "Reserved agents";
guide: "Agent Reservation Conflicts"): node A keeps a reservation that a call
on node C already used up, and still lets the router that holds it route its
next call to the agent; another router's route is refused. Driven through real
SIP (SIPp callers and the agent's phone) and T-Library routers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocols.tlib.errors import ErrorCode

pytestmark = pytest.mark.timeout(120)


async def _x_used_up_on_c(lab: Any) -> tuple[Any, Any, Any, str]:
    """Agent 1003 (owned by node C) logged in; URS reserves it at the owner for
    call X, which waits on node C, and routes X there. Returns the agent's phone
    (two calls), URS's and URS_other's routers on node A, and X's ConnID; node A
    still keeps the reservation X used up."""
    phone = lab.agent_phone("1003", calls=2)  # dc2: owned by node C
    await lab.login_agents(["1003"])
    urs_c = await lab.router("C", "URS", "5000")
    urs_a = await lab.router("A", "URS", "5000")
    other = await lab.router("A", "URS_other")

    # call X waits on node C; URS reserves the agent for it at the owner (TC_C)
    first = lab.call("C", "5000")
    x = (await lab.until("X's EventRouteRequest", lambda: urs_c.of("EventRouteRequest"))
         )[0]["AttributeConnID"]
    reserver = await lab.desktop("C", app="URS")
    granted = await reserver.request("RequestReserveAgent", AttributeThisDN="1003",
                                     AttributeAgentID="a1003", AttributeConnID=x,
                                     AttributeTimeout=60)
    assert granted["message"] == "EventAgentReserved", granted
    for n in "AC":
        await lab.until(f"node {n} notes 1003 reserved for X", lambda n=n: any(
            e["dn"] == "1003" and e.get("reserved_for") == x
            for e in lab.node(n).events("agent_reservation_noted")))
    routed = await urs_c.request("RequestRouteCall", AttributeThisDN="5000",
                                 AttributeConnID=x, AttributeOtherDN="1003")
    assert routed["message"] == "EventRouteUsed", routed
    stats = await asyncio.to_thread(first.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, first.errors())
    # X rang on node C: node A still keeps the reservation made for it
    kept = lab.status("A", "/status/reservations")["reserved"]
    assert [(e["dn"], e["conn_id"]) for e in kept] == [("1003", x)], kept
    return phone, urs_a, other, x


async def test_the_holder_routes_its_next_call_past_a_reservation_used_up_elsewhere(
        node_lab: Any) -> None:
    lab = await node_lab(router_timeout=20)
    phone, urs_a, other, x = await _x_used_up_on_c(lab)

    # call Y waits on node A: another router may not take the agent, URS may
    second = lab.call("A", "5000")
    y = (await lab.until("Y's EventRouteRequest", lambda: urs_a.of("EventRouteRequest"))
         )[0]["AttributeConnID"]
    assert y != x
    refused = await other.request("RequestRouteCall", AttributeThisDN="5000",
                                  AttributeConnID=y, AttributeOtherDN="1003")
    assert refused["message"] == "EventError", refused
    assert refused["AttributeErrorCode"] == int(ErrorCode.AGENT_RESERVATION_CONFLICT)
    routed = await urs_a.request("RequestRouteCall", AttributeThisDN="5000",
                                 AttributeConnID=y, AttributeOtherDN="1003")
    assert routed["message"] == "EventRouteUsed", routed
    stats = await asyncio.to_thread(second.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, second.errors())
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "2"

    assert [(e["dn"], e["router"], e["reserved_for"]) for e in
            lab.node("A").events("route_to_reserved_agent_refused")] == [
        ("1003", "URS_other", x)]
    assert lab.metric("A", 'sipcluster_routes_to_reserved_agents_total{outcome="refused"}') == 1
    # Y, offered to the agent on node A, used the reservation up there
    assert lab.status("A", "/status/reservations") == {
        "reserved": [], "ended": {"expired": 0, "consumed": 1}}


async def test_another_router_routes_once_its_grant_reaches_the_node(node_lab: Any) -> None:
    """The owner counts the reservation for call X as used up (X rang on node C)
    and grants the agent to another router for call Y; that router's route of Y
    reaches node A, which still keeps X's reservation, before the grant does. The
    route waits for the grant instead of being refused."""
    lab = await node_lab(router_timeout=20)
    phone, urs_a, other, _x = await _x_used_up_on_c(lab)

    second = lab.call("A", "5000")
    y = (await lab.until("Y's EventRouteRequest", lambda: urs_a.of("EventRouteRequest"))
         )[0]["AttributeConnID"]
    # the route first, then the reservation at the owner (through node C's t-controller)
    route = asyncio.create_task(other.request("RequestRouteCall", AttributeThisDN="5000",
                                              AttributeConnID=y, AttributeOtherDN="1003"))
    await lab.until("node A holds the route", lambda: any(
        e["conn_id"] == y for e in lab.node("A").events("route_awaits_reservation_grant")))
    other_reserver = await lab.desktop("C", app="URS_other")
    granted = await other_reserver.request("RequestReserveAgent", AttributeThisDN="1003",
                                           AttributeAgentID="a1003", AttributeConnID=y,
                                           AttributeTimeout=60)
    assert granted["message"] == "EventAgentReserved", granted
    routed = await route
    assert routed["message"] == "EventRouteUsed", routed
    stats = await asyncio.to_thread(second.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, second.errors())
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "2"
    assert lab.node("A").events("route_to_reserved_agent_refused") == []
    assert lab.metric(
        "A", 'sipcluster_routes_to_reserved_agents_total{outcome="granted-late"}') == 1
