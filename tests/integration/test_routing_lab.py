"""The lab routes without an outside router (docs/director.md, "The lab"):
``sipcluster lab`` from deploy/etc/cluster.toml, moved to 127.0.148.x (DC1)
and 127.0.149.x (DC2), starts the director with virtual queue 8000 for
routing point 5000 and skills on the lab's agents; lab.json names them. A
phone registers through a SIP Proxy, its agent logs in from a desktop, and an
inbound call to 5000 reaches it: no router but the director."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.integration.support import (  # type: ignore[import-not-found]
    SCENARIOS,
    ClusterLab,
    SippPhones,
    SippRun,
    generate_cluster_file,
    http_json,
    phones_fixture,
    running_lab,
    until,
)
from tests.support.agents import agent_login

SUBNETS = {"127.0.1.": "127.0.148.", "127.0.2.": "127.0.149."}
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def routing_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    tmp = tmp_path_factory.mktemp("routing")
    config = generate_cluster_file(tmp / "cluster.toml", SUBNETS, options={"wrap-up-time": 0})
    yield from running_lab(ClusterLab(tmp / "run", {}), config)


class Phones(SippPhones[SippRun]):
    run_type = SippRun


phones = phones_fixture(Phones, "routing_lab")


def _director(lab: ClusterLab) -> dict[str, Any]:
    return dict(lab.desc["directors"][0])


async def test_a_call_to_the_routing_point_reaches_a_ready_agent(routing_lab: ClusterLab,
                                                                phones: Phones) -> None:
    lab = routing_lab
    director = _director(lab)
    assert director["name"] == "Director" and director["running"]
    assert director["queues"] == {"8000": {"routing_points": ["5000"], "skill": "sales"}}
    assert director["skills"]["a1001"]["sales"] == 5
    host, port = director["host"], director["http_port"]
    await until("the director linked to every node and a t-controller", lambda: (
        (s := http_json(host, port, "/status/director"))["t-controller"]
        and len(s["nodes"]) == 4), 30)
    # agent a1001's phone registers through a DC1 proxy and waits for a call
    proxy = next(iter(lab.proxies("dc1").values()))
    address = "127.0.148.101"
    phones.run(SCENARIOS / "register.xml", address, 5060, (proxy["host"], proxy["sip_port"]),
               "1001", "-au", "1001", "-ap", lab.password("1001"), "-set", "expires",
               "600").check()
    answer = phones.run(SCENARIOS / "uas_answer.xml", address, 5060, ("127.0.0.1", 9), "1001",
                        timeout=40)
    # the agent logs in from a desktop on a DC1 t-controller (relayed to the DN's owner)
    node = next(iter(lab.nodes("dc1").values()))
    desk = await TLibClient.connect(node["host"], node["tc_port"], "Cluster", "legacy",
                                    local_addr=("127.0.148.90", 0))
    try:
        async with asyncio.timeout(30):
            registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
            assert registered["message"] == "EventRegistered", registered
            # the DN comes in service at the t-controller a moment after the phone's 200
            login = await agent_login(desk, "1001", "a1001", "AutoIn")
            assert login["message"] == "EventAgentLogin", login
        await until("the director sees a1001 Ready", lambda: http_json(
            host, port, "/status/director")["agents"].get("dc1", {}).get("ready"), 15)
        # an inbound call from the DC1 trunk to routing point 5000
        caller = phones.run(SCENARIOS / "uac_inbound.xml", "127.0.148.200",
                            phones.free_port("127.0.148.200"), (node["host"], node["sip_port"]),
                            "5000", "-set", "caller", "+15550100", timeout=30)
        await asyncio.to_thread(caller.check, 40)
        await asyncio.to_thread(answer.check, 40)
        queue = http_json(host, port, "/status/director")["queues"]["8000"]
        assert queue["routed"] == 1 and queue["default-routed"] == 0
    finally:
        await desk.close()


def test_lab_json_lists_the_director(routing_lab: ClusterLab) -> None:
    path = Path(routing_lab.directory) / "lab.json"
    assert '"directors"' in path.read_text()
