"""Property tests: hostile bytes raise only ParseError; built messages round-trip."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.sip.errors import ParseError
from protocols.sip.framing import StreamFramer
from protocols.sip.headers import Headers
from protocols.sip.message import (
    Message,
    Request,
    Response,
    _parse_head,
    _parse_head_slow,
    parse_message,
    validate,
)

BASE = (
    b"INVITE sip:bob@biloxi.example.com;transport=tcp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK776;rport, SIP/2.0/TCP p;branch=z9\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob \\"B\\"" <sip:bob@biloxi.example.com>\r\n'
    b"f: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>;expires=60, *\r\n"
    b"Route: <sip:p1;lr>,\r\n <sip:p2;lr>\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def exercise(msg: Message) -> None:
    """Read every typed value; only ParseError may come out."""
    for attr in ("vias", "top_via", "from_", "to", "call_id", "cseq", "max_forwards",
                 "content_length", "expires", "contacts", "routes", "record_routes"):
        try:
            getattr(msg, attr)
        except ParseError:
            pass
    if isinstance(msg, Request):
        try:
            _ = msg.ruri
        except ParseError:
            pass
    try:
        validate(msg)
    except ParseError:
        pass
    msg.serialize()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ParseError:
        return
    exercise(msg)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(BASE)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] = draw(st.sampled_from(list(b' \t\r\n:;,<>"\\[]@=%0aZ\x00\xff')))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 10))]
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
        if not data:
            data = bytearray(b"x")
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_raise_only_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ParseError:
        msg = None
    if msg is not None:
        exercise(msg)
    framer = StreamFramer()
    framer.feed(data)
    try:
        while (item := framer.next_message()) is not None:
            if isinstance(item, Message):
                exercise(item)
    except ParseError:
        pass


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                min_size=1, max_size=12)
VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"),
    max_size=40,
).map(str.strip)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    headers = Headers()
    for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=12)):
        headers.add("X-" + name, value)
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        host = draw(st.sampled_from(["example.com", "[2001:db8::1]", "192.0.2.1"]))
        return Request(draw(TOKEN), f"sip:{draw(TOKEN)}@{host}", headers, body)
    reason = draw(VALUE)
    return Response(draw(st.integers(100, 699)), reason, headers, body)


@settings(max_examples=300)
@given(messages())
def test_generated_messages_round_trip(msg: Message) -> None:
    wire = msg.serialize()
    again = parse_message(wire)
    assert again == msg
    assert again.serialize() == wire
    framer = StreamFramer()
    framer.feed(wire + wire)
    assert framer.next_message() == msg
    assert framer.next_message() == msg
    assert framer.next_message() is None


def head_outcome(head: bytes, slow: bool) -> object:
    """What the header-section parser makes of ``head``: the error, or what can be read."""
    try:
        if slow:
            msg, length = _parse_head_slow(head.decode("utf-8", "surrogateescape"), 256, 8192)
        else:
            msg, length = _parse_head(head, 256, 8192)
    except ParseError as exc:
        return ("error", type(exc).__name__, exc.reason, exc.status)
    msg._body = b""
    msg._raw = None
    seen: list[object] = [type(msg).__name__, msg._start_line(), length, list(msg.headers),
                          msg.headers.normalised(), msg.serialize()]
    for attr in ("top_via", "vias", "from_", "to", "call_id", "cseq", "max_forwards",
                 "content_length", "contacts", "routes"):
        try:
            seen.append(str(getattr(msg, attr)))
        except ParseError as exc:
            seen.append(("error", exc.reason))
    for name in ("Via", "v", "Route", "Content-Length", "X-A"):
        seen.append((msg.headers.get(name), msg.headers.count(name)))
        try:
            seen.append(msg.headers.get_all(name))
        except ParseError as exc:
            seen.append(("error", exc.reason))
    return seen


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_header_fast_path_agrees_with_general_path(data: bytes) -> None:
    """The lazy split of an ordinary header section reads exactly like the general one."""
    head = data.split(b"\r\n\r\n", 1)[0]
    expected = head_outcome(head, slow=True)
    assert head_outcome(head, slow=False) == expected
    assert head_outcome(head, slow=False) == expected  # every name seen by now
