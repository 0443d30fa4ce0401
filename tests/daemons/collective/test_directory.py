"""The company-wide directory with status: Boca's t-controller publishes its
agents to Boca's status-aggregator (the t-controller's own publisher and
agent table, a real aggregator process over mutual TLS); the Boca collective
watches it and every site shows the agent state, the logged-on site and the
on-phone flag. A status changed from Lyon is set at Boca and shown
everywhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from daemons.cluster.config import load_cluster
from daemons.runtime.logs import get_logger
from daemons.t_controller.agent import AgentOptions, AgentTable
from daemons.t_controller.status_publisher import StatusPublisher
from tests.daemons.collective.conftest import SPANNING, Collective, SiteProc


async def eventually(check: Callable[[], Any], timeout: float = 10.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await asyncio.to_thread(check)
        except (OSError, KeyError, AssertionError, TypeError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not met")
        await asyncio.sleep(0.05)


def status_at(site: SiteProc, home: int, user: str) -> dict[str, Any] | None:
    entry = site.get(f"/directory/{home}/{user}")
    return entry["status"]  # type: ignore[no-any-return]


async def test_agent_state_shows_at_every_site_and_changes_from_another(
        collective: Collective) -> None:
    boca, indy, lyon = (collective.sites[s] for s in (1, 2, 3))
    await asyncio.to_thread(collective.start_aggregator)
    await asyncio.to_thread(boca.put_user, "5001", "Agent 5001", "5001", [SPANNING])
    await eventually(lambda: (1, "5001") in lyon.users() and (1, "5001") in indy.users())
    await eventually(lambda: boca.get("/status")["status_aggregator"] == "SA_Boca",
                     20.0, "Boca not connected to its status-aggregator")

    table = AgentTable(AgentOptions())
    publisher = StatusPublisher.from_config(load_cluster(boca.config), "TC_Boca", table,
                                            get_logger("test"))
    assert publisher is not None
    publisher.start()
    try:
        table.login("1001", "5001", 0.0)
        for site in (boca, indy, lyon):
            status = await eventually(
                lambda s=site: (st := status_at(s, 1, "5001")) and st["logged_on"] and st,
                message=f"log-in not shown at {site.name}")
            assert status["status"] == "Not Ready"
            assert (status["logged_on_site"], status["logged_on_site_name"]) == (1, "Boca")
            assert status["server"] == "SIPS_Boca" and status["on_phone"] is False
        table.ready("1001", 1.0)
        table.call_established("1001", "conn-1", 2.0)
        for site in (indy, lyon):
            status = await eventually(
                lambda s=site: (st := status_at(s, 1, "5001")) and st["on_phone"] and st,
                message=f"on the phone not shown at {site.name}")
            assert status["status"] == "Available"

        # logged on through its t-controller: the agent state is the t-controller's
        code, body = await asyncio.to_thread(
            lyon.http, "POST", "/directory/1/5001/status", {"status": "At Lunch"})
        assert code == 409 and "t-controller" in body["error"]

        table.logout("1001", 3.0)
        for site in (boca, indy, lyon):
            await eventually(lambda s=site: status_at(s, 1, "5001")["logged_on"] is False,
                             message=f"log-out not shown at {site.name}")
    finally:
        await publisher.stop()

    # logged off: Lyon sets the status at Boca, every site shows it
    code, body = await asyncio.to_thread(
        lyon.http, "POST", "/directory/1/5001/status",
        {"status": "At Lunch", "detail": "back at two"})
    assert code == 200, body
    assert body["result"] == "accepted"
    for site in (boca, indy, lyon):
        status = await eventually(
            lambda s=site: (st := status_at(s, 1, "5001")) and st["status"] == "At Lunch" and st,
            message=f"status set from Lyon not shown at {site.name}")
        assert status["detail"] == "back at two"
    assert boca.log_events("collective_status_set")[-1]["by"] == 3

    # a user the directory does not hold, and a bad body
    code, _ = await asyncio.to_thread(lyon.http, "POST", "/directory/1/nobody/status",
                                      {"status": "x"})
    assert code == 404
    code, _ = await asyncio.to_thread(lyon.http, "POST", "/directory/1/5001/status",
                                      {"status": 7})
    assert code == 400


async def test_a_roaming_user_is_located_at_the_site_it_is_logged_on_at(
        collective: Collective) -> None:
    boca, indy, lyon = (collective.sites[s] for s in (1, 2, 3))
    await asyncio.to_thread(collective.start_aggregator, 2)
    await asyncio.to_thread(boca.put_user, "5002", "Roamer", "5002", [SPANNING])
    await eventually(lambda: (1, "5002") in indy.users() and (1, "5002") in lyon.users())
    await eventually(lambda: indy.get("/status")["status_aggregator"] == "SA_Indy",
                     20.0, "Indy not connected to its status-aggregator")
    home = await asyncio.to_thread(lyon.get, "/locate/5002")
    assert (home["site"], home["source"], home["phone_number"], home["local"]) == \
        (1, "home", "5615550100", False)

    # the Boca user logs on at Indy (Indy's t-controller publishes it)
    table = AgentTable(AgentOptions())
    publisher = StatusPublisher.from_config(load_cluster(indy.config), "TC_Indy", table,
                                            get_logger("test"))
    assert publisher is not None
    publisher.start()
    try:
        table.login("2001", "5002", 0.0)
        for site in (boca, indy, lyon):
            status = await eventually(
                lambda s=site: (st := status_at(s, 1, "5002")) and st["logged_on"] and st,
                message=f"roaming log-on not shown at {site.name}")
            assert (status["logged_on_site"], status["logged_on_site_name"]) == (2, "Indy")
            assert status["server"] == "SIPS_Indy"
        there = await asyncio.to_thread(lyon.get, "/locate/5002")
        assert (there["site"], there["source"], there["phone_number"]) == \
            (2, "logged-on", "3175550100")
        assert (await asyncio.to_thread(indy.get, "/locate/5002"))["local"] is True
        assert (await asyncio.to_thread(boca.get, "/locate/5002"))["site"] == 2

        # the hub away: the last site heard of
        collective.hub.kill9()
        last = await eventually(lambda: (r := lyon.get("/locate/5002"))
                                and not r["hub_connected"] and r)
        assert last["site"] == 2
        collective.hub.start()
        await asyncio.to_thread(collective.hub.wait_role, "active", 30.0)
        await eventually(lambda: lyon.get("/locate/5002")["hub_connected"], 20.0)

        # logged off at Indy: calls go home again
        table.logout("2001", 1.0)
        await eventually(lambda: lyon.get("/locate/5002")["site"] == 1,
                         message="log-off at Indy not seen at Lyon")
        assert (await asyncio.to_thread(lyon.get, "/locate/5002"))["source"] == "home"
    finally:
        await publisher.stop()
    refused = lyon.metric("sipcluster_collective_api_refused_total",
                          reason="unknown-extension")
    assert (await asyncio.to_thread(lyon.http, "GET", "/locate/77777"))[0] == 404
    # a number nobody has is a routine answer: counted as such, not as a refusal
    assert lyon.metric("sipcluster_collective_locates_total", result="unknown") >= 1
    assert lyon.metric("sipcluster_collective_api_refused_total",
                        reason="unknown-extension") == refused
    assert lyon.metric("sipcluster_collective_locates_total", result="found") >= 5
