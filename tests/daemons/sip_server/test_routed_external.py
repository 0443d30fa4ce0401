"""Routes to external numbers and the calling profiles of routing points and
trunk groups (docs/node.md, "Routing points"; docs/feature-server.md, "Calling
profiles and assignments"; guide: "Calling profiles and its associations").

* ``RequestRouteCall`` to a number that is no DN of the switch leaves through
  the dial plan and the trunks like a dialled external call;
* the node's dial-plan query names the routing point that routed the call and
  the Trunk Group DN a call came in through, so their calling profiles apply
  (the same number dialled without them is refused by the switch's profile).

SIPp callers, SIPp's UAS as the PSTN gateway, the real feature-server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from protocols.tlib.errors import ErrorCode
from tests.daemons.sip_server.conftest import (
    CALLER_HOST,
    DC,
    NODE_HOST,
    ROOT,
)

pytestmark = pytest.mark.timeout(120)

PREDICTIVE_HOST = DC["dc1"] + "201"
EXTRA = f"""
# calls from the media server's address come in through this Trunk Group DN
[dns.TG_Predictive]
type = "TrunkGroup"
contact = "{PREDICTIVE_HOST}:5060"
geo-location = "dc1"
"""
DIAL_PLAN = """
[applications.FS_dc1.options.partitions.Basic]
rules = ["9.=>+${DIGITS:1}@trunk", "7.=>gcti::reject=403", "6.=>gcti::reject=403"]
[applications.FS_dc1.options.partitions.FromRoutingPoint]
rules = ["7.=>+44${DIGITS:1}@trunk"]
[applications.FS_dc1.options.partitions.Predictive]
rules = ["6.=>+33${DIGITS:1}@trunk"]
[applications.FS_dc1.options.calling-profiles.System]
partitions = ["Basic"]
[applications.FS_dc1.options.calling-profiles.RP5000]
partitions = ["FromRoutingPoint", "Basic"]
[applications.FS_dc1.options.calling-profiles.TGProfile]
partitions = ["Predictive", "Basic"]
[applications.FS_dc1.options.assignments.switch]
internal = "System"
external = "System"
[applications.FS_dc1.options.assignments.routing-point]
5000 = "RP5000"
[applications.FS_dc1.options.assignments.trunk-group]
TG_Predictive = "TGProfile"
"""


def sip_call(lab: Any, number: str, bind: str) -> int:
    """``sipcluster sip call`` from ``bind`` to ``number`` at node A: its exit code
    (0: answered and hung up)."""
    out = subprocess.run(
        [sys.executable, "-m", "daemons.cli", "sip", "call",
         f"sip:{number}@{NODE_HOST['A']}:{lab.ports['sip_A']}", "--from",
         f"sip:+15550100@{bind}", "--duration", "0.2", "--bind", bind],
        cwd=ROOT, capture_output=True, text=True, timeout=40)
    return out.returncode


async def _routed(lab: Any, urs: Any, number: str) -> dict[str, Any]:
    """A call from the SBC to routing point 5000, routed by ``urs`` to ``number``."""
    seen = len(urs.of("EventRouteRequest"))
    caller = lab.call("A", "5000")
    request = (await lab.until("EventRouteRequest",
                               lambda: urs.of("EventRouteRequest")[seen:]))[0]
    routed = await urs.request("RequestRouteCall", AttributeThisDN="5000",
                               AttributeConnID=request["AttributeConnID"],
                               AttributeOtherDN=number)
    stats = await asyncio.to_thread(caller.stats, 30)
    return {"routed": routed, "stats": stats, "errors": caller.errors()}


async def test_route_to_external_numbers_and_profiles_of_routing_point_and_trunk_group(
        node_lab: Any) -> None:
    lab = await node_lab(feature_server=DIAL_PLAN, extra=EXTRA, nodes="A")
    gateway = lab.gateway()
    urs = await lab.router("A", "URS", "5000")

    # a route to a number outside the cluster's DNs leaves through the trunk
    out = await _routed(lab, urs, "915550123")
    assert out["routed"]["message"] == "EventRouteUsed", out
    assert out["stats"].get("SuccessfulCall(C)") == "1", out
    # the routing point's profile applies to the routed call: 7... goes to +44
    out = await _routed(lab, urs, "7123")
    assert out["routed"]["message"] == "EventRouteUsed", out
    assert out["stats"].get("SuccessfulCall(C)") == "1", out
    invites = [line.split()[1].split("@")[0] for line in gateway.received("INVITE")]
    assert invites == ["sip:+15550123", "sip:+44123"]

    # a route to something that is no number is refused, the call keeps waiting
    caller = lab.call("A", "5000")
    request = (await lab.until("EventRouteRequest",
                               lambda: urs.of("EventRouteRequest")[2:]))[0]
    bad = await urs.request("RequestRouteCall", AttributeThisDN="5000",
                            AttributeConnID=request["AttributeConnID"],
                            AttributeOtherDN="no-such-dn")
    assert bad["message"] == "EventError" and \
        bad["AttributeErrorCode"] == int(ErrorCode.UNKNOWN_DN), bad
    routed = await urs.request("RequestRouteCall", AttributeThisDN="5000",
                               AttributeConnID=request["AttributeConnID"],
                               AttributeOtherDN="915550124")
    assert routed["message"] == "EventRouteUsed", routed
    assert (await asyncio.to_thread(caller.stats, 30)).get("SuccessfulCall(C)") == "1"

    # the trunk group's profile applies to calls from its address: 6... goes to +33
    assert await asyncio.to_thread(sip_call, lab, "6123", PREDICTIVE_HOST) == 0
    # the same numbers dialled without the routing point or trunk group: refused
    assert await asyncio.to_thread(sip_call, lab, "6123", CALLER_HOST) == 1
    assert await asyncio.to_thread(sip_call, lab, "7123", CALLER_HOST) == 1
    invites = [line.split()[1].split("@")[0] for line in gateway.received("INVITE")]
    assert invites == ["sip:+15550123", "sip:+44123", "sip:+15550124", "sip:+33123"]

    answers = [(e["digits"], e["action"], e.get("code")) for e in
               lab.node("A").events("dial_plan_answer") if e.get("reason") is None]
    assert answers == [("915550123", "route", None), ("7123", "route", None),
                       ("915550124", "route", None), ("6123", "route", None),
                       ("6123", "reject", 403), ("7123", "reject", 403)]
