"""TCport and Smart Proxy of a t-controller in-process, its node link on a
stand-in sip-server default-port (conftest.FakeNode): desktops, agents,
ownership, smart clients, monitoring clients, bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import urllib.request
from typing import Any

import msgpack
import pytest

from daemons.runtime.tlib_client import TLibClient, TLibHandshakeError
from daemons.t_controller.clients import event_is_valid
from protocols.tlib.framing import FrameDecoder, encode_frame

SIP_1001 = {"1001": "sip:1001@127.0.0.1:5099"}
CALL = "00000000000000a1"


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def get(url: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_get, url)


# ---------------------------------------------------------------- the agent's day


async def test_inbound_call_sequence_with_wrap_up(make_harness: Any) -> None:
    h = await make_harness(tserver="wrap-up-time = 1", registered=SIP_1001)
    desk = await h.desktop()
    registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    assert registered["message"] == "EventRegistered"
    assert registered["AttributeExtensions"]["dn-state"] == "in-service"
    assert registered["AttributeExtensions"]["owner"] == "SIPS_1"
    assert registered["AttributeExtensions"]["agent-state"] == "LoggedOut"
    login = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                               AttributeAgentID="a1001")
    assert login["message"] == "EventAgentLogin" and login["AttributeAgentID"] == "a1001"
    ready = await desk.request("RequestAgentReady", AttributeThisDN="1001")
    assert ready["message"] == "EventAgentReady"
    assert ready["AttributeReason"] == {"site": "dc1"}
    h.node.call("EventRinging", "1001", CALL, AttributeThisDNRole="Destination",
                AttributeOtherDN="1002", AttributeCallType="Internal")
    h.node.call("EventEstablished", "1001", CALL, AttributeOtherDN="1002")
    await desk.wait_for("EventEstablished")
    assert h.service.controller.agents.on_call("1001")
    h.node.call("EventReleased", "1001", CALL, AttributeOtherDN="1002")
    acw = await desk.wait_for("EventAgentNotReady")
    assert acw["AttributeAgentWorkMode"] == "AfterCallWork"
    back = await desk.wait_for("EventAgentReady", count=2, timeout=5)
    assert back["AttributeReason"]["site"] == "dc1"
    assert desk.names() == [
        "EventRegistered", "EventAgentLogin", "EventAgentReady", "EventRinging",
        "EventEstablished", "EventReleased", "EventAgentNotReady", "EventAgentReady",
    ]
    ringing = desk.of("EventRinging")[0]
    assert ringing["AttributeThisDNRole"] == "Destination"
    assert ringing["AttributeOtherDN"] == "1002"
    assert "AttributeReferenceID" not in ringing
    seqs = [e["AttributeEventSequenceNumber"] for e in desk.events]
    assert seqs == sorted(seqs)


async def test_unanswered_call_gives_no_after_call_work(make_harness: Any) -> None:
    h = await make_harness(tserver="wrap-up-time = 1", registered=SIP_1001)
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1",
                       AttributeAgentWorkMode="AutoIn")
    h.node.call("EventRinging", "1001", CALL)
    h.node.call("EventReleased", "1001", CALL)
    await desk.wait_for("EventReleased")
    query = await desk.request("RequestQueryAddress", AttributeThisDN="1001",
                               AttributeAddressInfoType="AgentStatus")
    assert query["AttributeAddressInfoStatus"] == 2  # Ready
    assert desk.names() == ["EventRegistered", "EventAgentLogin", "EventAgentReady",
                            "EventRinging", "EventReleased", "EventAddressInfo"]


async def test_not_ready_with_reason_and_query(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    answer = await desk.request("RequestAgentNotReady", AttributeThisDN="1001",
                                AttributeAgentWorkMode="AuxWork",
                                AttributeReason={"ReasonCode": "Break"})
    assert answer["message"] == "EventAgentNotReady"
    assert answer["AttributeAgentWorkMode"] == "AuxWork"
    assert answer["AttributeReason"] == {"ReasonCode": "Break"}
    info = await desk.request("RequestQueryAddress", AttributeThisDN="1001",
                              AttributeAddressInfoType="AgentStatus")
    assert info["message"] == "EventAddressInfo"
    assert info["AttributeAddressInfoStatus"] == 1
    assert info["AttributeAgentID"] == "a1"
    assert info["AttributeReason"] == {"ReasonCode": "Break"}
    assert info["AttributeExtensions"]["agent-state"] == "NotReady"
    dn_status = await desk.request("RequestQueryAddress", AttributeThisDN="1001")
    assert dn_status["AttributeAddressInfoStatus"] == 1
    # reason code given in AttributeExtensions
    again = await desk.request("RequestAgentNotReady", AttributeThisDN="1001",
                               AttributeExtensions={"ReasonCode": "Lunch"})
    assert again["AttributeReason"] == {"ReasonCode": "Lunch"}
    logout = await desk.request("RequestAgentLogout", AttributeThisDN="1001")
    assert logout["message"] == "EventAgentLogout"


async def test_logout_on_disconnect(make_harness: Any) -> None:
    h = await make_harness(tserver="logout-on-disconnect = true", registered=SIP_1001)
    agent = await h.desktop("wwe-1")
    supervisor = await h.desktop("supervisor")
    await agent.request("RequestRegisterAddress", AttributeThisDN="1001")
    await supervisor.request("RequestRegisterAddress", AttributeThisDN="1001")
    await agent.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    await agent.request("RequestAgentReady", AttributeThisDN="1001")
    await supervisor.wait_for("EventAgentReady")
    await agent.close()
    logout = await supervisor.wait_for("EventAgentLogout")
    assert logout["AttributeReason"] == {"cause": "logout-on-disconnect"}
    assert h.service.controller.agents.agent("1001") is None


async def test_no_logout_on_disconnect_by_default(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    agent = await h.desktop("wwe-1")
    await agent.request("RequestRegisterAddress", AttributeThisDN="1001")
    await agent.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    await agent.close()
    other = await h.desktop("wwe-2")
    info = await other.request("RequestQueryAddress", AttributeThisDN="1001",
                               AttributeAddressInfoType="AgentStatus")
    assert info["AttributeAddressInfoStatus"] == 1
    assert info["AttributeAgentID"] == "a1"


async def test_auto_logout_timeout(make_harness: Any) -> None:
    h = await make_harness(tserver="auto-logout-timeout = 1", registered=SIP_1001)
    controller = h.service.controller
    # one minute is the option's unit; shorten it to keep the test fast
    controller.agents.options = dataclasses.replace(controller.agents.options,
                                                    auto_logout_timeout=0.3 / 60)
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    logout = await desk.wait_for("EventAgentLogout", timeout=5)
    assert logout["AttributeReason"] == {"cause": "auto-logout-timeout"}


async def test_dn_out_of_service_logs_agent_out(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    h.node.unregister("1001")
    await desk.wait_for("EventAgentLogout")
    assert desk.names()[-2:] == ["EventDNOutOfService", "EventAgentLogout"]
    refused = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                                 AttributeAgentID="a1")
    assert refused["message"] == "EventError" and refused["AttributeErrorCode"] == 52
    h.node.register("1001")
    back = await desk.wait_for("EventDNBackInService")
    assert back["AttributeThisDN"] == "1001"


# ---------------------------------------------------------------- ownership


async def test_tlib_ownership_by_dn_owner_application(make_harness: Any) -> None:
    h = await make_harness()
    watcher = await h.desktop("statserver-like")
    first = await watcher.request("RequestRegisterAddress", AttributeThisDN="2001")
    assert first["AttributeExtensions"]["dn-state"] == "out-of-service"
    assert h.service.controller.ownership.owner("2001") is None  # not a dn-owner-application
    login = await watcher.request("RequestAgentLogin", AttributeThisDN="2001",
                                  AttributeAgentID="p1")
    assert login["AttributeErrorCode"] == 52
    gws = await h.desktop("Cluster")
    owned = await gws.request("RequestRegisterAddress", AttributeThisDN="2001")
    assert owned["AttributeExtensions"]["dn-state"] == "in-service"
    assert owned["AttributeExtensions"]["owner"] == "SIPS_1"
    assert (await watcher.wait_for("EventDNBackInService"))["AttributeThisDN"] == "2001"
    login = await gws.request("RequestAgentLogin", AttributeThisDN="2001",
                              AttributeAgentID="p1")
    assert login["message"] == "EventAgentLogin"
    gone = await gws.request("RequestUnregisterAddress", AttributeThisDN="2001")
    assert gone["message"] == "EventUnregistered"
    await watcher.wait_for("EventDNOutOfService")
    # logout-on-out-of-service (default true)
    await watcher.wait_for("EventAgentLogout")
    assert h.service.controller.ownership.owner("2001") is None
    # taken again, then released by the client's disconnect
    await gws.request("RequestRegisterAddress", AttributeThisDN="2001")
    await watcher.wait_for("EventDNBackInService", count=2)
    await gws.close()
    await watcher.wait_for("EventDNOutOfService", count=2)
    assert h.service.controller.ownership.owner("2001") is None


# ---------------------------------------------------------------- call control


async def test_call_control_is_forwarded_with_reference_mapping(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)

    def dialing(conn: Any, request: Any) -> None:
        conn.answer(request, "EventDialing", {
            "AttributeThisDN": "1001", "AttributeConnID": CALL, "AttributeOtherDN": "1002"})
        conn.send_event("EventRinging", {"AttributeThisDN": "1002", "AttributeConnID": CALL,
                                         "AttributeOtherDN": "1001"})

    h.node.answers["RequestMakeCall"] = dialing
    desk = await h.desktop()
    peer = await h.desktop("peer")
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await peer.request("RequestRegisterAddress", AttributeThisDN="1001")
    answer = await desk.request("RequestMakeCall", AttributeThisDN="1001",
                                AttributeOtherDN="1002", AttributeReferenceID=900)
    assert answer["message"] == "EventDialing"
    assert answer["AttributeReferenceID"] == 900
    forwarded = h.node.requests[-1]
    assert forwarded["message"] == "RequestMakeCall"
    assert forwarded["AttributeReferenceID"] != 900
    seen = await peer.wait_for("EventDialing")
    assert "AttributeReferenceID" not in seen
    assert len(desk.of("EventDialing")) == 1
    # not registered on 1002: its EventRinging does not reach the desktop
    hold = await desk.request("RequestHoldCall", AttributeThisDN="1001", AttributeConnID=CALL)
    assert hold["message"] == "EventACK"
    assert "EventRinging" not in desk.names()
    assert h.service.controller.agents.on_call("1001")

    def refuse(conn: Any, request: Any) -> None:
        conn.answer_error(request, 58, "Unknown ConnID: ffff")

    h.node.answers["RequestAnswerCall"] = refuse
    error = await desk.request("RequestAnswerCall", AttributeThisDN="1001",
                               AttributeConnID="ffff")
    assert error["message"] == "EventError"
    assert error["AttributeErrorCode"] == 58
    assert error["AttributeErrorMessage"] == "Unknown ConnID: ffff"
    assert "EventError" not in peer.names()


async def test_call_control_needs_registration(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    desk = await h.desktop()
    error = await desk.request("RequestReleaseCall", AttributeThisDN="1001",
                               AttributeConnID=CALL)
    assert error["AttributeErrorCode"] == 43
    assert h.node.requests == []


# ---------------------------------------------------------------- smart clients, Smart Proxy


async def test_smart_client_gets_events_of_owned_dns(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    smart = await h.desktop("icon", "smart")
    h.node.call("EventRinging", "1002", "00000000000000b2")  # 1002 is not owned here
    h.node.call("EventRinging", "1001", CALL)
    seen = await smart.wait_for("EventRinging")
    assert seen["AttributeThisDN"] == "1001"
    refused = await smart.request("RequestAgentLogin", AttributeThisDN="1001",
                                  AttributeAgentID="a1")
    assert refused["AttributeErrorCode"] == 59  # a call is in progress
    h.node.call("EventReleased", "1001", CALL)
    await smart.wait_for("EventReleased")
    login = await smart.request("RequestAgentLogin", AttributeThisDN="1001",
                                AttributeAgentID="a1")
    assert login["message"] == "EventAgentLogin"
    h.node.register("1002", "sip:1002@127.0.0.1:5098")
    back = await smart.wait_for("EventDNBackInService")
    assert back["AttributeThisDN"] == "1002"
    h.node.call("EventRinging", "1002", "00000000000000b3")
    later = await smart.wait_for("EventRinging", count=2)
    assert later["AttributeThisDN"] == "1002"
    assert [e["AttributeThisDN"] for e in smart.of("EventRinging")] == ["1001", "1002"]


async def test_smart_proxy_client_sees_every_dn(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    monitor = await h.monitor()
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    h.node.call("EventRinging", "1002", "00000000000000b2")
    h.node.call("EventRinging", "5000", "00000000000000b4")
    h.node.register("1002", "sip:1002@127.0.0.1:5098")
    await monitor.wait_for("EventDNBackInService")
    assert monitor.names() == ["EventAgentLogin", "EventRinging", "EventRinging",
                               "EventDNBackInService"]
    assert [e["AttributeThisDN"] for e in monitor.of("EventRinging")] == ["1002", "5000"]
    refused = await monitor.request("RequestAgentReady", AttributeThisDN="1001")
    assert refused["AttributeErrorCode"] == 60
    refused = await monitor.request("RequestMakeCall", AttributeThisDN="1001",
                                    AttributeOtherDN="1002")
    assert refused["AttributeErrorCode"] == 60
    registered = await monitor.request("RequestRegisterAddress", AttributeThisDN="1001")
    assert registered["AttributeExtensions"]["agent-state"] == "NotReady"
    # events of other nodes enter through feed()
    assert h.service.smart_proxy is not None
    h.service.smart_proxy.feed("EventRinging", {"AttributeThisDN": "1003",
                                                "AttributeConnID": "00000000000000c1"},
                               origin="SIPS_2")
    remote = await monitor.wait_for("EventRinging", count=3)
    assert remote["AttributeThisDN"] == "1003"
    with pytest.raises(TLibHandshakeError) as info:
        await TLibClient.connect(h.sp[0], h.sp[1], "icon", "smart", addp_timeout=None)
    assert info.value.code == 44


# ---------------------------------------------------------------- bad input


async def raw_exchange(address: tuple[str, int], frames: list[bytes],
                       expect: int) -> list[dict[str, Any]]:
    """Handshake, then send raw frames; return the first ``expect`` events after it."""
    reader, writer = await asyncio.open_connection(*address)
    hello = {"message": "RequestRegisterClient", "AttributeReferenceID": 1,
             "AttributeApplicationName": "raw", "AttributeClientType": "legacy",
             "AttributeProtocolVersion": 1}
    writer.write(encode_frame(hello) + b"".join(frames))
    decoder = FrameDecoder()
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(events) < expect + 1:
            data = await reader.read(65536)
            assert data, "connection closed"
            decoder.feed(data)
            events.extend(decoder)
    writer.close()
    return events[1:]


async def test_bad_input_is_answered_and_counted(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    body = msgpack.packb([1, 2, 3])
    frames = [
        encode_frame({"message": "RequestTeleport", "AttributeReferenceID": 2}),
        encode_frame({"message": "RequestRegisterAddress", "AttributeReferenceID": 3,
                      "AttributeThisDN": 1001}),
        encode_frame({"message": "RequestAgentLogin", "AttributeReferenceID": 4,
                      "AttributeThisDN": "1001"}),
        struct.pack(">I", len(body)) + body,
        encode_frame({"message": "RequestAgentReady", "AttributeReferenceID": 5,
                      "AttributeThisDN": "1001", "AttributeAgentWorkMode": "Dancing"}),
    ]
    errors = await raw_exchange(h.tc, frames, 5)
    assert [(e["message"], e["AttributeErrorCode"], e.get("AttributeReferenceID"))
            for e in errors] == [
        ("EventError", 40, 2), ("EventError", 41, 3), ("EventError", 42, 4),
        ("EventError", 46, None), ("EventError", 41, 5)]
    desk = await h.desktop()
    unknown = await desk.request("RequestRegisterAddress", AttributeThisDN="9999")
    assert (unknown["AttributeErrorCode"], unknown["AttributeErrorMessage"]) == (
        50, "Unknown DN: 9999")
    not_registered = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                                        AttributeAgentID="a1")
    assert not_registered["AttributeErrorCode"] == 43
    await desk.request("RequestRegisterAddress", AttributeThisDN="1002")
    out_of_service = await desk.request("RequestAgentLogin", AttributeThisDN="1002",
                                        AttributeAgentID="a2")
    assert out_of_service["AttributeErrorCode"] == 52
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    not_logged_in = await desk.request("RequestAgentReady", AttributeThisDN="1001")
    assert not_logged_in["AttributeErrorCode"] == 54
    assert not_logged_in["AttributeThisDN"] == "1001"
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    twice = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                               AttributeAgentID="a1")
    assert twice["AttributeErrorCode"] == 53
    routing = await desk.request("RequestRouteCall", AttributeThisDN="5000",
                                 AttributeConnID=CALL, AttributeOtherDN="1001")
    assert routing["AttributeErrorCode"] == 60
    _, metrics = await get(h.http + "/metrics")
    text = metrics.decode()
    for code in ("40", "41", "42", "46", "50", "43", "52", "54", "53", "60"):
        assert f'sipcluster_tlib_errors_total{{code="{code}",port="tc-port"}}' in text, code
    # still serving
    info = await desk.request("RequestQueryServer")
    assert info["message"] == "EventServerInfo"
    assert info["AttributeApplicationName"] == "TC_1"


# ---------------------------------------------------------------- health, metrics, status


async def test_health_metrics_and_status_pages(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    desk = await h.desktop()
    monitor = await h.monitor()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1",
                       AttributeAgentWorkMode="ManualIn")
    await monitor.wait_for("EventAgentReady")
    status, body = await get(h.http + "/healthz")
    assert status == 200, body
    health = json.loads(body)
    assert health["checks"]["node-link"]["ok"] and health["checks"]["tc-port"]["ok"]
    status, body = await get(h.http + "/status/dns")
    page = json.loads(body)
    assert page["dns"]["1001"]["dn-state"] == "in-service"
    assert page["dns"]["1001"]["agent-state"] == "Ready"
    assert page["dns"]["1001"]["contact"] == "sip:1001@127.0.0.1:5099"
    assert page["dns"]["1002"]["dn-state"] == "out-of-service"
    status, metrics = await get(h.http + "/metrics")
    text = metrics.decode()
    assert 'sipcluster_tcontroller_clients{port="tc-port"} 1.0' in text
    assert 'sipcluster_tcontroller_clients{port="smart-proxy-port"} 1.0' in text
    assert "sipcluster_tcontroller_dns_in_service 1.0" in text
    assert 'sipcluster_tcontroller_agents{state="Ready"} 1.0' in text
    assert 'sipcluster_tcontroller_events_sent_total{port="tc-port"} 2.0' in text
    assert 'sipcluster_tcontroller_events_sent_total{port="smart-proxy-port"} 2.0' in text
    # the sip-server goes away: unhealthy
    await h.node.close()
    link = h.service.node_link
    await h.until(lambda: not link.up)
    status, body = await get(h.http + "/healthz")
    assert status == 503
    assert not json.loads(body)["checks"]["node-link"]["ok"]


async def test_query_address_refusals_and_unregister(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    desk = await h.desktop()
    unknown = await desk.request("RequestQueryAddress", AttributeThisDN="9999")
    assert unknown["AttributeErrorCode"] == 50
    queue = await desk.request("RequestQueryAddress", AttributeThisDN="1001",
                               AttributeAddressInfoType="QueueLength")
    assert queue["AttributeErrorCode"] == 60
    not_registered = await desk.request("RequestUnregisterAddress", AttributeThisDN="1001")
    assert not_registered["AttributeErrorCode"] == 43
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    gone = await desk.request("RequestUnregisterAddress", AttributeThisDN="1001")
    assert gone["message"] == "EventUnregistered"
    h.node.call("EventRinging", "1001", CALL)
    monitor = await h.monitor()
    h.node.call("EventReleased", "1001", CALL)
    await monitor.wait_for("EventReleased")
    assert "EventRinging" not in desk.names() and "EventReleased" not in desk.names()
    refused = await monitor.request("RequestUnregisterAddress", AttributeThisDN="1001")
    assert refused["AttributeErrorCode"] == 43


async def test_wrap_up_time_of_the_call_overrides_the_option(make_harness: Any) -> None:
    h = await make_harness(tserver="wrap-up-time = 30", registered=SIP_1001)
    desk = await h.desktop()
    await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    await desk.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1",
                       AttributeAgentWorkMode="AutoIn")
    h.node.call("EventRinging", "1001", CALL)
    h.node.call("EventEstablished", "1001", CALL)
    h.node.call("EventReleased", "1001", CALL, AttributeExtensions={"wrap-up-time": 0})
    await desk.wait_for("EventReleased")
    assert h.service.controller.agents.state("1001").value == "Ready"
    second = "00000000000000a2"
    h.node.call("EventRinging", "1001", second)
    h.node.call("EventEstablished", "1001", second)
    h.node.call("EventReleased", "1001", second)
    acw = await desk.wait_for("EventAgentNotReady")
    assert acw["AttributeAgentWorkMode"] == "AfterCallWork"
    # RequestAgentReady ends after-call work early
    ready = await desk.request("RequestAgentReady", AttributeThisDN="1001")
    assert ready["message"] == "EventAgentReady"
    assert h.service.controller.agents.next_timer() is None


async def test_smart_client_sees_its_dn_leave(make_harness: Any) -> None:
    h = await make_harness(registered=SIP_1001)
    smart = await h.desktop("icon", "smart")
    await smart.request("RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1")
    h.node.unregister("1001")
    await smart.wait_for("EventAgentLogout")
    assert smart.names()[-2:] == ["EventDNOutOfService", "EventAgentLogout"]
    # no longer owned here: its events stop
    h.node.call("EventRinging", "1001", CALL)
    monitor = await h.monitor()
    h.node.call("EventReleased", "1001", CALL)
    await monitor.wait_for("EventReleased")
    assert "EventRinging" not in smart.names()


def test_fan_out_checks_an_event_once_against_the_catalogue() -> None:
    """A valid event goes to every recipient unchecked (trusted); an event the
    catalogue refuses is sent unchecked to nobody."""
    call = {"AttributeThisDN": "1001", "AttributeConnID": "006b02a5c9f1e001",
            "AttributeUserData": {"customer": "gold"}}
    assert event_is_valid("EventEstablished", call)
    assert not event_is_valid("EventEstablished", {"AttributeThisDN": "1001"})  # no ConnID
    assert not event_is_valid("EventEstablished", {**call, "AttributeBogus": 1})
    assert not event_is_valid("RequestAgentReady", {"AttributeThisDN": "1001"})  # a request
    assert not event_is_valid("EventNoSuchThing", {})


async def test_desktop_cannot_speak_for_the_mesh(make_harness: Any) -> None:
    """A desktop's RequestRegisterAddress carrying the mesh's own keys (a forged
    ownership claim) gets EventError 41, is counted and changes nothing; the
    desktop's next, clean request is served."""
    h = await make_harness(registered=SIP_1001)
    desk = await h.desktop()
    forged = await desk.request("RequestRegisterAddress", AttributeThisDN="1001",
                                AttributeExtensions={"mesh": "claim", "mesh-node": "other"})
    assert forged["message"] == "EventError" and forged["AttributeErrorCode"] == 41
    assert "reserved for the t-controller mesh" in forged["AttributeErrorMessage"]
    status, metrics = await get(h.http + "/metrics")
    assert status == 200
    assert ('sipcluster_tcontroller_client_requests_refused_total{port="tc-port",'
            'reason="reserved-mesh-keys"} 1.0') in metrics.decode()
    registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    assert registered["message"] == "EventRegistered"
