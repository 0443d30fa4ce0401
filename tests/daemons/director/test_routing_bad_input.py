"""Bad input around routing, on real processes (docs/director.md,
docs/node.md "Routing points"): a router that routes a call to a DN out of
service, a router that disconnects mid-route, a reservation for an unknown
agent. Each gets the protocol's answer, a log line and a counter, and no
call is lost: it goes to default-dn."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.daemons.director.conftest import (  # type: ignore[import-not-found]
    DC,
    DEFAULT_PHONE,
    UNREGISTERED,
)

pytestmark = pytest.mark.timeout(90)


async def _router(lab: Any, app: str) -> tuple[TLibClient, list[dict[str, Any]]]:
    client = await TLibClient.connect(DC["dc1"] + "11", lab.ports["default_A"], app, "legacy",
                                      local_addr=(DC["dc1"] + "93", 0))
    events: list[dict[str, Any]] = []
    client.add_listener(lambda e: events.append(dict(e)))
    answer = await client.request("RequestRegisterAddress", AttributeThisDN="5000")
    assert answer["message"] == "EventRegistered"
    return client, events


def _metrics(lab: Any) -> str:
    url = f"http://{DC['dc1']}11:{lab.ports['http_A']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def test_route_to_a_dn_out_of_service_goes_to_default_dn(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=10)
    default = lab.agent_phone(DEFAULT_PHONE, calls=1)
    router, events = await _router(lab, "URS")
    try:
        caller = lab.callers("A", calls=1, rate=1)
        await lab.until("EventRouteRequest", lambda: any(
            e["message"] == "EventRouteRequest" for e in events))
        request = next(e for e in events if e["message"] == "EventRouteRequest")
        routed = await router.request("RequestRouteCall", AttributeThisDN="5000",
                                      AttributeConnID=request["AttributeConnID"],
                                      AttributeOtherDN=UNREGISTERED)
        assert routed["message"] == "EventRouteUsed"
        stats = await asyncio.to_thread(caller.stats, 20)
        assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
        assert (await asyncio.to_thread(default.stats, 10)).get("SuccessfulCall(C)") == "1"
        logged = lab.procs["SIPS_A"].events("route_target_unreachable")
        assert logged and logged[0]["dn"] == UNREGISTERED and logged[0]["to"] == DEFAULT_PHONE
        metrics = await asyncio.to_thread(_metrics, lab)
        assert 'routed_to_unreachable_total{to="default-dn"} 1.0' in metrics
        # an unknown DN is refused with the protocol's error
        again = await router.request("RequestRouteCall", AttributeThisDN="5000",
                                     AttributeConnID="00000000000000ff",
                                     AttributeOtherDN="1001")
        assert again["message"] == "EventError" and again["AttributeErrorCode"] == 58
    finally:
        await router.close()


async def test_router_that_disconnects_mid_route(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=2)
    default = lab.agent_phone(DEFAULT_PHONE, calls=1)
    router, events = await _router(lab, "URS")
    caller = lab.callers("A", calls=1, rate=1)
    await lab.until("EventRouteRequest", lambda: any(
        e["message"] == "EventRouteRequest" for e in events))
    await router.close()  # gone before RequestRouteCall
    stats = await asyncio.to_thread(caller.stats, 20)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    assert (await asyncio.to_thread(default.stats, 10)).get("SuccessfulCall(C)") == "1"
    routed = lab.procs["SIPS_A"].events("call_routed")
    assert routed and routed[0]["default"] is True and routed[0]["to"] == DEFAULT_PHONE


async def test_reservation_for_an_unknown_agent(director_lab: Any) -> None:
    lab = await director_lab()
    await lab.login_agents(["1001"])
    urs = await lab.desktop("C", "URS_dc2")  # relayed to the owner in the other data centre
    answer = await urs.request("RequestReserveAgent", AttributeThisDN="1001",
                               AttributeAgentID="a9999")
    assert answer["message"] == "EventError" and answer["AttributeErrorCode"] == 57
    refused = lab.procs["TC_A"].events("agent_reservation_refused")
    assert refused and refused[0]["code"] == 57
    ok = await urs.request("RequestReserveAgent", AttributeThisDN="1001",
                           AttributeAgentID="a1001")
    assert ok["message"] == "EventAgentReserved"  # the t-controllers keep serving
