"""Treatments for calls waiting on a routing point (docs/node.md, "Treatments"),
through real processes: a sip-server + t-controller (127.0.235.x), the
feature-server as the msml media server (127.0.236.31), SIPp's caller and
agent phone (127.0.237.x), a test router on the node's default port and a
reporting client on its IPport.

The caller (tests/daemons/sip_server/scenarios/uac_queued_treatment.xml) fails
unless the 200 it gets carries the media server's address and, once routed,
the node's re-INVITE offers the agent's media; it echoes RTP (``-rtp_echo``),
so the feature-server's received-RTP counter proves the music reached it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemons.sip_server.treatment import TREATMENT_USERS, continue_origin
from protocols.tlib.catalogue import TREATMENT_TYPES
from tests.daemons.sip_server.conftest import ROOT, SCENARIOS, Client, NodeLab, Sipp
from tests.daemons.sip_server.prack_lab import header

pytestmark = pytest.mark.timeout(90)

NODE = "127.0.235.11"
FS = "127.0.236.31"
AGENT = "127.0.237.101"
CALLER = "127.0.237.200"


class TreatmentLab(NodeLab):
    """One node, its t-controller and (unless ``media_server_down``) the feature-server."""

    def metrics(self, host: str, port: int) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("sipcluster_")}

    def fs_rtp_received(self) -> float:
        m = self.metrics(FS, self.ports["fs_http"])
        return sum(v for k, v in m.items() if k.startswith("sipcluster_rtp_packets_received"))

    def agent(self, scenario: Path = ROOT / "tests" / "interop" / "scenarios"
              / "node_uas_answer.xml") -> Sipp:
        return self.sipp(scenario, AGENT, self.ports["phone"],
                         ["-d", "300", "-mi", AGENT, "-mp", str(self.ports["agent_media"])])

    def caller(self, *, hangup: bool = False, hold_ms: int = 300,
               name: str = "uac_queued_treatment.xml", supports_timer: bool = True) -> Sipp:
        """The caller running scenario ``name`` (``hangup``: uac_queued_treatment.xml's
        variable). TREATMENT_IP and AGENT_MEDIA become the patterns of the media
        server's and the agent's SDP, a CALLER_SUPPORTED line ``Supported: timer``
        (none unless ``supports_timer``)."""
        scenario = self.path / name
        scenario.write_text((SCENARIOS / name).read_text()
                            .replace("TREATMENT_IP", FS.replace(".", r"\."))
                            .replace("AGENT_MEDIA", f"c=IN IP4 {AGENT}".replace(".", r"\.")
                                     + r"[^m]*m=audio " + str(self.ports["agent_media"]))
                            .replace("      CALLER_SUPPORTED\n",
                                     "      Supported: timer\n" if supports_timer else ""))
        queued = ["-set", "hangup", "1" if hangup else "0"] \
            if name == "uac_queued_treatment.xml" else []
        return self.sipp(scenario, CALLER, self.free_port(CALLER),
                         ["-s", "5000", "-set", "caller", "+15550100", "-set", "domain",
                          "cluster.test", *queued, "-d", str(hold_ms), "-mi", CALLER,
                          "-mp", str(self.free_port(CALLER)), "-rtp_echo"],
                         target=f"{NODE}:{self.ports['sip']}")

    async def routing_client(self) -> Client:
        r = await self.tlib(NODE, self.ports["default"], "Router", "127.0.235.94")
        answer = await r.request("RequestRegisterAddress", AttributeThisDN="5000")
        assert answer["message"] == "EventRegistered", answer
        return r

    async def reporter(self) -> Client:
        return await self.tlib(NODE, self.ports["ip"], "Reporting", "127.0.235.95")

    def node_events(self, event: str) -> list[dict[str, Any]]:
        return self.procs["SIPS_A"].events(event)


def cluster_text(ports: dict[str, int], *, router_timeout: float, msml: str,
                 extra: str = "") -> str:
    return f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[switch.tserver]
router-timeout = {router_timeout}
default-dn = "1001"
sip-enable-strict-auth = false

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A"]
dn-owner-applications = ["Cluster"]

[dns.5000]
type = "RoutingPoint"

[dns.1001]
type = "Extension"
contact = "sip:1001@{AGENT}:{ports['phone']}"

[dns.MSML_dc1]
type = "VoIPService"
service-type = "msml"
contact = "{msml}"
geo-location = "dc1"

[applications.SIPS_A]
kind = "sip-server"
host = "{NODE}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}
ip-port = {ports['ip']}
http-port = {ports['http']}

[applications.TC_A]
kind = "t-controller"
host = "{NODE}"
sip-server = "SIPS_A"
tc-port = {ports['tc']}
http-port = {ports['tchttp']}

[applications.FS_dc1]
kind = "feature-server"
host = "{FS}"
geo-location = "dc1"
sip-port = {ports['fs_sip']}
http-port = {ports['fs_http']}

[applications.FS_dc1.options]
state-dir = "{{state}}"
rtp-ports = "36100-36199"
""" + extra


