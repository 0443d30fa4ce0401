"""The hub's store: the same tests on embedded SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemons.rtm_server.store import (
    Batch,
    PendingRequest,
    PostgresStore,
    SqliteStore,
    Store,
    StoredMessage,
    StoreError,
    open_store,
)


def message(id_: int, dest: int, *, origin: int = 1, expires: float | None = None,
            size: int = 100) -> StoredMessage:
    return StoredMessage(id_, dest, origin, "event", "o", "e", b"\x91\x92\xa1i\x05", 0, 0, 0,
                         1000.0 + id_, expires, size)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "hub.db")
    else:
        s = PostgresStore(request.getfixturevalue("postgres_dsn"))
    await s.open()
    assert await s.acquire()
    yield s
    await s.close()


async def test_commit_load_fetch_and_ack(store: Store) -> None:
    await store.commit(Batch(messages=[message(1, 2), message(2, 3), message(3, 2)],
                             origins={1: 3}, last_id=3, last_correlation=0))
    state = await store.load()
    assert state.last_id == 3
    assert state.origins == {1: 3}
    assert state.queues == {2: (2, 200), 3: (1, 100)}
    assert [m.id for m in await store.fetch(2, 0, 10)] == [1, 3]
    assert [m.id for m in await store.fetch(2, 1, 10)] == [3]
    got = (await store.fetch(3, 0, 10))[0]
    assert got == message(2, 3)
    await store.commit(Batch(acks={2: 1}))
    assert [m.id for m in await store.fetch(2, 0, 10)] == [3]


async def test_ids_are_never_reused_once_queues_are_empty(store: Store) -> None:
    await store.commit(Batch(messages=[message(1, 2)], last_id=1, last_correlation=4))
    await store.commit(Batch(acks={2: 1}))
    state = await store.load()
    assert state.queues == {}
    assert (state.last_id, state.last_correlation) == (1, 4)


async def test_pending_requests_survive_and_are_removed(store: Store) -> None:
    p = PendingRequest(7, 1, 2, 15, None, 3)
    q = PendingRequest(8, 1, 2, 16, 2000.5, 4)
    await store.commit(Batch(pending_add=[p, q]))
    assert sorted((await store.load()).pending, key=lambda x: x.correlation) == [p, q]
    await store.commit(Batch(pending_done=[7]))
    assert (await store.load()).pending == [q]


async def test_kill_and_expire_move_rows_to_the_dead_letters(store: Store) -> None:
    await store.commit(Batch(messages=[message(1, 2, expires=50.0), message(2, 3, expires=50.0),
                                       message(3, 2, expires=5000.0), message(4, 2)]))
    moved = await store.expire(100.0, skip=[3], limit=100)
    assert moved == [(1, 2, 100, "ttl-expired")]
    moved = await store.commit(Batch(kill=[(4, "request-timeout"), (99, "request-timeout")],
                                     at=100.0))
    assert moved == [(4, 2, 100, "request-timeout")]
    assert [m.id for m in await store.fetch(2, 0, 10)] == [3]
    dead = await store.dead_letters(10)
    assert [(d["id"], d["reason"]) for d in dead] == [(4, "request-timeout"),
                                                      (1, "ttl-expired")]
    assert (await store.load()).dead_letters == 2


async def test_dead_letters_from_a_batch(store: Store) -> None:
    await store.commit(Batch(dead=[(message(5, 2), "queue-full")], at=10.0))
    assert [(d["id"], d["dest"], d["reason"]) for d in await store.dead_letters(10)] == [
        (5, 2, "queue-full")]


async def test_only_one_hub_holds_the_store(store: Store, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    if isinstance(store, SqliteStore):
        other: Store = SqliteStore(store.path)
    else:
        assert isinstance(store, PostgresStore)
        other = PostgresStore(store.dsn)
    await other.open()
    try:
        assert not await other.acquire()
        await store.close()
        assert await other.acquire()
    finally:
        await other.close()


def test_store_option_names_the_engine(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:{tmp_path}/x.db"), SqliteStore)
    assert isinstance(open_store("postgresql://u@127.0.0.1/db"), PostgresStore)
    with pytest.raises(ValueError):
        open_store("sqlite:")


async def test_ping_tells_a_lost_store(store: Store) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()
