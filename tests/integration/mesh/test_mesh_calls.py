"""The T-Controller mesh on real processes: four nodes in two data centres, the
phone on one node, the desktop on another, the call on a third (guide:
"T-Controller", "T-Controller DN Ownership", "Smart Proxy"; docs/t-controller.md,
docs/node.md "The event sequence of an inbound call").

One lab for the session (conftest.py): DC1 = 127.0.41.x, DC2 = 127.0.42.x.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)

DC1 = "127.0.41."
DC2 = "127.0.42."


async def test_inbound_call_seen_by_a_desktop_on_another_node(
        mesh_lab: Any, phones: Any, desktops: Any) -> None:
    """Phone 1001 on node A (DC1), desktop on node B (DC2), the call on node C
    (DC2): the desktop sees the whole sequence, in order, once."""
    phone, node_a = await phones.register_home("1001", DC1 + "101", "dc1")
    assert mesh_lab.geo_of(node_a) == "dc1"
    node_b, node_c = mesh_lab.nodes("dc2")
    await mesh_lab.owned("1001", node_a)
    desk = await desktops.connect(node_b)
    registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    assert registered["message"] == "EventRegistered"
    assert registered["AttributeExtensions"]["owner"] == node_a
    assert registered["AttributeExtensions"]["dn-state"] == "in-service"
    login = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                               AttributeAgentID="a1001")
    assert login["message"] == "EventAgentLogin"
    ready = await desk.request("RequestAgentReady", AttributeThisDN="1001")
    assert ready["message"] == "EventAgentReady"
    assert ready["AttributeReason"] == {"site": "dc1"}  # the owner's site

    uas = phones.answer(phone)
    await asyncio.sleep(0.2)  # the phone's socket is bound before the INVITE comes
    await phones.trunk(DC2 + "140", node_c, "1001").ok()
    await uas.ok()
    # node C reached the phone through the SIP Proxies (it has no binding of 1001)
    assert "call_via_outbound_proxy" in mesh_lab.log(node_c)
    await desk.wait_for("EventAgentReady", count=2, timeout=10)
    assert desk.names("1001") == [
        "EventRegistered", "EventAgentLogin", "EventAgentReady", "EventRinging",
        "EventEstablished", "EventReleased", "EventAgentNotReady", "EventAgentReady"]
    ringing = desk.of("EventRinging")[0]
    assert ringing["AttributeThisDNRole"] == "Destination"
    assert ringing["AttributeOtherDN"] == "+15550100"
    conn_id = ringing["AttributeConnID"]
    assert all(e["AttributeConnID"] == conn_id for e in desk.events
               if e["message"] in ("EventRinging", "EventEstablished", "EventReleased"))
    acw = desk.of("EventAgentNotReady")[0]
    assert acw["AttributeAgentWorkMode"] == "AfterCallWork"
    # the answers carry the desktop's own ReferenceIDs
    references = [e.get("AttributeReferenceID") for e in desk.events[:3]]
    assert references == [registered["AttributeReferenceID"], login["AttributeReferenceID"],
                          ready["AttributeReferenceID"]]
    view = await asyncio.to_thread(mesh_lab.dn_view, node_a, "1001")
    assert view["agent-state"] == "Ready" and view["on-call"] is False


async def test_make_call_from_a_node_without_the_phones_binding(
        mesh_lab: Any, phones: Any, desktops: Any) -> None:
    """RequestMakeCall on a node where the origination DN has no binding: the
    node reaches the phone through the SIP Proxies (RFC 3725 flow I), and the
    owner's desktop sees the call."""
    agent, node_a = await phones.register_home("1001", DC1 + "101", "dc1")
    dest, _ = await phones.register_home("1002", DC1 + "102", "dc1",
                                         proxy="SIPProxy_dc1_2")
    await mesh_lab.owned("1001", node_a)
    node_c = next(iter(mesh_lab.nodes("dc2")))
    desk = await desktops.connect(node_a)
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    router = await desktops.connect_node(node_c)
    uas_agent, uas_dest = phones.answer(agent), phones.answer(dest)
    await asyncio.sleep(0.2)
    dialing = await router.request("RequestMakeCall", AttributeThisDN="1001",
                                   AttributeOtherDN="1002")
    assert dialing["message"] == "EventDialing", dialing
    conn_id = dialing["AttributeConnID"]
    await desk.wait_for("EventEstablished", AttributeThisDN="1001", AttributeConnID=conn_id)
    released = await router.request("RequestReleaseCall", AttributeThisDN="1001",
                                     AttributeConnID=conn_id)
    assert released["message"] == "EventReleased", released
    agent_log = await uas_agent.ok()
    await uas_dest.ok()
    # the INVITE to the agent's phone came through a proxy that pinned the dialog
    # to node C (its Record-Route)
    assert f"sc-node={node_c}>" in agent_log
    assert "call_via_outbound_proxy" in mesh_lab.log(node_c)
    await desk.wait_for("EventReleased", AttributeThisDN="1001", AttributeConnID=conn_id)
    assert [n for n in desk.names("1001") if n != "EventRegistered"][:2] == [
        "EventDialing", "EventEstablished"]