@pytest.fixture
async def treatment_lab(tmp_path: Path, free_port: Callable[..., int],
                        require_tool: Callable[[str], str]) -> AsyncIterator[Any]:
    labs: list[TreatmentLab] = []

    async def make(*, router_timeout: float = 10.0, media_server_down: bool = False,
                   extra: Callable[[dict[str, int]], str] | None = None) -> TreatmentLab:
        ports = {key: free_port(NODE) for key in ("sip", "default", "ip", "http", "tc",
                                                    "tchttp")}
        ports.update(fs_sip=free_port(FS), fs_http=free_port(FS), phone=free_port(AGENT),
                     agent_media=free_port(AGENT))
        lab = TreatmentLab(tmp_path, ports, require_tool("sipp"), free_port)
        labs.append(lab)
        # a media server that is down: nothing listens on its TCP port
        msml = f"{FS}:{ports['fs_sip']}" + (";transport=tcp" if media_server_down else "")
        text = cluster_text(ports, router_timeout=router_timeout, msml=msml,
                            extra=extra(ports) if extra is not None else "")
        lab.config.write_text(text.replace("{state}", str(tmp_path / "fs-state")))
        if not media_server_down:
            lab.start("feature-server", "FS_dc1")
        lab.start("sip-server", "SIPS_A")
        lab.start("t-controller", "TC_A", wait="node_link_up")
        return lab

    yield make
    for lab in labs:
        await lab.close()


def _route_requests(router: Client) -> list[dict[str, Any]]:
    return router.of("EventRouteRequest", "5000")


