"""Persistent statuses across a restart: both stores (SQLite, a real
PostgreSQL) through the same tests, and the aggregator restarted on its store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemons.status_aggregator.store import PostgresStore, SqliteStore, Store, split
from protocols.status.messages import Role, StatusRecord
from tests.daemons.status_aggregator.conftest import Lab


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        made: Store = SqliteStore(tmp_path / "status.db")
    else:
        made = PostgresStore(request.getfixturevalue("postgres_dsn"))
    await made.open()
    yield made
    await made.close()


def rec(user: str, seq: int, **kw: object) -> StatusRecord:
    return StatusRecord(user=user, publisher="TC_1", incarnation=1, seq=seq,
                        **kw)  # type: ignore[arg-type]


async def test_keeps_persistent_statuses_newest_first(store: Store) -> None:
    kept, dropped = split([
        rec("ann@x", 5, status="On Vacation", persistent=True, until=1.9e9, detail="Bali"),
        rec("bob@x", 6, status="Follow Up"),
    ])
    assert dropped == ["bob@x"]
    await store.save(kept, dropped)
    # an older record does not replace a newer one (two mirrors writing)
    await store.save([rec("ann@x", 4, status="Gone Home", persistent=True)], [])
    [ann] = await store.load()
    assert (ann.user, ann.status, ann.persistent, ann.until, ann.detail, ann.seq) == (
        "ann@x", "On Vacation", True, 1.9e9, "Bali", 5)
    assert ann.server == "" and ann.on_phone is False
    await store.save([], ["ann@x"])
    assert await store.load() == []


async def test_persistent_status_survives_an_aggregator_restart(lab: Lab) -> None:
    service = await lab.start("SA_1")
    tc = lab.client("TC_1", Role.PUBLISHER)
    await tc.wait_open()
    tc.publish([StatusRecord(user="cy@cluster.lab", status="On Vacation", persistent=True,
                             server="SIPS_1"),
                StatusRecord(user="dee@cluster.lab", status="Follow Up", server="SIPS_1")])
    for _ in range(100):
        if len(service.aggregator.table) == 2:
            break
        await asyncio.sleep(0.05)
    await tc.stop()
    await lab.stop("SA_1")  # saves what is left
    service = await lab.start("SA_1")
    cy = service.aggregator.table.view("cy@cluster.lab")
    assert (cy.status, cy.persistent, cy.server) == ("On Vacation", True, "")
    assert "dee@cluster.lab" not in service.aggregator.table.raw
    desk = lab.client("desk", Role.CONSUMER)
    await desk.wait_open()
    [answer] = (await desk.query(["cy@cluster.lab"])).records
    assert answer.status == "On Vacation"
