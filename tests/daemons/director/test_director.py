"""``sipcluster director`` on real processes (docs/director.md): two nodes in
two data centres, SIPp agents and callers, agents logged in from T-Library
desktops. Calls to routing point 5000 wait in virtual queue 8000 and reach a
Ready agent with the skill, reserved before routed; two directors competing
for one agent get one reservation; with the director killed, calls go to
default-dn and it resumes on restart."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.daemons.director.conftest import (  # type: ignore[import-not-found]
    AGENTS,
    DC,
    DEFAULT_PHONE,
    ROOT,
    cluster_text,
)

pytestmark = pytest.mark.timeout(120)

SALES = ["1001", "1002", "1003", "1004"]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def ringing_overlaps(events: list[dict[str, Any]]) -> list[str]:
    """DNs offered a call while another call was still on them."""
    on: dict[str, set[str]] = {}
    bad = []
    for e in events:
        dn, conn = e.get("AttributeThisDN"), e.get("AttributeConnID")
        if e["message"] == "EventRinging":
            if on.get(dn):
                bad.append(f"{dn}: {conn} while {on[dn]}")
            on.setdefault(dn, set()).add(conn)
        elif e["message"] == "EventReleased":
            on.get(dn, set()).discard(conn)
    return bad


async def test_calls_reach_ready_agents_with_the_skill_in_two_data_centres(
        director_lab: Any) -> None:
    lab = await director_lab(router_timeout=20, overflow_after=0.5)
    phones = {dn: lab.agent_phone(dn, calls=30) for dn in AGENTS}
    default = lab.agent_phone(DEFAULT_PHONE, calls=30)
    desks = await lab.login_agents(list(AGENTS))
    # a routing client beside the director sees what the node asks
    monitor = await TLibClient.connect(DC["dc1"] + "11", lab.ports["default_A"], "Monitor",
                                       "legacy", local_addr=(DC["dc1"] + "91", 0))
    try:
        await monitor.request("RequestRegisterAddress", AttributeThisDN="5000")
        requests: list[dict[str, Any]] = []
        monitor.add_listener(lambda e: requests.append(dict(e))
                             if e["message"] == "EventRouteRequest" else None)
        director = await lab.director()
        await lab.until("the director sees the agents", lambda: any(
            e.get("t_controller") for e in director.events("t_controller_linked")))
        await asyncio.sleep(1.0)  # the agent DNs' states are in
        # the routing point's calls come in on both nodes: 20 in DC1, 10 in DC2
        dc1 = lab.callers("A", calls=20, rate=3)
        await asyncio.sleep(2.0)
        dc2 = lab.callers("C", calls=10, rate=2)
        for callers, count in ((dc1, "20"), (dc2, "10")):
            stats = await asyncio.to_thread(callers.stats, 90)
            assert stats.get("SuccessfulCall(C)") == count, (stats, callers.errors())
            assert stats.get("FailedCall(C)") == "0", callers.errors()
        routed = director.events("call_routed")
        assert len(routed) == 30
        assert {r["to"] for r in routed} == set(SALES)  # only agents with the skill
        node_of = {q["conn_id"]: q["node"] for q in director.events("call_queued")}
        # longest idle first: nothing is busy yet, so the first call of DC1 goes to
        # 1001 (logged in first)
        from_a = [r["to"] for r in routed if node_of[r["conn_id"]] == "SIPS_A"]
        from_c = [r["to"] for r in routed if node_of[r["conn_id"]] == "SIPS_C"]
        assert from_a[0] == "1001", from_a
        assert {"1003", "1004"} & set(from_c), from_c
        # own data centre first: a call reaches the other data centre's agent only
        # once it has waited overflow-after (0.5 s). Which agent is free when DC2's
        # calls come depends on how long DC1's calls last on the host.
        site = {"1001": "SIPS_A", "1002": "SIPS_A", "1003": "SIPS_C", "1004": "SIPS_C"}
        crossed = [r for r in routed if site[r["to"]] != node_of[r["conn_id"]]]
        assert all(r["waited"] >= 0.5 for r in crossed), crossed
        # EventRouteRequest carries the guide's extensions
        ext = requests[0]["AttributeExtensions"]
        assert ext == {"geo-location": "dc1", "OtherTrunkName": "Trunk_SBC_dc1"}
        # nobody was offered a call while on another one (reservation kept them apart)
        events = [e for d in desks.values() for e in d.events]
        assert not ringing_overlaps(sorted(events, key=lambda e: e["at"]))
        for dn in ("1005", "1006"):  # support only
            assert not [e for e in events if e["message"] == "EventRinging"
                        and e.get("AttributeThisDN") == dn]
        assert not [e for e in events if e["message"] == "EventRinging"
                    and e.get("AttributeThisDN") == DEFAULT_PHONE]
        for proc in (lab.procs["TC_A"], lab.procs["TC_C"]):
            assert not proc.events("agent_reservation_refused")  # one director: no conflict
        # the wallboard: JSON on the HTTP port and the status command
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "daemons.cli", "director", "status", "--config",
            str(lab.config), "--name", "Director1", "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        queue = status["queues"]["8000"]
        assert queue["routed"] == 30 and queue["waiting"] == 0 and queue["conflicts"] == 0
        assert status["agents"]["dc1"]["ready"] + status["agents"]["dc2"]["ready"] >= 4
        text = await asyncio.to_thread(subprocess.run, [  # its one director: no --name
            sys.executable, "-m", "daemons.cli", "director", "status", "--config",
            str(lab.config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert "8000" in text.stdout and "dc2" in text.stdout
    finally:
        await monitor.close()
    for phone in (*phones.values(), default):
        phone.proc.kill()


async def test_two_directors_one_agent_one_reservation(director_lab: Any) -> None:
    lab = await director_lab(directors=2, router_timeout=10)
    phone = lab.agent_phone("1001", calls=1)
    await lab.login_agents(["1001"])
    first, second = await lab.director(1), await lab.director(2)
    for d in (first, second):
        await lab.until("agent view", lambda d=d: d.events("t_controller_linked"))
    await asyncio.sleep(1.0)
    callers = lab.callers("A", calls=1, rate=1)
    stats = await asyncio.to_thread(callers.stats, 30)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, callers.errors())
    tc = lab.procs["TC_A"]
    reserved = [e for e in tc.events("agent_reserved") if e["dn"] == "1001"]
    conflicts = [e for e in tc.events("agent_reservation_refused") if e["code"] == 62]
    assert len(reserved) == 1 and len(conflicts) == 1
    # the higher agent_reservation priority (Director2: 2) won
    assert reserved[0]["priority"] == 2
    assert len(second.events("call_routed")) == 1 and not first.events("call_routed")
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "1"


async def test_director_killed_mid_load_no_call_lost_and_it_resumes(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=5, overflow_after=0)
    phones = [lab.agent_phone(dn, calls=40) for dn in SALES]
    default = lab.agent_phone(DEFAULT_PHONE, calls=40)
    await lab.login_agents(SALES)
    director = await lab.director()
    await lab.until("agent view", lambda: director.events("t_controller_linked"))
    await asyncio.sleep(1.0)
    callers = lab.callers("A", calls=12, rate=3)
    await lab.until("some calls routed", lambda: len(director.events("call_routed")) >= 4, 30)
    director.stop(signal.SIGKILL)
    stats = await asyncio.to_thread(callers.stats, 60)
    assert stats.get("SuccessfulCall(C)") == "12", (stats, callers.errors())
    assert stats.get("FailedCall(C)") == "0"
    routed_before = len(director.events("call_routed"))
    # the calls after the kill went to default-dn after router-timeout
    sip_a = lab.procs["SIPS_A"]
    defaulted = [e for e in sip_a.events("call_routed") if e.get("default")]
    assert len(defaulted) >= 12 - routed_before - 1 and defaulted
    # restarted, it routes again
    again = await lab.director()
    await lab.until("agent view", lambda: again.events("t_controller_linked"))

    async def ready_agents() -> int:
        status = json.loads(await asyncio.to_thread(_get, lab, "/status/director"))
        return sum(site["ready"] for site in status["agents"].values())

    # the restarted director routes once it sees the agents Ready again (the killed one's
    # reservations expire at their owners first)
    deadline = time.monotonic() + 30
    while await ready_agents() < len(SALES):
        assert time.monotonic() < deadline, "the restarted director never saw the agents Ready"
        await asyncio.sleep(0.2)
    more = lab.callers("A", calls=4, rate=4)
    stats = await asyncio.to_thread(more.stats, 40)
    assert stats.get("SuccessfulCall(C)") == "4", (stats, more.errors())
    assert len(again.events("call_routed")) == 4
    for p in (*phones, default):
        p.proc.kill()


def test_a_strategy_naming_a_missing_routing_point_is_refused(tmp_path: Any) -> None:
    ports = {k: 5000 + i for i, k in enumerate(
        [f"{key}_{n}" for n in "AC" for key in ("sip", "default", "http", "tc", "tchttp")]
        + ["director_1", "dport_1"] + [f"phone_{dn}" for dn in (*AGENTS, DEFAULT_PHONE)])}
    config = tmp_path / "cluster.toml"
    config.write_text(cluster_text(ports, directors=1, router_timeout=5, overflow_after=1)
                      .replace('routing-points = ["5000"]', 'routing-points = ["5077"]'))
    done = subprocess.run([sys.executable, "-m", "daemons.cli", "director", "--config",
                           str(config), "--name", "Director1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "applications.Director1.options.strategies.8000.routing-points" in lines[0]
    assert "5077 is not a DN of the switch" in lines[0]


async def test_reporting_clients_see_queued_abandoned_and_diverted(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=10)
    director = await lab.director()
    await lab.until("agent view", lambda: director.events("t_controller_linked"))
    report = await TLibClient.connect("127.0.145.80", lab.ports["dport_1"], "StatServer",
                                      "legacy", local_addr=("127.0.145.92", 0))
    events: list[dict[str, Any]] = []
    report.add_listener(lambda e: events.append(dict(e)))
    try:
        registered = await report.request("RequestRegisterAddress", AttributeThisDN="8000")
        assert registered["message"] == "EventRegistered"
        refused = await report.request("RequestRegisterAddress", AttributeThisDN="5000")
        assert refused["AttributeErrorCode"] == 50
        # no agent is logged in: the caller waits in the queue, then hangs up
        host = DC["dc1"] + "11"
        gone = lab.sipp(SCENARIOS / "uac_cancel_queued.xml", "127.0.145.201",
                        lab.free_port("127.0.145.201"),
                        ["-s", "5000", "-d", "1500"], target=f"{host}:{lab.ports['sip_A']}")
        stats = await asyncio.to_thread(gone.stats, 20)
        assert stats.get("SuccessfulCall(C)") == "1", (stats, gone.errors())
        await lab.until("EventAbandoned", lambda: any(
            e["message"] == "EventAbandoned" for e in events))
        queued = next(e for e in events if e["message"] == "EventQueued")
        assert (queued["AttributeThisDN"], queued["AttributeOtherDN"]) == ("8000", "5000")
        abandoned = next(e for e in events if e["message"] == "EventAbandoned")
        assert abandoned["AttributeConnID"] == queued["AttributeConnID"]
        # an agent: the next call is diverted to it
        phone = lab.agent_phone("1001", calls=1)
        await lab.login_agents(["1001"])
        await asyncio.sleep(0.5)
        callers = lab.callers("A", calls=1, rate=1)
        stats = await asyncio.to_thread(callers.stats, 20)
        assert stats.get("SuccessfulCall(C)") == "1", (stats, callers.errors())
        diverted = [e for e in events if e["message"] == "EventDiverted"]
        assert diverted and diverted[-1]["AttributeOtherDN"] == "1001"
        assert diverted[-1]["AttributeAgentID"] == "a1001"
        status = json.loads(await asyncio.to_thread(_get, lab, "/status/director"))
        queue = status["queues"]["8000"]
        assert (queue["abandoned"], queue["routed"], queue["waiting"]) == (1, 1, 0)
        phone.proc.kill()
    finally:
        await report.close()


def _get(lab: Any, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.145.80:{lab.ports['director_1']}{path}",
                                timeout=5) as resp:
        return str(resp.read().decode())


async def test_an_agent_another_router_reserved_is_not_offered(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=10)
    phone = lab.agent_phone("1002", calls=1)
    await lab.login_agents(["1001", "1002"])  # 1001 is the longest idle
    director = await lab.director()
    await lab.until("agent view", lambda: director.events("t_controller_linked"))
    await asyncio.sleep(1.0)
    urs = await lab.desktop("A", "URS_other")
    held = await urs.request("RequestReserveAgent", AttributeThisDN="1001",
                             AttributeTimeout=20)
    assert held["message"] == "EventAgentReserved"
    await asyncio.sleep(0.3)
    callers = lab.callers("A", calls=1, rate=1)
    stats = await asyncio.to_thread(callers.stats, 20)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, callers.errors())
    assert [r["to"] for r in director.events("call_routed")] == ["1002"]
    assert not lab.procs["TC_A"].events("agent_reservation_refused")  # no conflict needed
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "1"


async def test_site_preference_then_overflow_to_the_other_data_centre(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=10, overflow_after=1.5)
    phone = lab.agent_phone("1003", calls=1)
    await lab.login_agents(["1003"])  # the only agent is in DC2
    director = await lab.director()
    await lab.until("agent view", lambda: director.events("t_controller_linked"))
    await asyncio.sleep(1.0)
    health = json.loads(await asyncio.to_thread(_get, lab, "/healthz"))
    assert health["status"] == "ok"  # linked to the nodes and a t-controller
    callers = lab.callers("A", calls=1, rate=1)  # a DC1 call: DC1 agents first
    stats = await asyncio.to_thread(callers.stats, 20)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, callers.errors())
    (routed,) = director.events("call_routed")
    assert routed["to"] == "1003"
    assert 1.5 <= routed["waited"] < 4  # waited overflow-after for its own data centre
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "1"


async def test_director_moves_to_another_t_controller(director_lab: Any) -> None:
    lab = await director_lab(router_timeout=10, overflow_after=0)
    phone = lab.agent_phone("1003", calls=1)
    await lab.login_agents(["1001", "1003"])
    director = await lab.director()
    await lab.until("linked to TC_A (its own data centre's)", lambda: [
        e for e in director.events("t_controller_linked") if e["t_controller"] == "TC_A"])
    lab.procs["TC_A"].stop(signal.SIGKILL)
    await lab.until("linked to TC_C", lambda: [
        e for e in director.events("t_controller_linked") if e["t_controller"] == "TC_C"], 20)
    await asyncio.sleep(1.0)
    # node C's t-controller serves DC2's agent; a call into node C reaches it
    callers = lab.callers("C", calls=1, rate=1)
    stats = await asyncio.to_thread(callers.stats, 20)
    assert stats.get("SuccessfulCall(C)") == "1", (stats, callers.errors())
    assert [r["to"] for r in director.events("call_routed")] == ["1003"]
    assert director.events("t_controller_link_lost")
    assert (await asyncio.to_thread(phone.stats, 10)).get("SuccessfulCall(C)") == "1"