async def test_music_while_queued_then_routed_to_the_agent(treatment_lab: Any) -> None:
    lab = await treatment_lab()
    router = await lab.routing_client()
    reporter = await lab.reporter()
    agent = lab.agent()
    caller = lab.caller()
    request = await lab.until("EventRouteRequest", lambda: _route_requests(router))
    conn_id = request[0]["AttributeConnID"]
    applied = await router.request("RequestApplyTreatment", AttributeThisDN="5000",
                                   AttributeConnID=conn_id, AttributeTreatmentType="Music")
    assert applied["message"] == "EventTreatmentApplied", applied
    assert applied["AttributeTreatmentType"] == "Music"
    # the caller hears the music: SIPp echoes it back to the feature-server
    await lab.until("RTP from the caller's echo", lambda: lab.fs_rtp_received() > 25)
    # a second treatment replaces the first (re-INVITE of the caller, BYE to the music)
    applied = await router.request("RequestApplyTreatment", AttributeThisDN="5000",
                                   AttributeConnID=conn_id, AttributeTreatmentType="RingBack")
    assert applied["message"] == "EventTreatmentApplied", applied
    heard = lab.fs_rtp_received()
    await lab.until("RTP of the ringback", lambda: lab.fs_rtp_received() > heard + 25)
    routed = await router.request("RequestRouteCall", AttributeThisDN="5000",
                                  AttributeConnID=conn_id, AttributeOtherDN="1001")
    assert routed["message"] == "EventRouteUsed", routed
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    # the agent got the caller's own offer; the caller's re-INVITE (checked by the
    # scenario) offered the agent's media, and the treatment leg was released
    invites = agent.received_messages("INVITE")
    assert len(invites) == 1 and "o=caller " in invites[0] and f"c=IN IP4 {CALLER}" in \
        invites[0], invites
    reinvites = caller.received_messages("INVITE")
    assert len(reinvites) == 2, reinvites
    assert f"c=IN IP4 {FS}" in reinvites[0] and f"c=IN IP4 {AGENT}" in reinvites[1]
    # RFC 4028: no session timer while treatments play (the caller's refresh would have
    # no party to go to); the routed call's re-INVITE asks the caller for one
    assert not header(reinvites[0], "Session-Expires"), reinvites[0]
    assert header(reinvites[1], "Session-Expires") == ["1800"], reinvites[1]
    assert "timer" in header(reinvites[1], "Supported"), reinvites[1]
    # one SDP session towards the caller: the node's o= line continues, version + 1
    origins = [line.strip() for m in reinvites for line in m.splitlines()
               if line.strip().startswith("o=")]
    assert len({o.rsplit(" ", 4)[0] for o in origins}) == 1, origins
    assert int(origins[1].split()[2]) == int(origins[0].split()[2]) + 1, origins
    fs = lab.metrics(FS, lab.ports["fs_http"])
    assert fs['sipcluster_treatments_total{outcome="ended",treatment="music"}'] == 1
    assert fs['sipcluster_treatments_total{outcome="ended",treatment="ringback"}'] == 1
    node = lab.metrics(NODE, lab.ports["http"])
    assert node['sipcluster_treatments_total{outcome="applied",treatment="Music"}'] == 1
    assert node['sipcluster_treatments_total{outcome="replaced",treatment="Music"}'] == 1
    assert node['sipcluster_treatments_total{outcome="routed",treatment="RingBack"}'] == 1
    established = lab.node_events("call_established")
    assert [(e["caller"], e["callee"], e.get("after")) for e in established] == \
        [("+15550100", "1001", "treatment")]
    # the reporting client saw the routing point's story
    await lab.until("EventReleased", lambda: reporter.of("EventReleased"))
    names = [(e["message"], e["AttributeThisDN"]) for e in reporter.events
             if e.get("AttributeConnID") == conn_id]
    assert names.count(("EventTreatmentApplied", "5000")) == 2, names
    for expected in (("EventQueued", "5000"), ("EventTreatmentApplied", "5000"),
                     ("EventDiverted", "5000"), ("EventEstablished", "1001")):
        assert expected in names, names
    assert names.index(("EventQueued", "5000")) < names.index(
        ("EventTreatmentApplied", "5000")) < names.index(("EventDiverted", "5000"))


async def test_caller_hangs_up_during_the_treatment(treatment_lab: Any) -> None:
    """The treatment asked through the t-controller; the caller hangs up: the
    treatment leg is released, EventAbandoned to the reporting client."""
    lab = await treatment_lab()
    router = await lab.routing_client()
    reporter = await lab.reporter()
    caller = lab.caller(hangup=True, hold_ms=1500)
    request = await lab.until("EventRouteRequest", lambda: _route_requests(router))
    conn_id = request[0]["AttributeConnID"]
    # a third-party router on the t-controller's TCport: the request is relayed to the node
    desk = await lab.tlib(NODE, lab.ports["tc"], "Cluster", "127.0.235.90")
    registered = await desk.request("RequestRegisterAddress", AttributeThisDN="5000")
    assert registered["message"] == "EventRegistered", registered
    applied = await desk.request("RequestApplyTreatment", AttributeThisDN="5000",
                                 AttributeConnID=conn_id, AttributeTreatmentType="RingBack")
    assert applied["message"] == "EventTreatmentApplied", applied
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    abandoned = await lab.until("EventAbandoned", lambda: reporter.of("EventAbandoned"))
    assert abandoned[0]["AttributeThisDN"] == "5000"
    assert abandoned[0]["AttributeConnID"] == conn_id
    assert router.of("EventAbandoned", "5000")
    # the node released the treatment leg: the feature-server got BYE
    await lab.until("the treatment ended", lambda: lab.metrics(FS, lab.ports["fs_http"]).get(
        'sipcluster_treatments_total{outcome="ended",treatment="ringback"}') == 1)
    node = lab.metrics(NODE, lab.ports["http"])
    assert node['sipcluster_treatments_total{outcome="abandoned",treatment="RingBack"}'] == 1
    assert lab.metrics(FS, lab.ports["fs_http"])["sipcluster_treatments_active"] == 0
    assert not router.of("EventRouteUsed")


