"""Reliable provisional responses (RFC 3262) through the node (docs/node.md,
"Reliable provisional responses"), on the wire with SIPp on both sides: the
callee's reliable 183 reaches the caller reliably under the node's own RSeq,
retransmitted until PRACK; the caller's PRACK (and the SDP answer in it)
reaches the callee with the callee's RSeq in its RAck; a caller without
100rel has the node PRACK for it; a caller that requires 100rel while it is
turned off gets 420."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.daemons.sip_server import prack_lab as lab_module
from tests.daemons.sip_server.conftest import SCENARIOS
from tests.daemons.sip_server.prack_lab import body, header, received_responses

prack_lab = lab_module.prack_lab  # the fixture

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("scenario", ["uac_requires_100rel.xml", "uac_requires_100rel_late.xml"])
async def test_reliable_183_relayed_and_prack_end_to_end(prack_lab: Any, scenario: str) -> None:
    lab = await prack_lab()
    phone = lab.phone("uas_reliable_183.xml")
    caller = lab.caller(SCENARIOS / scenario)
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors(), phone.errors())
    phone_stats = await asyncio.to_thread(phone.stats, 10)
    assert phone_stats.get("SuccessfulCall(C)") == "1", (phone_stats, phone.errors())

    invite = phone.received_messages("INVITE")[0]
    assert "100rel" in ", ".join(header(invite, "Supported")), invite
    # the caller got the 183 reliably, under the node's RSeq, and again until it PRACKed
    ringing = received_responses(caller, 183)
    assert len(ringing) >= 2, ringing
    rseqs = {header(r, "RSeq")[0] for r in ringing}
    assert len(rseqs) == 1, rseqs
    assert all("100rel" in header(r, "Require") for r in ringing), ringing
    assert "o=callee " in body(ringing[0])
    # the caller's PRACK reached the callee as a PRACK for the callee's own RSeq (7)
    pracks = phone.received_messages("PRACK")
    assert len(pracks) == 1, pracks
    assert header(pracks[0], "RAck") == ["7 1 INVITE"], pracks[0]
    caller_pracks = [m for m in caller.messages().split("-----")
                     if "message sent" in m and "PRACK sip:" in m]
    assert caller_pracks and f"RAck: {rseqs.pop()} 1 INVITE" in caller_pracks[0]
    if scenario.endswith("_late.xml"):
        # no offer in the INVITE: the caller's answer to the 183's offer is in the PRACK
        assert body(invite) == "", invite
        assert "o=caller " in body(pracks[0]), pracks[0]
    else:
        assert "o=caller " in body(invite) and body(pracks[0]) == "", pracks[0]
    # the BYE after the PRACK went with the next CSeq of the callee's dialog
    byes = phone.received_messages("BYE")
    assert byes and header(byes[0], "CSeq") == ["3 BYE"], byes
    sent = lab.metrics("sipcluster_sip_reliable_provisionals_total")
    assert sent.get('{event="acknowledged"}') == 1.0, sent
    assert sent.get('{event="retransmitted"}', 0) >= 1, sent


async def test_node_pracks_for_a_caller_without_100rel(prack_lab: Any) -> None:
    lab = await prack_lab()
    phone = lab.phone("uas_reliable_183.xml")
    caller = lab.caller("uac", "-d", "500")
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors(), phone.errors())
    pracks = phone.received_messages("PRACK")
    assert len(pracks) == 1 and header(pracks[0], "RAck") == ["7 1 INVITE"], pracks
    # the caller got the 183 as an ordinary provisional response
    ringing = received_responses(caller, 183)
    assert ringing and not any(header(r, "RSeq") for r in ringing), ringing
    assert lab.metrics("sipcluster_sip_reliable_provisionals_total").get(
        '{event="pracked_by_node"}') == 1.0


async def test_caller_requiring_100rel_gets_420_when_it_is_off(prack_lab: Any) -> None:
    lab = await prack_lab("sip-enable-100rel = false")
    caller = lab.caller(SCENARIOS / "uac_requires_100rel.xml")
    await asyncio.to_thread(caller.stats, 20)
    refused = received_responses(caller, 420)
    assert refused and header(refused[0], "Unsupported") == ["100rel"], caller.messages()[-2000:]
    assert lab.metrics("sipcluster_sip_requests_refused_total").get(
        '{method="INVITE",status="420"}') == 1.0


async def test_bad_pracks_get_400_and_481_and_the_call_goes_on(prack_lab: Any) -> None:
    lab = await prack_lab()
    phone = lab.phone("uas_reliable_183.xml")
    caller = lab.caller(SCENARIOS / "uac_bad_prack.xml")
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors(), phone.errors())
    # only the good PRACK reached the callee
    assert len(phone.received_messages("PRACK")) == 1
    refused = lab.metrics("sipcluster_sip_requests_refused_total")
    assert refused.get('{method="PRACK",status="400"}') == 1.0, refused
    assert refused.get('{method="PRACK",status="481"}') == 1.0, refused
    logged = [(e["status"], e["method"]) for e in lab.node("A").events("sip_request_refused")]
    assert logged == [(400, "PRACK"), (481, "PRACK")], logged
