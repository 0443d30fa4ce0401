"""The mailbox store, the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemons.feature_server.voicemail.store import (
    MailboxStore,
    StoredMessage,
    StoredSubscription,
    open_store,
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MailboxStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vm.db'}"
    else:
        url = request.getfixturevalue("postgres_dsn")
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


def _msg(mid: str, mailbox: str, created: float, status: str = "new") -> StoredMessage:
    return StoredMessage(mid, mailbox, "1001", created, 1500, "PCMU", status, f"{mid}.wav")


async def test_mailboxes(store: MailboxStore) -> None:
    assert await store.create_mailbox("1002", "1234", 3)
    assert not await store.create_mailbox("1002", "9999")
    box = await store.get_mailbox("1002")
    assert box is not None and (box.pin, box.greeting, box.max_messages) == ("1234", None, 3)
    assert await store.set_pin("1002", "4321")
    assert not await store.set_pin("7777", "4321")
    assert await store.set_greeting("1002", "g.wav")
    assert (await store.get_mailbox("1002")).greeting == "g.wav"  # type: ignore[union-attr]
    assert [m.number for m in await store.list_mailboxes()] == ["1002"]


async def test_messages_order_counts_and_files(store: MailboxStore) -> None:
    await store.create_mailbox("1002", "1234")
    await store.add_message(_msg("b", "1002", 20.0))
    await store.add_message(_msg("a", "1002", 10.0, "saved"))
    await store.add_message(_msg("c", "1002", 30.0))
    assert [m.id for m in await store.list_messages("1002")] == ["b", "c", "a"]
    assert await store.counts("1002") == (2, 1)
    assert await store.save_message("b")
    assert not await store.save_message("b")
    assert await store.counts("1002") == (1, 2)
    assert await store.delete_message("c")
    assert await store.message_files() == {"a.wav", "b.wav"}
    assert await store.delete_mailbox("1002")
    assert await store.list_messages("1002") == []
    assert await store.counts("1002") == (0, 0)


async def test_subscriptions(store: MailboxStore) -> None:
    sub = StoredSubscription("cid", "1002", "lt", "rt", "<sip:1002@fs>;tag=lt",
                             "<sip:1002@x>;tag=rt", "sip:1002@127.0.0.1:5060", "", "UDP", 5,
                             1000.0)
    await store.save_subscription(sub)
    assert await store.list_subscriptions(now=999.0) == [sub]
    assert await store.list_subscriptions(now=1000.0) == []
    await store.update_subscription("cid", 9, 2000.0)
    [again] = await store.list_subscriptions(now=1500.0)
    assert (again.cseq, again.expires_at) == (9, 2000.0)
    await store.delete_subscription("cid")
    assert await store.list_subscriptions(now=0.0) == []


def test_store_url_is_checked() -> None:
    with pytest.raises(ValueError):
        open_store("mysql://x")