async def test_bad_treatment_requests_and_media_server_down(treatment_lab: Any) -> None:
    """EventError with the code, a log line and a counter; the call is not lost:
    router-timeout sends it to default-dn, where the agent answers it."""
    lab = await treatment_lab(router_timeout=3.0, media_server_down=True)
    router = await lab.routing_client()
    agent = lab.agent()
    caller = lab.sipp(ROOT / "tests" / "integration" / "scenarios" / "uac_inbound.xml",
                      CALLER, lab.free_port(CALLER),
                      ["-s", "5000", "-set", "caller", "+15550100", "-set", "domain",
                       "cluster.test"], target=f"{NODE}:{lab.ports['sip']}")
    request = await lab.until("EventRouteRequest", lambda: _route_requests(router))
    conn_id = request[0]["AttributeConnID"]
    cases = [({"AttributeConnID": "00000000deadbeef"}, 58),
             ({"AttributeTreatmentType": "Karaoke"}, 41),
             ({"AttributeThisDN": "1001"}, 59),
             ({}, 64)]  # the media server is down
    for change, code in cases:
        attrs = {"AttributeThisDN": "5000", "AttributeConnID": conn_id,
                 "AttributeTreatmentType": "Music", **change}
        answer = await router.request("RequestApplyTreatment", **attrs)
        assert answer["message"] == "EventError", (change, answer)
        assert answer["AttributeErrorCode"] == code, (change, answer)
    not_applied = router.of("EventTreatmentNotApplied", "5000")
    assert len(not_applied) == 1 and not_applied[0]["AttributeErrorCode"] == 64
    # default routing after router-timeout: the caller reaches the agent all the same
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    assert len(agent.received_messages("INVITE")) == 1
    refused = lab.node_events("treatment_refused")
    assert sorted(e["code"] for e in refused) == [41, 58, 59, 64], refused
    node = lab.metrics(NODE, lab.ports["http"])
    for treatment, reason in (("unknown", "unknown_treatment"), ("Music", "unknown_connid"),
                              ("Music", "not_at_routing_point"), ("Music", "not_applied")):
        key = f'sipcluster_treatments_total{{outcome="{reason}",treatment="{treatment}"}}'
        assert node[key] == 1, (key, json.dumps(node, indent=1)[:3000])


async def test_default_routing_after_router_timeout_leaves_the_treatment(
        treatment_lab: Any) -> None:
    """No RequestRouteCall: router-timeout sends the treated call to default-dn;
    the agent gets the caller's offer, the caller a re-INVITE with the agent's media."""
    lab = await treatment_lab(router_timeout=3.0)
    router = await lab.routing_client()
    agent = lab.agent()
    caller = lab.caller()
    request = await lab.until("EventRouteRequest", lambda: _route_requests(router))
    applied = await router.request("RequestApplyTreatment", AttributeThisDN="5000",
                                   AttributeConnID=request[0]["AttributeConnID"],
                                   AttributeTreatmentType="Silence")
    assert applied["message"] == "EventTreatmentApplied", applied
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors())
    used = router.of("EventRouteUsed", "5000")
    assert used and used[0]["AttributeReason"] == {"route": "default"}, used
    assert len(agent.received_messages("INVITE")) == 1
    fs = lab.metrics(FS, lab.ports["fs_http"])
    assert fs['sipcluster_treatments_total{outcome="ended",treatment="silence"}'] == 1


