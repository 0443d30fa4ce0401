"""A caller that requires 100rel and never PRACKs (RFC 3262 §3): the node resends
the reliable 183 until 64*T1 (32 s) has passed, then answers the INVITE with
504 and cancels the callee's leg. The node runs in this process and the test
moves its loop's clock (prack_lab.MovedClock); the peers are SIPp processes."""

from __future__ import annotations

import asyncio

import pytest

from tests.daemons.sip_server import prack_lab as lab_module
from tests.daemons.sip_server.conftest import SCENARIOS
from tests.daemons.sip_server.prack_lab import (
    MovedClock,
    PrackLab,
    header,
    received_responses,
    until,
)

node = lab_module.node  # the fixture

pytestmark = pytest.mark.timeout(60)


async def test_unacknowledged_reliable_183_ends_in_504(node: tuple[PrackLab, MovedClock]
                                                       ) -> None:
    lab, clock = node
    phone = lab.phone("uas_reliable_183.xml")
    caller = lab.caller(SCENARIOS / "uac_requires_100rel_no_prack.xml")
    stats = asyncio.create_task(asyncio.to_thread(caller.stats, 40))
    await until(lambda: received_responses(caller, 183))
    await clock.advance(20)  # resent meanwhile, still waiting for the PRACK
    assert not received_responses(caller, 504)
    await clock.advance(13)  # 33 s: past 64*T1
    result = await stats
    assert result.get("SuccessfulCall(C)") == "1", (result, caller.errors())
    # once: the caller's ACK (the INVITE's Via, RFC 3261 §17.1.1.3) ended its resending
    assert len(received_responses(caller, 504)) == 1, caller.messages()[-3000:]
    ringing = received_responses(caller, 183)
    assert len(ringing) >= 2 and len({header(r, "RSeq")[0] for r in ringing}) == 1, ringing
    await until(lambda: phone.received_messages("CANCEL"))
    sent = await asyncio.to_thread(lab.metrics, "sipcluster_sip_reliable_provisionals_total")
    assert sent.get('{event="timeout"}') == 1.0, sent
