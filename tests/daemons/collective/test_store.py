"""The users' store, the same checks on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemons.collective.messages import SpanningUser
from daemons.collective.store import Store, StoreError, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'collective.db'}"
    else:
        url = request.getfixturevalue("postgres_dsn")
    opened = open_store(url)
    await opened.open()
    yield opened
    await opened.close()


def user(user_id: str, home: int, extension: str, version: int = 1) -> SpanningUser:
    return SpanningUser(id=user_id, name=f"User {user_id}", extension=extension,
                        workgroups=("Multisite_RTM1", "Sales"), home_site=home, version=version)


async def test_users_kept_changed_deleted(store: Store) -> None:
    await store.put([(user("ann", 1, "18001"), True), (user("bob", 1, "18002"), False),
                     (user("ann", 2, "28001"), True)])
    await store.put([(user("ann", 1, "18011", version=2), True)])
    rows = {(u.home_site, u.id): (u, spanning) for u, spanning in await store.load()}
    assert set(rows) == {(1, "ann"), (1, "bob"), (2, "ann")}
    assert rows[(1, "ann")][0] == user("ann", 1, "18011", version=2)
    assert rows[(1, "bob")][1] is False and rows[(2, "ann")][1] is True
    await store.delete(1, ["ann", "nobody"])
    assert {(u.home_site, u.id) for u, _ in await store.load()} == {(1, "bob"), (2, "ann")}


async def test_a_full_sync_finds_the_users_it_did_not_carry(store: Store) -> None:
    await store.put([(user("a", 2, "1"), True), (user("b", 2, "2"), True),
                     (user("c", 3, "3"), True)])
    await store.put([(user("a", 2, "1"), True)], sync_gen=77)
    assert await store.stale(2, 77) == ["b"]
    assert await store.stale(3, 77) == ["c"]


async def test_meta_values(store: Store) -> None:
    assert await store.meta("joined") == 0
    await store.set_meta("joined", 1)
    await store.set_meta("joined", 2)
    assert await store.meta("joined") == 2


async def test_an_unusable_store_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError):
        await open_store(f"sqlite:{tmp_path / 'file' / 'collective.db'}").open()
    with pytest.raises(ValueError, match="expected sqlite:PATH or postgresql://"):
        open_store("mysql://x")
