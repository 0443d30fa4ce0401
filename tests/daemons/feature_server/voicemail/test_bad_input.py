"""Bad input gets the protocol's answer, a log line and a counter; the service
keeps serving."""

from __future__ import annotations

import asyncio
import socket

from daemons.feature_server.voicemail.store import StoredMessage
from protocols.rtp.packet import build_rtp
from protocols.rtp.telephone_event import encode_event
from tests.daemons.feature_server.voicemail.conftest import Factory

G722_ONLY = (b"v=0\r\no=- 1 1 IN IP4 127.0.110.30\r\ns=-\r\nc=IN IP4 127.0.110.30\r\nt=0 0\r\n"
             b"m=audio 40000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n")


async def _still_serving(vm, phone) -> None:
    call = await phone.call(vm.uri("1001", ";vm=deposit"), vm.destination)
    assert call.response.status == 200
    await call.bye()


async def test_invites_refused_with_the_right_status(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1001")
    refused = vm.service.refused
    bad = await phone.call(vm.uri("1002", ";vm=deposit"), vm.destination, body=b"v=1\r\nxx")
    assert bad.response.status == 400
    g722 = await phone.call(vm.uri("1002", ";vm=deposit"), vm.destination, body=G722_ONLY)
    assert g722.response.status == 488
    nobody = await phone.call(vm.uri("4711", ";vm=deposit"), vm.destination)
    assert nobody.response.status == 404
    assert (refused.labels("malformed_sdp").value, refused.labels("unknown_codec").value,
            refused.labels("no_mailbox").value) == (1, 1, 1)
    await _still_serving(vm, phone)


async def test_full_mailbox_is_busy(make_voicemail: Factory) -> None:
    vm = await make_voicemail(options="max-messages = 2")
    store = vm.service.store
    for i in range(2):
        await store.add_message(StoredMessage(f"m{i}", "1003", "1001", float(i), 1000, "PCMU",
                                              "new", f"m{i}.wav"))
    phone = await vm.phone("1001")
    call = await phone.call(vm.uri("1003", ";vm=deposit"), vm.destination)
    assert call.response.status == 486
    assert vm.service.refused.labels("mailbox_full").value == 1
    retrieval = await phone.call(vm.uri("1003", ";vm=retrieve"), vm.destination)
    assert retrieval.response.status == 200      # the owner can still listen and delete
    await retrieval.bye()


async def test_rtp_from_elsewhere_is_dropped_and_counted(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1002")
    call = await phone.call(vm.uri("1002", ";vm=retrieve"), vm.destination)
    assert call.response.status == 200
    assert call.rtp is not None and call.rtp.remote is not None
    target = call.rtp.remote
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        intruder.bind(("127.0.110.99", 0))
        for seq, key in enumerate("1234#"):      # the right PIN, from the wrong place
            intruder.sendto(build_rtp(101, seq, seq * 800, 9,
                                      encode_event("0123456789*#".index(key), end=True,
                                                   duration=800)), target)
        intruder.sendto(b"\x00garbage", target)
    await asyncio.sleep(0.2)
    dropped = vm.service.rtp_dropped
    assert dropped.labels("unexpected_source").value == 6
    assert vm.service.digit_counter.labels("rfc4733").value == 0
    await call.digits("1234#")                    # from the phone itself: accepted
    assert vm.service.digit_counter.labels("rfc4733").value == 5
    await call.bye()


async def test_dtmf_flood_is_cut(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1002")
    call = await phone.call(vm.uri("1002", ";vm=retrieve"), vm.destination)
    assert call.rtp is not None
    for i in range(60):                           # 60 distinct key presses at once
        call.rtp.send(encode_event(1, end=False, duration=160), timestamp=i * 1000,
                      payload_type=101)
    malformed = build_rtp(101, 1, 99999, call.rtp.ssrc, b"\x01\x02")
    assert call.rtp.transport is not None
    call.rtp.transport.sendto(malformed, call.rtp.remote)
    await asyncio.sleep(0.3)
    assert vm.service.digit_counter.labels("rfc4733").value == 10
    assert vm.service.rtp_dropped.labels("dtmf_flood").value >= 1
    assert vm.service.rtp_dropped.labels("bad_telephone_event").value == 1
    await call.bye()
    await _still_serving(vm, phone)


async def test_unknown_methods_and_dialogs(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1001")
    call = await phone.call(vm.uri("1001", ";vm=deposit"), vm.destination)
    await call.bye()
    again = await call.info("1")                  # the call is over
    assert again.status == 481


async def test_info_flood_is_cut(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1002")
    call = await phone.call(vm.uri("1002", ";vm=retrieve"), vm.destination, event_pt=None)
    answers = await asyncio.gather(*(call.info("1") for _ in range(25)))
    statuses = sorted(r.status for r in answers)
    assert statuses.count(200) == 10 and statuses.count(403) == 15
    assert vm.service.digit_counter.labels("info").value == 10
    assert vm.service.rtp_dropped.labels("dtmf_flood").value == 15
    await call.bye()


async def test_options_unknown_methods_and_invite_without_offer(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    phone = await vm.phone("1001")
    options = await phone.endpoint.request(
        phone._request("OPTIONS", vm.uri("1002")), vm.destination)
    assert options.status == 200 and "SUBSCRIBE" in (options.headers.get("Allow") or "")
    publish = await phone.endpoint.request(
        phone._request("PUBLISH", vm.uri("1002")), vm.destination)
    assert publish.status == 405 and "INVITE" in (publish.headers.get("Allow") or "")
    no_offer = await phone.endpoint.request(
        phone._request("INVITE", vm.uri("1002", ";vm=deposit")), vm.destination)
    assert no_offer.status == 488
    assert vm.service.refused.labels("no_offer").value == 1


async def test_caller_gone_without_bye_keeps_the_message_and_ends_the_call(
        make_voicemail: Factory) -> None:
    vm = await make_voicemail(options="rtp-timeout = 3")
    phone = await vm.phone("1001")
    call = await phone.call(vm.uri("1002", ";vm=deposit"), vm.destination)
    assert call.response.status == 200 and call.rtp is not None
    await asyncio.sleep(1.9)
    await call.play([b"\x2a" * 160] * 50)         # one second of audio, then nothing
    await asyncio.wait_for(call.ended.wait(), 8)  # voicemail hangs up (BYE)
    assert vm.service.rtp_dropped.labels("rtp_timeout").value == 1
    for _ in range(40):
        if await vm.service.store.list_messages("1002"):
            break
        await asyncio.sleep(0.05)
    [message] = await vm.service.store.list_messages("1002")
    assert message.duration_ms >= 700            # what came after the beep
