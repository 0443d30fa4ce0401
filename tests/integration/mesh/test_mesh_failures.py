"""Failures of the T-Controller mesh on real processes: a cut between the data
centres (``sipcluster lab partition``) and the guide's "GWS Disaster Recovery
Scenarios" (docs/t-controller.md, "Link loss").

One lab for the session (conftest.py): DC1 = 127.0.41.x, DC2 = 127.0.42.x.
Every test leaves the lab whole (heal / restart in ``finally``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)

DC1 = "127.0.41."
PSTN_AGENT_HOST = "45"  # the PSTN agent 2001's phone (conftest.py)
DC2 = "127.0.42."


@asynccontextmanager
async def partitioned(lab: Any) -> AsyncIterator[None]:
    """DC1 and DC2 cut off from each other; healed, and the mesh whole again, after."""
    await lab.lab("partition", "dc1", "dc2")
    try:
        yield
    finally:
        await lab.lab("heal")
        await lab.until("every t-controller link up again", lab.mesh_up, 15)


async def test_partition_takes_the_other_side_out_of_service_and_heal_brings_it_back(
        mesh_lab: Any, phones: Any, desktops: Any) -> None:
    phone_1, home_1 = await phones.register_home("1002", DC1 + "102", "dc1")
    _, home_2 = await phones.register_home("1003", DC2 + "103", "dc2")
    await mesh_lab.owned("1002", home_1)
    await mesh_lab.owned("1003", home_2)
    other_dc1 = next(n for n in mesh_lab.nodes("dc1") if n != home_1)
    desk_1 = await desktops.connect(other_dc1)
    desk_2 = await desktops.connect(home_2)
    for desk in (desk_1, desk_2):
        for dn in ("1002", "1003"):
            registered = await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert registered["AttributeExtensions"]["dn-state"] == "in-service"
    # an agent on 1003, logged in from DC2, Ready
    await desk_2.request("RequestAgentLogin", AttributeThisDN="1003", AttributeAgentID="a3")
    await desk_2.request("RequestAgentReady", AttributeThisDN="1003")
    await desk_1.wait_for("EventAgentReady", AttributeThisDN="1003")
    async with partitioned(mesh_lab):
        out_1 = await desk_1.wait_for("EventDNOutOfService", AttributeThisDN="1003",
                                      timeout=mesh_lab.loss_bound)
        await desk_2.wait_for("EventDNOutOfService", AttributeThisDN="1002",
                              timeout=mesh_lab.loss_bound)
        assert out_1["AttributeThisDN"] == "1003"
        # each side keeps its own DNs
        assert not desk_1.of("EventDNOutOfService", "1002")
        assert not desk_2.of("EventDNOutOfService", "1003")
        view = await asyncio.to_thread(mesh_lab.dn_view, other_dc1, "1003")
        assert view["dn-state"] == "out-of-service"
        # local routing goes on: a call inside DC1 (trunk -> the other DC1 node -> DC1
        # proxy -> phone) is seen by the DC1 desktop
        uas = phones.answer(phone_1)
        await asyncio.sleep(0.2)
        await phones.trunk(DC1 + "140", other_dc1, "1002").ok()
        await uas.ok()
        await desk_1.wait_for("EventReleased", AttributeThisDN="1002")
        assert [n for n in desk_1.names("1002") if n.startswith("EventR")
                or n == "EventEstablished"][-3:] == [
            "EventRinging", "EventEstablished", "EventReleased"]
        # the DC2 desktop saw nothing of it
        assert not desk_2.of("EventRinging", "1002")
        # and DC2 still serves its agent
        assert (await desk_2.request("RequestAgentNotReady", AttributeThisDN="1003")
                )["message"] == "EventAgentNotReady"
        await desk_2.request("RequestAgentReady", AttributeThisDN="1003")
    back = await desk_1.wait_for("EventDNBackInService", AttributeThisDN="1003",
                                 timeout=15)
    assert back["AttributeExtensions"]["owner"] == home_2
    assert back["AttributeExtensions"]["dn-state"] == "in-service"
    assert back["AttributeExtensions"]["agent-state"] == "Ready"  # the current state
    back_2 = await desk_2.wait_for("EventDNBackInService", AttributeThisDN="1002", timeout=15)
    assert back_2["AttributeExtensions"]["owner"] == home_1
    await mesh_lab.owned("1002", home_1)
    await mesh_lab.owned("1003", home_2)


async def test_dr_desktop_reconnects_to_another_node(
        mesh_lab: Any, phones: Any, desktops: Any) -> None:
    """Guide, "WWE reconnects to a new GWS API node" (PSTN agent, ownership where
    the desktop connects): the agent keeps talking, is logged out, sees the call
    from the new node and controls it but cannot log in while it lasts; once it
    is over the ownership moves to the new node and the agent logs in."""
    node_1, node_2 = mesh_lab.nodes("dc1")
    gws_1 = await desktops.connect(node_1, app="Cluster")
    await gws_1.request("RequestRegisterAddress", AttributeThisDN="2001")
    await mesh_lab.owned("2001", node_1)
    login = await gws_1.request("RequestAgentLogin", AttributeThisDN="2001",
                                AttributeAgentID="a2001")
    assert login["message"] == "EventAgentLogin"
    # the PSTN agent's phone (the DN's contact) and a customer call on node 1
    pstn = phones.answer(phones.phone("2001", DC1 + PSTN_AGENT_HOST))
    await asyncio.sleep(0.2)
    customer = phones.trunk(DC1 + "141", node_1, "2001", wait_bye=True)
    established = await gws_1.wait_for("EventEstablished", AttributeThisDN="2001")
    conn_id = established["AttributeConnID"]
    await gws_1.close()  # the desktop's NIC fails
    await mesh_lab.until("agent logged out (logout-on-disconnect)", lambda: mesh_lab.dn_view(
        node_1, "2001")["agent-state"] == "LoggedOut")
    assert customer.proc.poll() is None and pstn.proc.poll() is None  # still talking
    gws_2 = await desktops.connect(node_2, app="Cluster")
    registered = await gws_2.request("RequestRegisterAddress", AttributeThisDN="2001")
    assert registered["AttributeExtensions"]["on-call"] is True  # the call is reported
    refused = await gws_2.request("RequestAgentLogin", AttributeThisDN="2001",
                                  AttributeAgentID="a2001")
    assert refused["message"] == "EventError"
    assert await asyncio.to_thread(mesh_lab.owner, "2001", seen_from=node_1) == node_1
    released = await gws_2.request("RequestReleaseCall", AttributeThisDN="2001",
                                   AttributeConnID=conn_id)
    assert released["message"] == "EventReleased", released
    await customer.ok()
    await pstn.ok()
    await mesh_lab.owned("2001", node_2)
    login = await gws_2.request("RequestAgentLogin", AttributeThisDN="2001",
                                AttributeAgentID="a2001")
    assert login["message"] == "EventAgentLogin", login


async def test_dr_desktop_loses_its_node(mesh_lab: Any, phones: Any, desktops: Any) -> None:
    """Guide, "GWS disconnects from SIP Server": the desktop's t-controller is
    killed; the agent is logged out (logout-on-disconnect), the call goes on;
    from an available node the agent controls the call but cannot log in until
    it is over."""
    phone, home = await phones.register_home("1005", DC1 + "105", "dc1")
    await mesh_lab.owned("1005", home)
    desk_node = next(n for n in mesh_lab.nodes("dc1") if n != home)
    victim = mesh_lab.tc_of(desk_node)
    supervisor = await desktops.connect(next(iter(mesh_lab.nodes("dc2"))), app="supervisor")
    await supervisor.request("RequestRegisterAddress", AttributeThisDN="1005")
    gws = await desktops.connect(desk_node)
    await gws.request("RequestRegisterAddress", AttributeThisDN="1005")
    await gws.request("RequestAgentLogin", AttributeThisDN="1005", AttributeAgentID="a1005")
    await gws.request("RequestAgentReady", AttributeThisDN="1005")
    uas = phones.answer(phone)
    await asyncio.sleep(0.2)
    customer = phones.trunk(DC1 + "143", home, "1005", wait_bye=True)
    established = await supervisor.wait_for("EventEstablished", AttributeThisDN="1005")
    conn_id = established["AttributeConnID"]
    await gws.wait_for("EventEstablished", AttributeThisDN="1005")
    await mesh_lab.lab("kill", victim)
    try:
        async with asyncio.timeout(5):
            await gws.client.wait_closed()  # the desktop lost its node
        logout = await supervisor.wait_for("EventAgentLogout", AttributeThisDN="1005",
                                           timeout=mesh_lab.loss_bound)
        assert logout["AttributeReason"] == {"cause": "logout-on-disconnect"}
        view = await asyncio.to_thread(mesh_lab.dn_view, home, "1005")
        assert view["on-call"] is True and view["dn-state"] == "in-service"  # the call goes on
        assert customer.proc.poll() is None and uas.proc.poll() is None
        # the desktop reconnects to an available node
        gws_again = await desktops.connect(home)
        registered = await gws_again.request("RequestRegisterAddress", AttributeThisDN="1005")
        assert registered["AttributeExtensions"]["on-call"] is True
        refused = await gws_again.request("RequestAgentLogin", AttributeThisDN="1005",
                                          AttributeAgentID="a1005")
        assert refused["message"] == "EventError"
        released = await gws_again.request("RequestReleaseCall", AttributeThisDN="1005",
                                           AttributeConnID=conn_id)
        assert released["message"] == "EventReleased", released
        await customer.ok()
        await uas.ok()
        login = await gws_again.request("RequestAgentLogin", AttributeThisDN="1005",
                                        AttributeAgentID="a1005")
        assert login["message"] == "EventAgentLogin", login
    finally:
        await mesh_lab.lab("restart", victim)
        await mesh_lab.until("every t-controller link up again", mesh_lab.mesh_up, 15)


async def test_dr_link_between_data_centres_fails(
        mesh_lab: Any, phones: Any, desktops: Any) -> None:
    """Guide, "TC-layer between DC1 and DC2 fails", Agent 2: softphone owned in
    DC2, desktop in DC1, call in DC1. The DC1 side logs the agent out and puts
    the DN out of service; the agent cannot log in in DC1 but can in DC2, where
    no call is reported (the call is in the disconnected DC); once the link is
    restored the call is known again and call control comes back."""
    phone, owner = await phones.register_home("1006", DC2 + "106", "dc2")
    await mesh_lab.owned("1006", owner)
    desk_node, call_node = mesh_lab.nodes("dc1")
    gws_1 = await desktops.connect(desk_node)
    await gws_1.request("RequestRegisterAddress", AttributeThisDN="1006")
    await gws_1.request("RequestAgentLogin", AttributeThisDN="1006", AttributeAgentID="a1006")
    await gws_1.request("RequestAgentReady", AttributeThisDN="1006")
    monitor = await desktops.connect(owner, app="supervisor")
    await monitor.request("RequestRegisterAddress", AttributeThisDN="1006")
    uas = phones.answer(phone)
    await asyncio.sleep(0.2)
    customer = phones.trunk(DC1 + "142", call_node, "1006", wait_bye=True)
    established = await gws_1.wait_for("EventEstablished", AttributeThisDN="1006")
    conn_id = established["AttributeConnID"]
    async with partitioned(mesh_lab):
        await gws_1.wait_for("EventDNOutOfService", AttributeThisDN="1006",
                             timeout=mesh_lab.loss_bound)
        await gws_1.wait_for("EventAgentLogout", AttributeThisDN="1006")
        # the owner in DC2 logs the agent out too (its desktop's node is gone)
        await monitor.wait_for("EventAgentLogout", AttributeThisDN="1006",
                               timeout=mesh_lab.loss_bound)
        refused = await gws_1.request("RequestAgentLogin", AttributeThisDN="1006",
                                      AttributeAgentID="a1006")
        assert refused["message"] == "EventError"  # not in DC1
        # the owner declares the call's node lost (tc-reconnect-timeout) and forgets its call
        await mesh_lab.until("the owner no longer counts the call of the lost node",
                             lambda: mesh_lab.dn_view(owner, "1006")["on-call"] is False,
                             mesh_lab.loss_bound)
        gws_2 = await desktops.connect(owner)
        registered = await gws_2.request("RequestRegisterAddress", AttributeThisDN="1006")
        assert registered["AttributeExtensions"]["dn-state"] == "in-service"
        # the guide: no call reported (it is in the disconnected DC) and the login works
        on_call = registered["AttributeExtensions"]["on-call"]
        assert on_call is False
        login = await gws_2.request("RequestAgentLogin", AttributeThisDN="1006",
                                    AttributeAgentID="a1006")
        assert login["message"] == "EventAgentLogin", login
        assert customer.proc.poll() is None and uas.proc.poll() is None  # still talking
        # nothing about the call reaches the DC2 desktops meanwhile: no release either
        assert "EventReleased" not in monitor.names("1006")
        assert not [n for n in gws_2.names("1006")
                    if n in ("EventRinging", "EventEstablished", "EventReleased")]
    await gws_1.wait_for("EventDNBackInService", AttributeThisDN="1006", timeout=15)
    # the call's node repeats the call to the owner: the desktop in DC2 is told of it
    again = await gws_2.wait_for("EventEstablished", AttributeThisDN="1006", timeout=15)
    assert again["AttributeConnID"] == conn_id
    await mesh_lab.until("the owner counts the call again",
                         lambda: mesh_lab.dn_view(owner, "1006")["on-call"] is True, 10)
    released = await gws_1.request("RequestReleaseCall", AttributeThisDN="1006",
                                   AttributeConnID=conn_id)
    assert released["message"] == "EventReleased", released
    await customer.ok()
    await uas.ok()
    await gws_2.wait_for("EventReleased", AttributeThisDN="1006", AttributeConnID=conn_id)
    await mesh_lab.until("the owner sees the call over",
                         lambda: mesh_lab.dn_view(owner, "1006")["on-call"] is False, 10)


async def test_dr_softphone_reregisters_in_the_other_data_centre(
        mesh_lab: Any, phones: Any, desktops: Any) -> None:
    """Guide, "Softphone disconnects from DC1": no call, no ACW; the phone
    registers in DC2, the DC1 owner logs the agent out and moves the ownership
    at once; the agent logs on again, from any data centre."""
    phone, home = await phones.register_home("1004", DC1 + "104", "dc1")
    await mesh_lab.owned("1004", home)
    gws = await desktops.connect(home)
    await gws.request("RequestRegisterAddress", AttributeThisDN="1004")
    await gws.request("RequestAgentLogin", AttributeThisDN="1004", AttributeAgentID="a1004")
    await phones.register("1004", phone.address, phones.proxy("SIPProxy_dc2_1"))
    new_owner = await mesh_lab.until("1004 owned in DC2", lambda: (
        o if (o := mesh_lab.owner("1004", seen_from=home)) in mesh_lab.nodes("dc2") else None))
    await mesh_lab.owned("1004", new_owner)
    logout = await gws.wait_for("EventAgentLogout", AttributeThisDN="1004")
    assert logout["AttributeReason"] == {"cause": "ownership-moved"}
    # the lab's cluster file sets agent-state-auto-restore: instead of logging on
    # again by hand, the agent is logged in on the new owner node
    restored = await gws.wait_for("EventAgentLogin", count=2, AttributeThisDN="1004")
    assert restored["AttributeAgentID"] == "a1004"
    view = await asyncio.to_thread(mesh_lab.dn_view, new_owner, "1004")
    assert view["agent-id"] == "a1004"
    # and the agent may log on again from any data centre (after logging out)
    await gws.request("RequestAgentLogout", AttributeThisDN="1004")
    gws_dc2 = await desktops.connect(new_owner)
    await gws_dc2.request("RequestRegisterAddress", AttributeThisDN="1004")
    again = await gws_dc2.request("RequestAgentLogin", AttributeThisDN="1004",
                                  AttributeAgentID="a1004")
    assert again["message"] == "EventAgentLogin", again
