"""Unconditional forwarding (``forward-all`` of a DN's calling profile, served by
the feature-server; docs/feature-server.md, "Calling profiles and
assignments"): the node asks before it rings a DN, and the call goes where the
profile says -- another DN, or out through a trunk -- without the DN's phone
ever seeing an INVITE. SIPp caller, SIPp phones, SIPp's UAS as the PSTN
gateway, the real feature-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)

DIAL_PLAN = """
[applications.FS_dc1.options.partitions.Basic]
rules = [".=>${DIGITS}", "9.=>+${DIGITS:1}@trunk"]
[applications.FS_dc1.options.calling-profiles.System]
partitions = ["Basic"]
[applications.FS_dc1.options.calling-profiles.AllTo1002]
partitions = ["Basic"]
forward-all = "1002"
[applications.FS_dc1.options.calling-profiles.AllToPSTN]
partitions = ["Basic"]
forward-all = "+15550199@trunk"
[applications.FS_dc1.options.assignments.switch]
internal = "System"
external = "System"
[applications.FS_dc1.options.assignments.extension]
1001 = "AllTo1002"
1003 = "AllToPSTN"
"""


async def test_forward_all_to_a_dn_and_to_a_trunk(node_lab: Any) -> None:
    lab = await node_lab(feature_server=DIAL_PLAN, nodes="A")
    forwarding = lab.agent_phone("1001")
    target = lab.agent_phone("1002")
    pstn_forwarding = lab.agent_phone("1003")
    gateway = lab.gateway()

    caller = lab.call("A", "1001")  # 1001 forwards every call to 1002
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    assert (await asyncio.to_thread(target.stats, 10)).get("SuccessfulCall(C)") == "1"
    assert forwarding.received("INVITE") == []
    assert [line.split()[1].split("@")[0] for line in target.received("INVITE")] == \
        ["sip:1002"]

    caller = lab.call("A", "1003")  # 1003 forwards every call to the PSTN
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    assert pstn_forwarding.received("INVITE") == []
    invites = gateway.received("INVITE")
    assert len(invites) == 1 and invites[0].startswith("INVITE sip:+15550199@"), invites

    node = lab.node("A")
    forwarded = [(e["dn"], e["reason"], e["to"]) for e in node.events("call_forwarded")]
    assert forwarded == [("1001", "all", "1002"), ("1003", "all", "+15550199")]
    # 1002 was asked too (its profile has no forward-all) and then rang
    asked = [(e["digits"], e["action"]) for e in node.events("dial_plan_answer")
             if e.get("reason") == "all"]
    assert asked == [("1001", "route"), ("1002", "none"), ("1003", "route")]
