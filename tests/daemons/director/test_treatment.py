"""A virtual queue's treatment (docs/director.md, "Treatments"): a call that
waits with no agent available hears the queue's music from the feature-server
(the director sends RequestApplyTreatment to the node that holds it); when an
agent becomes Ready the director reserves and routes as ever, the treatment
leg is released and the caller's re-INVITE offers the agent's media. Real
processes on 127.0.235.x-127.0.238.x (the harness of
tests/daemons/sip_server/test_treatment.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.daemons.sip_server.test_treatment import (  # noqa: F401 (the fixture)
    AGENT,
    CALLER,
    FS,
    NODE,
    treatment_lab,
)

pytestmark = pytest.mark.timeout(90)

DIRECTOR = "127.0.238.80"


def _director(ports: dict[str, int]) -> str:
    return f"""
[dns.8000]
type = "VirtualQueue"

[applications.Director1]
kind = "director"
host = "{DIRECTOR}"
geo-location = "dc1"
http-port = {ports['director_http']}
director-port = {ports['director_port']}

[applications.Director1.options.strategies.8000]
routing-points = ["5000"]
treatment = "Music"
treatment-parms = {{ MUSIC = "music/on_hold" }}
"""


async def test_queue_music_until_an_agent_is_ready(treatment_lab: Any,  # noqa: F811
                                                   free_port: Callable[..., int]) -> None:
    director_ports = {"director_http": free_port(DIRECTOR), "director_port": free_port(DIRECTOR)}
    lab = await treatment_lab(extra=lambda ports: _director({**ports, **director_ports}))
    director = await lab.spawn("director", "Director1")
    await lab.until("the director's links", lambda: director.events("node_linked")
                    and director.events("t_controller_linked"))
    agent = lab.agent()
    caller = lab.caller(hold_ms=300)
    # no agent is logged in: the director applies the queue's music
    await lab.until("the treatment", lambda: director.events("call_treatment_applied"))
    await lab.until("RTP from the caller's echo", lambda: lab.fs_rtp_received() > 25)
    desk = await lab.tlib(NODE, lab.ports["tc"], "Cluster", "127.0.235.90")
    answer = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
    assert answer["message"] == "EventRegistered", answer
    login = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                               AttributeAgentID="a1001", AttributeAgentWorkMode="AutoIn")
    assert login["message"] == "EventAgentLogin", login
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    routed = director.events("call_routed")
    assert [e["to"] for e in routed] == ["1001"], routed
    reinvites = caller.received_messages("INVITE")
    assert len(reinvites) == 1 and f"c=IN IP4 {AGENT}" in reinvites[0], reinvites
    invites = agent.received_messages("INVITE")
    assert len(invites) == 1 and f"c=IN IP4 {CALLER}" in invites[0], invites
    fs = lab.metrics(FS, lab.ports["fs_http"])
    assert fs['sipcluster_treatments_total{outcome="ended",treatment="music"}'] == 1
    node = lab.metrics(NODE, lab.ports["http"])
    assert node['sipcluster_treatments_total{outcome="routed",treatment="Music"}'] == 1
    treated = lab.metrics(DIRECTOR, director_ports["director_http"])
    assert treated['sipcluster_director_calls_total{outcome="treated",queue="8000"}'] == 1
