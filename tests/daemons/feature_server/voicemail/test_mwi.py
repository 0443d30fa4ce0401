"""MWI: SUBSCRIBE/NOTIFY message-summary against the VoicemailService."""

from __future__ import annotations

import asyncio
import time

import pytest

from daemons.runtime.config import ConfigError
from protocols.rtp.g711 import Codec
from tests.daemons.feature_server.voicemail.conftest import Factory


async def test_initial_notify_then_one_within_a_second_of_deposit_and_delete(
        make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1002")
    resp = await phone.subscribe("1002", vm.destination)
    assert resp.status == 200 and resp.headers.get("Expires") == "600"
    await phone.wait_notify(1)
    state, summary = phone.notifies[0]
    assert state.startswith("active;expires=")
    assert summary is not None and (summary.waiting, summary.new) == (False, 0)

    stored = time.monotonic()
    await vm.service.deposit("1002", "1001", Codec.PCMU, b"\xff" * 8000)
    await phone.wait_notify(2, timeout=1.0)
    assert time.monotonic() - stored < 1.0
    assert phone.notifies[1][1] is not None and phone.notifies[1][1].new == 1
    assert phone.notifies[1][1].waiting

    [message] = await vm.service.store.list_messages("1002")
    await vm.service.delete_message("1002", message.id)
    await phone.wait_notify(3, timeout=1.0)
    assert phone.notifies[2][1] is not None and not phone.notifies[2][1].waiting


async def test_bad_subscriptions_get_their_answers(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1002")
    assert (await phone.subscribe("1002", vm.destination, event="presence")).status == 489
    brief = await phone.subscribe("1002", vm.destination, expires=5)
    assert brief.status == 423 and brief.headers.get("Min-Expires") == "60"
    await vm.service.store.delete_mailbox("1002")   # the owner's mailbox is gone
    assert (await phone.subscribe("1002", vm.destination)).status == 404
    assert vm.service.mwi.refused.labels("bad_event").value == 1
    assert vm.service.mwi.refused.labels("no_mailbox").value == 1


async def test_subscription_survives_a_restart(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1001")
    assert (await phone.subscribe("1001", vm.destination)).status == 200
    await phone.wait_notify(1)
    await vm.service.stop()

    again = await make_voicemail()                 # same store, same state directory
    assert len(again.service.mwi) == 1
    await phone.wait_notify(2)                     # the restored subscription is notified
    await again.service.deposit("1001", "1003", Codec.PCMA, b"\xd5" * 8000)
    await phone.wait_notify(3, timeout=1.0)
    assert phone.notifies[-1][1] is not None and phone.notifies[-1][1].new == 1


async def test_refresh_and_unsubscribe(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1003")
    assert (await phone.subscribe("1003", vm.destination)).status == 200
    await phone.wait_notify(1)
    refreshed = await phone.resubscribe(1200)
    assert refreshed.status == 200 and refreshed.headers.get("Expires") == "1200"
    await phone.wait_notify(2)                      # a refresh is answered by a NOTIFY too
    assert phone.notifies[1][0] == "active;expires=1200"
    assert (await phone.resubscribe(0)).status == 200
    await phone.wait_notify(3)
    assert phone.notifies[2][0] == "terminated;reason=timeout"
    assert len(vm.service.mwi) == 0
    for _ in range(20):
        if not await vm.service.store.list_subscriptions():
            break
        await asyncio.sleep(0.05)
    assert await vm.service.store.list_subscriptions() == []
    assert (await phone.resubscribe(600)).status == 481


async def test_phone_answering_481_ends_the_subscription(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1002")
    assert (await phone.subscribe("1002", vm.destination)).status == 200
    await phone.wait_notify(1)
    phone.notify_status = 481                       # the phone forgot the subscription
    vm.service.mwi.mailbox_changed("1002")
    await phone.wait_notify(2)
    for _ in range(40):
        if len(vm.service.mwi) == 0 and not await vm.service.store.list_subscriptions():
            break
        await asyncio.sleep(0.05)
    assert len(vm.service.mwi) == 0
    assert await vm.service.store.list_subscriptions() == []
    assert vm.service.mwi.notifies.labels("failed").value == 1


async def test_deposit_and_restart_on_postgresql(make_voicemail: Factory,
                                                 postgres_dsn: str) -> None:
    """The same service on a shared PostgreSQL store: mailboxes created, a
    deposit notified, the subscription taken back by a restarted service."""
    vm = await make_voicemail(store_url=postgres_dsn)
    assert [m.number for m in await vm.service.store.list_mailboxes()] == [
        "1001", "1002", "1003"]
    phone = await vm.phone("1002")
    assert (await phone.subscribe("1002", vm.destination)).status == 200
    await phone.wait_notify(1)
    await vm.service.deposit("1002", "1001", Codec.PCMU, b"\xff" * 8000)
    await phone.wait_notify(2, timeout=1.0)
    assert phone.notifies[1][1] is not None and phone.notifies[1][1].new == 1
    await vm.service.stop()
    again = await make_voicemail(store_url=postgres_dsn)
    assert len(again.service.mwi) == 1
    await phone.wait_notify(3)
    assert phone.notifies[2][1] is not None and phone.notifies[2][1].new == 1


async def test_subscriber_is_challenged_and_must_own_the_mailbox(
        make_voicemail: Factory) -> None:
    """No credentials: 401 with the switch realm's challenge; a wrong password: 401
    again; the right one for another DN's mailbox: 403, logged and counted; a
    delegate named by ``mwi-delegates``: 200."""
    vm = await make_voicemail(options='[applications.FS_1.options.mwi-delegates]\n'
                                      '1003 = ["1001"]\n')
    phone = await vm.phone("1001")
    phone.password = None
    bare = await phone.subscribe("1001", vm.destination)
    assert bare.status == 401
    challenges = bare.headers.get_all("WWW-Authenticate")
    assert challenges and all('realm="cluster.lab"' in c for c in challenges)
    phone.password = "not-the-password"
    assert (await phone.subscribe("1001", vm.destination)).status == 401
    phone.password = "lab-1001-secret"
    assert (await phone.subscribe("1002", vm.destination)).status == 403
    assert (await phone.subscribe("1003", vm.destination)).status == 200   # a delegate
    assert (await phone.subscribe("1001", vm.destination)).status == 200   # its own
    mwi = vm.service.mwi
    assert mwi.refused.labels("challenged").value == 5   # every first SUBSCRIBE
    assert mwi.refused.labels("auth_failed").value == 1
    assert mwi.refused.labels("not_owner").value == 1
    assert mwi.subscriptions("1002") == 0 and mwi.subscriptions("1003") == 1
    await phone.wait_notify(2)          # one NOTIFY per accepted subscription, none for 1002


async def test_bad_mwi_delegates_refuse_the_config(make_voicemail: Factory) -> None:
    with pytest.raises(ConfigError, match=r"mwi-delegates\.1003: must be a list of DNs"):
        await make_voicemail(options='[applications.FS_1.options.mwi-delegates]\n'
                                     '1003 = "1001"\n')