@pytest.mark.parametrize("supports_timer", [True, False],
                         ids=["caller_supports_timer", "caller_without_supported_timer"])
async def test_caller_422_to_the_routed_reinvite_is_retried_with_its_min_se(
        treatment_lab: Any, supports_timer: bool) -> None:
    """RFC 4028 §6, §7.3, §7.4: the caller's 422 with Min-SE 3600 to the re-INVITE that
    brings the agent's answer and asks for the node's interval (the caller's leg has no
    session timer yet) gets the re-INVITE again with Session-Expires and Min-SE 3600;
    that Min-SE stays the leg's floor once its timer starts, so the agent's refresh
    reaches the caller with Min-SE 3600 (the caller's scenario checks each on the wire)."""
    lab = await treatment_lab()
    router = await lab.routing_client()
    agent = lab.agent(SCENARIOS / "uas_session_refreshes_back.xml")
    caller = lab.caller(name="uac_treatment_session_min_se.xml",
                        supports_timer=supports_timer)
    request = await lab.until("EventRouteRequest", lambda: _route_requests(router))
    conn_id = request[0]["AttributeConnID"]
    applied = await router.request("RequestApplyTreatment", AttributeThisDN="5000",
                                   AttributeConnID=conn_id, AttributeTreatmentType="Music")
    assert applied["message"] == "EventTreatmentApplied", applied
    routed = await router.request("RequestRouteCall", AttributeThisDN="5000",
                                  AttributeConnID=conn_id, AttributeOtherDN="1001")
    assert routed["message"] == "EventRouteUsed", routed
    stats = await asyncio.to_thread(caller.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, caller.errors(), agent.errors())
    agent_stats = await asyncio.to_thread(agent.stats, 10)
    assert agent_stats.get("SuccessfulCall(C)") == "1", (agent_stats, agent.errors())

    first, retry = caller.received_messages("INVITE")
    assert (header(first, "Session-Expires"), header(first, "Min-SE")) == (["1800"], []), first
    assert (header(retry, "Session-Expires"), header(retry, "Min-SE")) == (
        ["3600"], ["3600"]), retry
    assert "timer" in header(retry, "Supported"), retry
    for name in ("Call-ID", "From", "To"):
        assert header(retry, name) == header(first, name), (name, first, retry)
    cseq = [int(header(m, "CSeq")[0].split()[0]) for m in (first, retry)]
    assert cseq[1] == cseq[0] + 1, cseq
    # the agent's refresh relayed: the caller's leg's interval and the Min-SE of its 422
    updates = caller.received_messages("UPDATE")
    assert [(header(m, "Session-Expires"), header(m, "Min-SE")) for m in updates] == [
        (["3600;refresher=uas"], ["3600"])], updates
    retries = lab.node_events("session_interval_too_small_retry")
    assert [e["min_se"] for e in retries] == [3600], retries
    started = [e for e in lab.node_events("session_timer_started") if e["dn"] == "+15550100"]
    assert [e["interval"] for e in started] == [3600], started


def test_treatment_types_and_sdp_origin() -> None:
    assert set(TREATMENT_USERS) == set(TREATMENT_TYPES)
    sent = b"v=0\r\no=sipcluster 7 3 IN IP4 127.0.236.31\r\ns=-\r\nc=IN IP4 127.0.236.31\r\n"
    agent = b"v=0\r\no=phone 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\n"
    assert continue_origin(sent, agent) == \
        b"v=0\r\no=sipcluster 7 4 IN IP4 127.0.236.31\r\ns=-\r\nc=IN IP4 10.0.0.5\r\n"
    assert continue_origin(b"", agent) == agent
