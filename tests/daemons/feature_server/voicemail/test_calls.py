"""Deposit and retrieval calls against the VoicemailService over real sockets."""

from __future__ import annotations

import asyncio

from daemons.feature_server.voicemail.prompts import frames_of
from protocols.rtp import g711
from protocols.rtp.g711 import Codec
from protocols.rtp.tones import tone, tone_share
from protocols.sip.sdp import parse_sdp
from tests.daemons.feature_server.voicemail.conftest import Factory

TONE = 1850  # no prompt uses it
GREETING = 2200


async def _deposit(vm, caller: str, mailbox: str, *, codecs=("PCMU", "PCMA"),
                   params: str = ";vm=deposit", ms: int = 1500) -> None:
    phone = await vm.phone(caller)
    call = await phone.call(vm.uri(mailbox, params), vm.destination, codecs=codecs)
    assert call.response.status == 200, call.response
    await asyncio.sleep(1.9)  # greeting (~1.9 s) then the beep
    await call.play(frames_of(g711.encode(tone([TONE], ms), call.codec), call.codec))
    await call.bye()


async def _wait_messages(service, mailbox: str, count: int) -> list:
    for _ in range(100):
        messages = await service.store.list_messages(mailbox)
        if len(messages) >= count:
            return messages
        await asyncio.sleep(0.05)
    raise AssertionError(f"{mailbox} has {len(messages)} messages")


async def test_deposit_stores_the_callers_audio(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    await _deposit(vm, "1001", "1002", codecs=("PCMA",))
    [message] = await _wait_messages(vm.service, "1002", 1)
    assert (message.caller, message.codec, message.status) == ("1001", "PCMA", "new")
    codec, data = vm.service.files.read(message.file)
    assert codec is Codec.PCMA
    heard = g711.decode(data, codec)
    assert 1000 <= message.duration_ms <= 2500
    assert tone_share(heard, TONE) > 0.5          # the caller's tone, not silence or the beep


async def test_retrieval_pin_listen_and_delete(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    await _deposit(vm, "1001", "1002", codecs=("PCMA",))   # stored as A-law ...
    await _wait_messages(vm.service, "1002", 1)
    phone = await vm.phone("1002")
    call = await phone.call(vm.uri("5555"), vm.destination,   # access number, mailbox = From
                            codecs=("PCMU",))                 # ... heard in µ-law
    assert call.response.status == 200 and call.codec is Codec.PCMU
    await asyncio.sleep(0.3)
    await call.digits("1234#")
    await asyncio.sleep(0.3)
    call.heard.clear()
    await call.digits("1")                                     # listen
    await asyncio.sleep(2.0)
    heard = g711.decode(bytes(call.heard), call.codec)
    assert tone_share(heard, TONE) > 0.2, "the message's tone was not played"
    [message] = await vm.service.store.list_messages("1002")
    assert message.status == "saved"                           # heard to the end
    await call.digits("7")                                     # delete
    for _ in range(40):
        if not await vm.service.store.list_messages("1002"):
            break
        await asyncio.sleep(0.05)
    assert await vm.service.store.list_messages("1002") == []
    assert not (vm.service.files.directory / message.file).exists()
    await call.bye()


async def test_wrong_pin_three_times_hangs_up(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1003")
    call = await phone.call(vm.uri("1003", ";vm=retrieve"), vm.destination)
    assert call.response.status == 200
    for _ in range(3):
        await call.digits("9999#")
    await asyncio.wait_for(call.ended.wait(), 10)              # BYE from voicemail
    assert b"sipcluster_voicemail_pin_failures_total 3.0" in vm.service.metrics.render()
    again = await phone.call(vm.uri("1003", ";vm=retrieve"), vm.destination)
    for _ in range(3):                                         # 6 wrong: locked
        await again.digits("9999#")
    await asyncio.wait_for(again.ended.wait(), 10)
    locked = await phone.call(vm.uri("1003", ";vm=retrieve"), vm.destination)
    assert locked.response.status == 403
    assert vm.service.refused.labels("mailbox_locked").value == 1
    deposit = await phone.call(vm.uri("1003", ";vm=deposit"), vm.destination)
    assert deposit.response.status == 200                      # callers still reach it
    await deposit.bye()


async def test_sip_info_digits_work_as_fallback(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1003")
    call = await phone.call(vm.uri("1003", ";vm=retrieve"), vm.destination, event_pt=None)
    assert call.response.status == 200
    for key in "1234#":
        assert (await call.info(key)).status == 200
    call.heard.clear()
    await asyncio.sleep(1.0)                      # keys faster than 10 a second are a flood
    assert (await call.info("5", "application/dtmf")).status == 200   # change PIN
    for key in "4321#":
        assert (await call.info(key)).status == 200
    for _ in range(40):
        box = await vm.service.store.get_mailbox("1003")
        if box.pin == "4321":
            break
        await asyncio.sleep(0.05)
    assert box.pin == "4321"
    bad = await call.info("x")
    assert bad.status == 400
    await call.bye()
    assert vm.service.digit_counter.labels("info").value == 11


async def test_recorded_greeting_replaces_the_default(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    owner = await (await vm.phone("1003")).call(vm.uri("1003", ";vm=retrieve"), vm.destination)
    assert owner.response.status == 200
    await asyncio.sleep(0.3)
    await owner.digits("1234#")
    await asyncio.sleep(0.5)
    await owner.digits("3")                      # record a greeting
    await asyncio.sleep(1.5)                     # "record your greeting", beep
    await owner.play(frames_of(g711.encode(tone([GREETING], 1200), owner.codec), owner.codec))
    await owner.digits("#")
    for _ in range(40):
        box = await vm.service.store.get_mailbox("1003")
        if box is not None and box.greeting:
            break
        await asyncio.sleep(0.05)
    assert box is not None and box.greeting
    await owner.bye()

    caller = await (await vm.phone("1001")).call(vm.uri("1003", ";vm=deposit"), vm.destination)
    assert caller.response.status == 200
    await asyncio.sleep(1.6)
    heard = g711.decode(bytes(caller.heard), caller.codec)
    assert tone_share(heard, GREETING) > 0.3     # the owner's greeting ...
    assert tone_share(heard, 440) < 0.05         # ... not the default one
    await caller.bye()


async def test_hold_and_resume_by_reinvite(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1001")
    call = await phone.call(vm.uri("1003", ";vm=deposit"), vm.destination)
    assert call.response.status == 200
    await asyncio.sleep(0.2)
    held = await call.reinvite("sendonly")                 # the caller holds
    assert held.status == 200
    answer = parse_sdp(held.body)
    assert answer.audio().direction == "recvonly"          # type: ignore[union-attr]
    assert answer.session_version == 2
    await asyncio.sleep(0.1)
    before = len(call.heard)
    await asyncio.sleep(0.3)
    assert len(call.heard) == before                       # nothing sent while held
    resumed = await call.reinvite("sendrecv")
    assert resumed.status == 200 and parse_sdp(resumed.body).session_version == 3
    await asyncio.sleep(0.3)
    assert len(call.heard) > before                        # the greeting goes on
    await call.bye()
