"""Stream framing: Content-Length, partial data, CRLF keep-alives (RFC 3261 §18.3, RFC 5626)."""

from __future__ import annotations

import pytest

from protocols.sip.errors import LineTooLong, MessageTooLarge, ParseError
from protocols.sip.framing import KEEPALIVE_PING, PONG, KeepAlivePing, StreamFramer
from protocols.sip.message import Request, Response, parse_message


@pytest.fixture
def invite() -> bytes:
    """A plain INVITE with a 4-octet body."""
    return (
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: Bob <sip:bob@biloxi.example.com>\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
        b"v=0\n"
    )

RESPONSE = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nTo: <sip:b@x>;tag=2\r\n"
    b"From: <sip:a@x>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def drain(framer: StreamFramer) -> list[object]:
    out: list[object] = []
    while (item := framer.next_message()) is not None:
        out.append(item)
    return out


def test_two_messages_in_one_read(invite: bytes) -> None:
    framer = StreamFramer()
    framer.feed(invite + RESPONSE)
    first, second = drain(framer)
    assert isinstance(first, Request) and first.body == b"v=0\n"
    assert isinstance(second, Response) and second.status == 200
    assert first.serialize() == invite  # byte-exact, like a datagram
    assert framer.buffered == 0


def test_byte_by_byte_feeding(invite: bytes) -> None:
    framer = StreamFramer()
    seen: list[object] = []
    for i in range(len(invite)):
        framer.feed(invite[i : i + 1])
        seen.extend(drain(framer))
        if i < len(invite) - 1:
            assert seen == []
    assert seen == [parse_message(invite)]


def test_keepalive_ping_and_pong(invite: bytes) -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n")
    assert framer.next_message() is KEEPALIVE_PING
    assert isinstance(KEEPALIVE_PING, KeepAlivePing) and KeepAlivePing() is KEEPALIVE_PING
    assert PONG == b"\r\n"
    # a single CRLF (a pong from the peer) before a message is skipped
    framer.feed(b"\r\n" + invite)
    assert drain(framer) == [parse_message(invite)]
    # a partial ping waits for more data
    framer.feed(b"\r\n")
    assert framer.next_message() is None
    framer.feed(b"\r\n")
    assert framer.next_message() is KEEPALIVE_PING


def test_body_split_across_reads(invite: bytes) -> None:
    framer = StreamFramer()
    framer.feed(invite[:-2])
    assert framer.next_message() is None
    framer.feed(invite[-2:] + RESPONSE[:10])
    (msg,) = drain(framer)
    assert msg.body == b"v=0\n"
    assert framer.buffered == 10


def test_missing_content_length_is_a_stream_error(invite: bytes) -> None:
    framer = StreamFramer()
    framer.feed(invite.replace(b"Content-Length: 4\r\n", b""))
    with pytest.raises(ParseError, match="missing Content-Length"):
        framer.next_message()
    with pytest.raises(ParseError):  # the stream stays failed: close it
        framer.next_message()


def test_negative_content_length(invite: bytes) -> None:
    framer = StreamFramer()
    framer.feed(invite.replace(b"Content-Length: 4", b"Content-Length: -4"))
    with pytest.raises(ParseError, match="Content-Length"):
        framer.next_message()


def test_oversize_headers_and_body(invite: bytes) -> None:
    framer = StreamFramer(max_size=1000)
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-A: b\r\n" * 200)
    with pytest.raises(MessageTooLarge) as info:
        framer.next_message()
    assert info.value.status == 513
    framer = StreamFramer(max_size=1000)
    framer.feed(invite.replace(b"Content-Length: 4", b"Content-Length: 5000"))
    with pytest.raises(MessageTooLarge):
        framer.next_message()


def test_overlong_line_without_terminator() -> None:
    framer = StreamFramer(max_line=100)
    framer.feed(b"INVITE sip:" + b"a" * 200)
    with pytest.raises(LineTooLong):
        framer.next_message()


def test_garbage_between_messages() -> None:
    framer = StreamFramer()
    framer.feed(b"\rX")
    with pytest.raises(ParseError, match="bare CR"):
        framer.next_message()
