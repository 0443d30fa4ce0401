"""The director's routing policy with a fake clock (docs/director.md,
"Routing"): agents by skill and level, longest idle or least occupied, site
preference and overflow, call priority from attached data; strategies
refused at load when they name nothing that exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemons.cluster.config import AppKind, load_cluster
from daemons.director.queue import AgentPool, VirtualQueue
from daemons.director.strategy import Strategy, read_director_config
from daemons.runtime.config import ConfigError

SKILLS = {"a1": {"sales": 5}, "a2": {"sales": 1}, "a3": {"sales": 3, "support": 2},
          "a4": {"support": 4}}


def pool_with(ready: list[tuple[str, str, str, float]]) -> AgentPool:
    """Agents (dn, agent id, site) made Ready at the given times (events come in
    time order)."""
    pool = AgentPool(SKILLS)
    for dn, agent_id, site, when in sorted(ready, key=lambda r: r[3]):
        pool.login(dn, agent_id, when)
        pool.ready(dn, agent_id, True, when, site)
    return pool


def strategy(**kw: object) -> Strategy:
    return Strategy(queue="8000", routing_points=("5000",), **kw)  # type: ignore[arg-type]


def test_longest_idle_with_the_skill_at_the_level() -> None:
    pool = pool_with([("1001", "a1", "dc1", 3.0), ("1002", "a2", "dc1", 1.0),
                      ("1003", "a3", "dc2", 2.0), ("1004", "a4", "dc1", 0.5)])
    s = strategy(skill="sales", min_level=2, site_preference=False)
    picked = pool.pick(s, None, overflow=True)
    assert picked is not None and picked.dn == "1003"  # a2 is below level 2, a4 lacks sales
    pool.hold("1003", 4.0)
    picked = pool.pick(s, None, overflow=True)
    assert picked is not None and picked.dn == "1001"
    pool.call_started("1001", "c1", 4.0)
    assert pool.pick(s, None, overflow=True) is None
    assert pool.pick(strategy(skill="", site_preference=False), None,
                     overflow=True).dn == "1004"  # any agent: the longest idle


def test_an_agent_is_idle_again_from_the_end_of_its_call() -> None:
    pool = pool_with([("1001", "a1", "dc1", 1.0), ("1003", "a3", "dc1", 2.0)])
    s = strategy(skill="sales", site_preference=False)
    pool.call_started("1001", "c1", 3.0)
    pool.call_ended("1001", "c1", 9.0)
    assert pool.pick(s, None, overflow=True).dn == "1003"
    pool.ready("1003", "a3", False, 10.0)
    assert pool.pick(s, None, overflow=True).dn == "1001"
    pool.logout("1001")
    assert pool.pick(s, None, overflow=True) is None


def test_site_preference_then_overflow() -> None:
    pool = pool_with([("1001", "a1", "dc1", 5.0), ("1003", "a3", "dc2", 1.0)])
    s = strategy(skill="sales", overflow_after=10.0)
    assert pool.pick(s, "dc1", overflow=False).dn == "1001"  # the call's site first
    pool.hold("1001", 6.0)
    assert pool.pick(s, "dc1", overflow=False) is None  # waits for its site ...
    assert pool.pick(s, "dc1", overflow=True).dn == "1003"  # ... until overflow
    queue = VirtualQueue(s)
    call = queue.add("c1", "5000", "SIPS_A", 100.0, geo_location="dc1")
    assert not queue.overflow(call, 109.9)
    assert queue.overflow(call, 110.0)
    assert queue.overflow(queue.add("c2", "5000", "SIPS_A", 100.0), 100.0)  # no geo: any site


def test_least_occupied() -> None:
    pool = pool_with([("1001", "a1", "dc1", 1.0), ("1002", "a2", "dc1", 2.0)])
    for n in range(3):
        pool.call_started("1001", f"c{n}", 3.0)
        pool.call_ended("1001", f"c{n}", 3.5)
    s = strategy(skill="sales", order="least-occupied", site_preference=False)
    assert pool.pick(s, None, overflow=True).dn == "1002"
    assert pool.pick(s, None, overflow=True, exclude={"1002"}).dn == "1001"


def test_queue_order_is_priority_then_arrival() -> None:
    queue = VirtualQueue(strategy(priority_key="prio", default_priority=1))
    queue.add("c1", "5000", "N", 1.0, user_data={})
    queue.add("c2", "5000", "N", 2.0, user_data={"prio": 9})
    queue.add("c3", "5000", "N", 3.0, user_data={"prio": "9"})
    queue.add("c4", "5000", "N", 4.0, user_data={"prio": "gold"})  # not a number: default
    assert [c.conn_id for c in queue.waiting()] == ["c2", "c3", "c1", "c4"]
    queue.calls["c2"].busy = True
    assert [c.conn_id for c in queue.waiting()] == ["c3", "c1", "c4"]
    queue.remove("c3", "routed")
    queue.remove("c1", "abandoned")
    status = queue.status(5.0)
    assert status["waiting"] == 2 and status["routed"] == 1 and status["abandoned"] == 1
    assert status["oldest-wait"] == pytest.approx(3.0)


CLUSTER = """
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A"]