async def test_smart_proxy_client_sees_every_dn_of_four_nodes(
        mesh_lab: Any, phones: Any, desktops: Any) -> None:
    """A legacy monitoring client on one Smart Proxy port (optimised mode: the
    Smart Proxy registers in bulk to the three other t-controllers) sees the
    DNs of all four nodes come into service, and their calls, each event once."""
    homes = dict(zip(("1007", "1008", "1009", "1010"), mesh_lab.nodes(), strict=True))
    monitor_node = next(iter(mesh_lab.nodes("dc1")))
    statserver = await desktops.connect(monitor_node, app="statserver", smart_proxy=True)

    def bulk_up() -> bool:
        page = mesh_lab.tc_status(monitor_node, "/status/clients")["smart-proxy-port"]
        return page["mode"] == "optimised" and list(page["bulk-links"].values()) == ["up"] * 3

    await mesh_lab.until("the Smart Proxy's bulk links up", bulk_up, 10)
    # each phone straight to its node: that node owns the DN (SIP-based ownership)
    started = {dn: phones.register_at(dn, _dc(node) + str(int(dn) - 900), node)
               for dn, node in homes.items()}
    for _, run in started.values():
        await run.ok()
    for dn, node in homes.items():
        await statserver.wait_for("EventDNBackInService", AttributeThisDN=dn)
        assert {e["AttributeExtensions"].get("owner")
                for e in statserver.of("EventDNBackInService", dn)} == {node}
        info = await statserver.request("RequestRegisterAddress", AttributeThisDN=dn)
        assert info["AttributeExtensions"]["owner"] == node
        assert info["AttributeExtensions"]["dn-state"] == "in-service"
    # one call on each node, to its phone (the node has the binding)
    answering = [phones.answer(phone) for phone, _ in started.values()]
    await asyncio.sleep(0.2)
    trunks = [phones.trunk(_dc(node) + "140", node, dn) for dn, node in homes.items()]
    for run in (*trunks, *answering):
        await run.ok()
    for dn in homes:
        await statserver.wait_for("EventReleased", AttributeThisDN=dn)
    call_events = ("EventRinging", "EventEstablished", "EventReleased")
    for dn in homes:
        assert [n for n in statserver.names(dn) if n in call_events] == list(call_events)
    # every DN came into service exactly once, with the same full shape whichever
    # node owns it (the monitoring node's own DN included)
    for dn, node in homes.items():
        back = statserver.of("EventDNBackInService", dn)
        assert len(back) == 1, (dn, back)
        ext = back[0]["AttributeExtensions"]
        assert ext["owner"] == node
        assert ext["dn-state"] == "in-service"
        assert ext["agent-state"] == "LoggedOut"
        assert ext["ownership"] == "sip"
        assert ext["on-call"] is False


def _dc(node: str) -> str:
    return DC1 if node in ("SIPS_dc1_1", "SIPS_dc1_2") else DC2
