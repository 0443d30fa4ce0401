"""The node link (docs/node.md): registration as a smart client with ADDP,
reconnection, the DN catch-up after a reconnect, requests lost with the link."""

from __future__ import annotations

import asyncio
from typing import Any

SIP = {"1001": "sip:1001@127.0.0.1:5099", "1002": "sip:1002@127.0.0.1:5098"}


async def test_link_registers_as_smart_client_with_addp(make_harness: Any) -> None:
    h = await make_harness(registered=SIP)
    conn = h.node.conns[0]
    assert conn.application == "TC_1"
    assert conn.client_type == "smart"
    # addp-timeout / addp-remote-timeout of the SIP Cluster Node DN, announced
    assert (conn.session.addp_timeout, conn.session.addp_remote_timeout) == (2.0, 3.0)
    ownership = h.service.controller.ownership
    assert ownership.owner("1001") == "SIPS_1" and ownership.owner("1002") == "SIPS_1"


async def test_reconnect_and_catch_up(make_harness: Any) -> None:
    h = await make_harness(registered=SIP, resync_grace=0.3)
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestRegisterAddress", AttributeThisDN="1002")
    link = h.service.node_link
    # 1002's phone unregisters while the link is down: the node has no
    # EventDNOutOfService to send, it just does not repeat 1002 on link-up
    h.node.conns[0].close()
    await h.until(lambda: not link.up)
    del h.node.registered["1002"]
    h.node.connected.clear()
    async with asyncio.timeout(5):
        await h.node.connected.wait()
        await link.wait_up()
    assert link.connects == 2
    lost = await desk.wait_for("EventDNOutOfService", timeout=5)
    assert lost["AttributeThisDN"] == "1002"
    ownership = h.service.controller.ownership
    assert ownership.owner("1001") == "SIPS_1"
    assert ownership.owner("1002") is None
    assert desk.of("EventDNOutOfService") == [lost]
    # events flow again over the new link
    h.node.call("EventRinging", "1001", "00000000000000d1")
    await desk.wait_for("EventRinging")


async def test_requests_lost_with_the_link_are_answered(make_harness: Any) -> None:
    h = await make_harness(registered=SIP)
    h.node.answers["RequestHoldCall"] = lambda conn, request: None  # never answered
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    pending = desk.client.submit("RequestHoldCall", {"AttributeThisDN": "1001",
                                                     "AttributeConnID": "00000000000000e1"})
    await h.until(lambda: bool(h.node.requests))
    h.node.conns[0].close()
    async with asyncio.timeout(5):
        answer = await pending
    assert answer["message"] == "EventError"
    assert answer["AttributeErrorCode"] == 70
    assert "Node link" in answer["AttributeErrorMessage"]
    # while the link is down call control is refused at once
    link = h.service.node_link
    await h.until(lambda: not link.up)
    await h.node.close()
    refused = await desk.request("RequestHoldCall", AttributeThisDN="1001",
                                 AttributeConnID="00000000000000e1")
    assert refused["AttributeErrorCode"] == 70
    # agent requests still work: agent state is the t-controller's alone
    login = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                               AttributeAgentID="a1")
    assert login["message"] == "EventAgentLogin"


async def test_backoff_until_the_node_starts(make_harness: Any) -> None:
    h = await make_harness(registered=SIP)
    await h.node.close()
    link = h.service.node_link
    await h.until(lambda: not link.up)
    # the node comes back on the same port
    port = h.node.port
    h.node.connected.clear()
    assert h.node.server is not None
    await h.node.server.listen("127.0.0.1", port)
    async with asyncio.timeout(10):
        await h.node.connected.wait()
        await link.wait_up()
    assert link.connects == 2
