"""Monitored sites with a fake clock (docs/director.md, "Monitored servers";
guide: Interaction Director Monitored Server): what a site's director
reports, how the Director Server spreads calls by it, stale sites left out,
bad reports refused."""

from __future__ import annotations

from typing import Any

import pytest

from daemons.director.queue import AgentPool, VirtualQueue
from daemons.director.sites import (
    ANY_SKILL,
    BadSiteReport,
    SiteBoard,
    SiteReport,
    parse_report,
    site_report,
)
from daemons.director.strategy import Strategy


def report(site: str, sales: int, *, waiting: int = 0) -> SiteReport:
    return parse_report({"site": site, "available": {ANY_SKILL: sales, "sales": sales},
                         "logged-in": sales, "queues": {"8000": {
                             "waiting": waiting, "oldest-wait": 0.0, "service-level": None}}})


def test_a_site_reports_its_own_agents_per_skill_and_its_queues() -> None:
    pool = AgentPool({"a1": {"sales": 5}, "a2": {"sales": 1, "support": 2},
                      "a3": {"support": 3}, "a4": {"sales": 2}})
    for dn, agent, site in (("1001", "a1", "dc1"), ("1002", "a2", "dc1"),
                            ("1003", "a3", "dc1"), ("1004", "a4", "dc2")):
        pool.login(dn, agent, 0.0)
        pool.ready(dn, agent, True, 0.0, site)
    pool.call_started("1002", "c9", 1.0)  # busy: not available
    queue = VirtualQueue(Strategy(queue="8000", routing_points=("5000",), skill="sales"))
    queue.add("c1", "5000", "SIPS_A", 2.0)
    queue.stats.update({"routed": 3, "abandoned": 1, "routed-in-target": 2})
    got = site_report("dc1", pool, [queue], 5.0)
    assert got.available == {ANY_SKILL: 2, "sales": 1, "support": 1}  # dc2's a4 is not ours
    assert got.logged_in == 3
    fig = got.queues["8000"]
    assert (fig.waiting, fig.oldest_wait, fig.service_level) == (1, 3.0, 0.5)
    # what goes on the wire reads back the same
    assert parse_report(got.to_map()) == got


def test_calls_go_to_the_site_with_most_free_agents_counting_calls_sent() -> None:
    board = SiteBoard({"Paris": "9001", "Lyon": "9002"}, stale_after=3.0)
    board.reported("Paris", report("paris", 3), 0.0)
    board.reported("Lyon", report("lyon", 1), 0.0)
    sent = []
    for _ in range(5):
        site = board.pick("sales", 0.5)
        if site is None:
            break
        board.sent(site)
        sent.append(site.name)
    # 3 free in Paris, 1 in Lyon: Paris until it has as few free as Lyon, then turns
    assert sent == ["Paris", "Paris", "Lyon", "Paris"]
    assert board.pick("sales", 0.5) is None  # every reported agent has a call on its way
    board.reported("Lyon", report("lyon", 2), 1.0)  # a new report: counts start again
    assert board.pick("sales", 1.0).name == "Lyon"  # type: ignore[union-attr]
    assert board.pick("support", 1.0) is None  # no site has the skill


def test_a_stale_site_is_left_out_until_it_reports_again() -> None:
    board = SiteBoard({"Paris": "9001", "Lyon": "9002"}, stale_after=3.0)
    assert board.pick("sales", 0.0) is None  # nobody reported yet
    board.reported("Paris", report("paris", 5), 0.0)
    board.reported("Lyon", report("lyon", 1), 2.0)
    assert board.pick("sales", 3.0).name == "Paris"  # type: ignore[union-attr]
    assert board.pick("sales", 3.5).name == "Lyon"  # type: ignore[union-attr]  # Paris stale
    status = board.status(3.5)
    assert status["sites"]["Paris"]["state"] == "stale"
    assert status["sites"]["Lyon"]["state"] == "fresh"
    # the enterprise view counts fresh sites only
    assert status["enterprise-group-details"]["available"]["sales"] == 1
    board.reported("Paris", report("paris", 5), 4.0)
    assert board.pick("sales", 4.0).name == "Paris"  # type: ignore[union-attr]
    assert board.pick("sales", 4.0, exclude={"site:Paris"}).name == "Lyon"  # type: ignore[union-attr]


@pytest.mark.parametrize(("data", "reason"), [
    ("nope", "not a map"),
    ({"available": {}}, "names no site"),
    ({"site": "x", "available": {"sales": -1}}, "available"),
    ({"site": "x", "available": {"sales": True}}, "available"),
    ({"site": "x", "available": {}, "logged-in": "3"}, "logged-in"),
    ({"site": "x", "available": {}, "queues": {"8000": {"waiting": 1}}}, "queues.8000"),
    ({"site": "x", "available": {}, "queues": {"8000": {
        "waiting": 1, "oldest-wait": 0, "service-level": 2}}}, "queues.8000"),
    ({"site": "x", "available": {str(n): 1 for n in range(1001)}}, "available"),
])
def test_a_bad_report_is_refused_with_the_reason(data: Any, reason: str) -> None:
    with pytest.raises(BadSiteReport, match=reason):
        parse_report(data)
