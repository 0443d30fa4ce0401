"""Late offer through the node (RFC 3261 §13.2.1, RFC 3264; docs/node.md,
"Late offer"): an INVITE without SDP reaches the callee without SDP, the
callee's offer comes back in the 200 to the caller, and the caller's answer
goes to the callee in its ACK. Agent to agent (the caller a DN of the switch)
and out through a trunk to the PSTN gateway (SIPp's UAS); the callers are a
SIPp late-offer scenario that fails unless the 200 holds an offer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.daemons.sip_server.conftest import NODE_HOST, SCENARIOS, agent_host

pytestmark = pytest.mark.timeout(90)

DIAL_PLAN = """
[applications.FS_dc1.options.partitions.PSTN]
rules = ["9.=>+${DIGITS:1}@trunk"]
"""


def _body(message: str) -> str:
    text = message.replace("\r\n", "\n")
    return text.split("\n\n", 1)[1].strip() if "\n\n" in text else ""


async def test_late_offer_agent_to_agent_and_to_a_trunk(node_lab: Any) -> None:
    lab = await node_lab(feature_server=DIAL_PLAN, nodes="A")
    callee = lab.agent_phone("1001")
    gateway = lab.gateway()
    for number in ("1001", "915550100"):
        caller = lab.sipp(SCENARIOS / "uac_late_offer.xml", agent_host("1002"),
                          lab.free_port(agent_host("1002")),
                          ["-s", number, "-set", "caller", "1002", "-set", "domain",
                           "cluster.test"],
                          target=f"{NODE_HOST['A']}:{lab.ports['sip_A']}")
        stats = await asyncio.to_thread(caller.stats, 30)
        assert stats.get("SuccessfulCall(C)") == "1", (number, stats, caller.errors())

    for phone, uri in ((callee, "sip:1001@"), (gateway, "sip:+15550100@")):
        invites = phone.received_messages("INVITE")
        assert len(invites) == 1 and invites[0].startswith(f"INVITE {uri}"), invites
        assert _body(invites[0]) == "" and "Content-Type: application/sdp" not in invites[0]
        acks = phone.received_messages("ACK")
        # the caller's answer (its o= line) reaches the callee in the ACK
        assert len(acks) == 1 and "o=caller " in _body(acks[0]), acks
    established = [(e["caller"], e["callee"]) for e in lab.node("A").events("call_established")]
    assert established == [("1002", "1001"), ("1002", "+15550100")], established
