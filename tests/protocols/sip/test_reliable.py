"""RFC 3262 reliable provisional responses: RSeq / RAck, the UAS's retransmission
until PRACK (T1 doubling, 64*T1), one reliable 1xx at a time, the UAC's order check."""

from __future__ import annotations

import pytest

from protocols.sip.errors import ParseError
from protocols.sip.headers import Headers
from protocols.sip.message import Response, make_response, parse_message
from protocols.sip.reliable import (
    RAck,
    ReliableReceiver,
    ReliableSender,
    is_reliable,
    option_tags,
    parse_rack,
    parse_rseq,
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKr1\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: rel-1\r\n"
    b"CSeq: 5 INVITE\r\n"
    b"k: timer\r\n"
    b"Supported: 100rel\r\n"
    b"Require: 100REL, foo\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def ringing(status: int = 183, body: bytes = b"") -> Response:
    request = parse_message(INVITE)
    return make_response(request, status, to_tag="b1", body=body)  # type: ignore[arg-type]


def test_option_tags_read_compact_form_and_ignore_case() -> None:
    request = parse_message(INVITE)
    assert option_tags(request.headers, "Supported") == {"timer", "100rel"}
    assert option_tags(request.headers, "Require") == {"100rel", "foo"}
    assert option_tags(Headers(), "Require") == frozenset()


def test_rseq_and_rack_parse_and_format() -> None:
    assert parse_rseq(" 776656 ") == 776656
    for bad in (None, "", "0", "-1", "x", str(2**32)):
        with pytest.raises(ParseError):
            parse_rseq(bad)
    rack = parse_rack("776656 1 invite")
    assert rack == RAck(776656, 1, "INVITE") and str(rack) == "776656 1 INVITE"
    for bad in (None, "1 INVITE", "1 x INVITE", "0 1 INVITE", "1 1 INVITE extra"):
        with pytest.raises(ParseError):
            parse_rack(bad)


def test_sender_numbers_retransmits_and_stops_on_prack() -> None:
    sender = ReliableSender(t1=0.5, first_rseq=100)
    resp = ringing(body=b"v=0\r\n")
    sent = sender.send(resp, now=0.0)
    assert sent is resp and resp.headers.get("RSeq") == "100"
    assert "100rel" in option_tags(resp.headers, "Require") and is_reliable(resp)
    # resent T1, 2*T1, 4*T1 ... apart: 0.5, 1.5, 3.5, 7.5
    times = []
    now = 0.0
    while (when := sender.next_timer()) is not None and when < 5.0:
        now = when
        assert sender.handle_timer(now - 0.01) is None  # not before it is due
        if sender.handle_timer(now) is not None:
            times.append(now)
    assert times == [0.5, 1.5, 3.5]
    # a PRACK for another RSeq, CSeq or method does not match (the PRACK gets 481)
    assert sender.acknowledge(RAck(99, 5, "INVITE"), 5, now) == (False, None)
    assert sender.acknowledge(RAck(100, 4, "INVITE"), 5, now) == (False, None)
    assert sender.acknowledge(RAck(100, 5, "INVITE"), 5, now) == (True, None)
    assert sender.next_timer() is None and not sender.pending
    assert sender.handle_timer(100.0) is None and not sender.expired
    # a second PRACK for the same response matches nothing any more
    assert sender.acknowledge(RAck(100, 5, "INVITE"), 5, now) == (False, None)


def test_one_reliable_response_at_a_time_in_rseq_order() -> None:
    sender = ReliableSender(t1=0.5, first_rseq=7)
    first, second = ringing(180), ringing(183, b"v=0\r\n")
    assert sender.send(first, 0.0) is first
    assert sender.send(second, 0.1) is None  # waits for the PRACK of the first
    assert second.headers.get("RSeq") == "8"
    ok, nxt = sender.acknowledge(RAck(7, 5, "INVITE"), 5, 0.2)
    assert ok and nxt is second and sender.next_timer() == pytest.approx(0.7)
    assert sender.acknowledge(RAck(8, 5, "INVITE"), 5, 0.3) == (True, None)


def test_sender_expires_after_64_t1_without_prack() -> None:
    sender = ReliableSender(t1=0.5, first_rseq=1)
    sender.send(ringing(), 0.0)
    now = 0.0
    resent = 0
    while not sender.expired:
        when = sender.next_timer()
        assert when is not None
        now = when
        resent += sender.handle_timer(now) is not None
    assert now == 32.0 and resent == 6  # 0.5 1.5 3.5 7.5 15.5 31.5, then 64*T1
    assert sender.next_timer() is None and not sender.pending


def test_sender_refuses_final_responses_and_random_first_rseq_is_in_range() -> None:
    sender = ReliableSender()
    with pytest.raises(ValueError):
        sender.send(ringing(200), 0.0)
    resp = ringing()
    sender.send(resp, 0.0)
    assert 1 <= int(resp.headers.get("RSeq") or 0) <= 2**31 - 1


def test_receiver_takes_the_first_then_only_the_next_in_order() -> None:
    rx = ReliableReceiver()
    assert rx.accept(41)
    assert not rx.accept(41)  # a retransmission
    assert not rx.accept(43)  # out of order
    assert rx.accept(42)
    wrap = ReliableReceiver()
    assert wrap.accept(2**32 - 1) and wrap.accept(1)


def test_unreliable_provisional_is_not_reliable() -> None:
    resp = ringing()
    assert not is_reliable(resp)
    resp.headers.add("RSeq", "5")
    assert not is_reliable(resp)  # no Require: 100rel
    resp.headers.add("Require", "100rel")
    assert is_reliable(resp)
    final = ringing(200)
    final.headers.add("RSeq", "5")
    final.headers.add("Require", "100rel")
    assert not is_reliable(final)