[dns.5000]
type = "RoutingPoint"

[dns.8000]
type = "VirtualQueue"

[dns.1001]
type = "Extension"
contact = "*"
password = "s-1001-x"

[applications.SIPS_A]
kind = "sip-server"
host = "127.0.144.11"
geo-location = "dc1"
sip-port = 5060
default-port = 7000

[applications.TC_A]
kind = "t-controller"
host = "127.0.144.11"
sip-server = "SIPS_A"
tc-port = 7002

[applications.Director]
kind = "director"
host = "127.0.144.80"
http-port = 9100

[applications.Director.options]
reservation-priority = 3

[applications.Director.options.skills]
a1 = {{ sales = 5 }}

[applications.Director.options.strategies.{queue}]
routing-points = [{rps}]
skill = "{skill}"
"""


def director_config(tmp_path: Path, *, queue: str = "8000", rps: str = '"5000"',
                    skill: str = "sales") -> object:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER.format(queue=queue, rps=rps, skill=skill))
    config = load_cluster(path)
    return read_director_config(config, config.application("Director", AppKind.DIRECTOR))


def test_strategy_read_from_the_cluster_file(tmp_path: Path) -> None:
    settings = director_config(tmp_path)
    assert settings.reservation_priority == 3  # type: ignore[attr-defined]
    s = settings.by_routing_point["5000"]  # type: ignore[attr-defined]
    assert (s.queue, s.skill, s.order, s.site_preference) == ("8000", "sales",
                                                              "longest-idle", True)
    assert s.reservation_priority is None  # the director's own (3)


@pytest.mark.parametrize(("kw", "reason"), [
    ({"queue": "8001"}, "8001 is not a DN of the switch"),
    ({"queue": "5000"}, "DN 5000 is a RoutingPoint, not a VirtualQueue"),
    ({"rps": '"5001"'}, "5001 is not a DN of the switch"),
    ({"rps": '"1001"'}, "DN 1001 is a Extension, not a RoutingPoint"),
    ({"skill": "french"}, "no agent has skill 'french'"),
    ({"rps": ""}, "names no routing point"),
])
def test_a_strategy_naming_nothing_that_exists_is_refused(tmp_path: Path, kw: dict[str, str],
                                                          reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        director_config(tmp_path, **kw)
    assert reason in str(info.value)
    assert "applications.Director.options.strategies" in str(info.value)


def test_spread_by_site_availability() -> None:
    # dc1 has the longest-idle agent, dc2 has more available agents
    pool = pool_with([("1001", "a1", "dc1", 1.0), ("1002", "a2", "dc2", 2.0),
                      ("1003", "a3", "dc2", 3.0)])
    by_agent = strategy(skill="sales", site_preference=False)
    by_site = strategy(skill="sales", site_preference=False, spread="site")
    assert pool.pick(by_agent, None, overflow=True).dn == "1001"
    assert pool.pick(by_site, None, overflow=True).dn == "1002"  # dc2's longest idle
    pool.hold("1002", 4.0)
    pool.hold("1003", 4.0)
    assert pool.pick(by_site, None, overflow=True).dn == "1001"  # dc2 has none left
