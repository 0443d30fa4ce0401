"""Parsing, lazy access, serialising and answering SIP messages (RFC 3261 §7, §8.2.6, §18.3)."""

from __future__ import annotations

import pytest

from protocols.sip.errors import (
    LineTooLong,
    MessageTooLarge,
    ParseError,
    TooManyHeaders,
    VersionNotSupported,
)
from protocols.sip.headers import CSeq, Headers
from protocols.sip.message import (
    REASON_PHRASES,
    Request,
    Response,
    make_response,
    parse_message,
    validate,
)


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


def test_parse_request_fields(invite: bytes) -> None:
    msg = parse_message(invite)
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri, msg.version) == ("INVITE", "sip:bob@biloxi.example.com", "SIP/2.0")
    assert msg.ruri.user == "bob"
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.top_via.host == "pc33.atlanta.example.com"
    assert msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.max_forwards == 70
    assert msg.content_length == 4
    assert msg.body == b"v=0\n"
    assert msg.contacts[0].uri == "sip:alice@pc33.atlanta.example.com"
    assert msg.routes == [] and msg.record_routes == []
    validate(msg)


def test_parse_response_fields() -> None:
    msg = parse_message(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n"
        b"To: <sip:b@x>;tag=t2\r\nFrom: <sip:a@x>;tag=t1\r\nCall-ID: c\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.to.tag == "t2"
    validate(msg)


def test_line_folding_and_compact_forms() -> None:
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h\r\n ;branch=z9hG4bK1\r\n"
        b"t: <sip:a@b>\r\nf: <sip:c@d>\r\n\t;tag=9\r\ni: x\r\nCSeq: 1\r\n  OPTIONS\r\n"
        b"Max-Forwards: 70\r\nSubject: one\r\n two\r\n\tthree\r\nl: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.top_via.branch == "z9hG4bK1"
    assert msg.from_.tag == "9"
    assert msg.cseq == CSeq(1, "OPTIONS")
    assert msg.headers.get("subject") == "one two three"
    assert msg.serialize() == data
    validate(msg)


def test_unknown_headers_kept_in_order_and_byte_exact(invite: bytes) -> None:
    data = invite.replace(b"Contact:", b"X-Odd :  ;;,,weird  \r\n  folded\r\nContact:")
    msg = parse_message(data)
    names = [n for n, _ in msg.headers]
    assert names.index("X-Odd") == names.index("Contact") - 1
    assert msg.headers.get("x-odd") == ";;,,weird folded"
    # a change elsewhere keeps the untouched unknown header's original text
    msg.headers.set("Max-Forwards", "69")
    out = msg.serialize()
    assert b"X-Odd :  ;;,,weird  \r\n  folded\r\n" in out
    assert b"Max-Forwards: 69\r\n" in out


def test_unmodified_message_serialises_to_original_bytes(invite: bytes) -> None:
    assert parse_message(invite).serialize() == invite
    assert bytes(parse_message(invite)) == invite


def test_typed_values_are_cached_and_dropped_on_change(invite: bytes) -> None:
    msg = parse_message(invite)
    via = msg.top_via
    assert msg.top_via is via
    assert msg.vias[0] is not None and msg.vias is msg.vias
    msg.headers.prepend("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp")
    assert msg.top_via.host == "proxy.example.com"
    assert [v.host for v in msg.vias] == ["proxy.example.com", "pc33.atlanta.example.com"]
    assert msg.headers.remove_first("Via") == "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp"
    assert msg.top_via.host == "pc33.atlanta.example.com"
    msg.headers.set("To", "<sip:bob@biloxi.example.com>;tag=abc")
    assert msg.to.tag == "abc"


def test_malformed_header_raises_only_when_read(invite: bytes) -> None:
    msg = parse_message(invite.replace(b"CSeq: 314159 INVITE", b"CSeq: nonsense"))
    assert msg.call_id  # other headers still readable: lazy parsing
    with pytest.raises(ParseError, match="CSeq"):
        _ = msg.cseq
    with pytest.raises(ParseError, match="CSeq"):
        validate(msg)


def test_modified_message_sets_content_length_from_body(invite: bytes) -> None:
    msg = parse_message(invite)
    msg.body = b"v=0\r\no=x\r\n"
    out = msg.serialize()
    assert b"\r\nContent-Length: 10\r\n" in out
    assert out.endswith(b"\r\n\r\nv=0\r\no=x\r\n")
    again = parse_message(out)
    assert again == msg and again.body == msg.body


def test_built_request_serialises_canonically() -> None:
    h = Headers([("v", "SIP/2.0/UDP h:5060;branch=z9hG4bK1"), ("max-forwards", "70"),
                 ("t", "<sip:b@x>"), ("f", "<sip:a@x>;tag=1"), ("i", "id@h"),
                 ("cseq", "1 MESSAGE"), ("c", "text/plain"), ("X-Custom", "yes")])
    req = Request("MESSAGE", "sip:b@x", h, b"hello")
    assert req.serialize() == (
        b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\n"
        b"Max-Forwards: 70\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: id@h\r\n"
        b"CSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nX-Custom: yes\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    assert parse_message(req.serialize()) == req
    validate(req)


def test_equality_is_start_line_headers_and_body(invite: bytes) -> None:
    a, b = parse_message(invite), parse_message(invite)
    assert a == b
    b.headers.add("X-Extra", "1")
    assert a != b
    c = parse_message(invite)
    c.body = b"v=1\n"
    assert a != c
    d = parse_message(invite)
    assert isinstance(d, Request)
    d.uri = "sip:carol@example.com"
    assert a != d and d.serialize().startswith(b"INVITE sip:carol@example.com SIP/2.0\r\n")


def test_datagram_body_rules(invite: bytes) -> None:
    longer = parse_message(invite + b"garbage")
    assert longer.body == b"v=0\n"
    assert longer.serialize() == invite
    with pytest.raises(ParseError, match="Content-Length larger than body") as info:
        parse_message(invite[:-1])
    assert info.value.status == 400
    no_cl = parse_message(invite.replace(b"Content-Length: 4\r\n", b""))
    assert no_cl.body == b"v=0\n"


def test_leading_crlf_is_ignored(invite: bytes) -> None:
    assert parse_message(b"\r\n\r\n" + invite) == parse_message(invite)
    with pytest.raises(ParseError, match="empty"):
        parse_message(b"\r\n\r\n")


def test_limits(invite: bytes) -> None:
    with pytest.raises(MessageTooLarge) as info:
        parse_message(invite, max_size=100)
    assert info.value.status == 513
    many = invite.replace(b"Contact:", b"X-A: 1\r\n" * 300 + b"Contact:")
    with pytest.raises(TooManyHeaders):
        parse_message(many)
    assert parse_message(many, max_headers=400).headers.count("X-A") == 300
    long_line = invite.replace(b"Contact:", b"X-Long: " + b"a" * 9000 + b"\r\nContact:")
    with pytest.raises(LineTooLong):
        parse_message(long_line)
    with pytest.raises(LineTooLong):
        parse_message(b"INVITE sip:" + b"a" * 9000 + b"@b SIP/2.0\r\n\r\n")


@pytest.mark.parametrize(
    ("data", "error", "status"),
    [
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", VersionNotSupported, 505),
        (b"SIP/3.0 200 OK\r\n\r\n", VersionNotSupported, 505),
        (b"INVITE sip:a@b HTTP/1.1\r\n\r\n", ParseError, 400),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", ParseError, 400),
        (b"INV<ITE sip:a@b SIP/2.0\r\n\r\n", ParseError, 400),
        (b"INVITE <sip:a@b> SIP/2.0\r\n\r\n", ParseError, 400),
        (b"SIP/2.0 20 OK\r\n\r\n", ParseError, 400),
        (b"SIP/2.0 700 Nope\r\n\r\n", ParseError, 400),
        (b"SIP/2.0\r\n\r\n", ParseError, 400),
        (b"INVITE sip:a@b SIP/2.0\r\nNoColonHere\r\n\r\n", ParseError, 400),
        (b"INVITE sip:a@b SIP/2.0\r\n: empty name\r\n\r\n", ParseError, 400),
        (b"INVITE sip:a@b SIP/2.0\r\nTo: a\nFrom: b\r\n\r\n", ParseError, 400),
        (b"INVITE sip:a@b SIP/2.0\r\n continuation\r\n\r\n", ParseError, 400),
        (b"INVITE sip:a@b SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab", ParseError, 400),
        (b"INVITE sip:a@b SIP/2.0\r\nl: five\r\n\r\n", ParseError, 400),
        (b"INVITE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", ParseError, 400),
    ],
)
def test_malformed_messages(data: bytes, error: type[ParseError], status: int) -> None:
    with pytest.raises(error) as info:
        parse_message(data)
    assert info.value.status == status
    assert info.value.reason


def test_response_without_reason_phrase_and_lowercase_version() -> None:
    msg = parse_message(b"sip/2.0 200\r\nl: 0\r\n\r\n")
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason, msg.version) == (200, "", "SIP/2.0")


def test_make_response_copies_headers_per_8_2_6(invite: bytes) -> None:
    req = parse_message(
        invite.replace(b"Via: ", b"Via: SIP/2.0/TCP p1;branch=z9hG4bKp1\r\nVia: ", 1)
        .replace(b"Contact:", b"Record-Route: <sip:p1;lr>\r\nContact:")
    )
    assert isinstance(req, Request)
    resp = make_response(req, 486, to_tag="as7d")
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert [v.host for v in resp.vias] == ["p1", "pc33.atlanta.example.com"]
    assert resp.from_ == req.from_
    assert resp.to.tag == "as7d" and resp.to.uri == req.to.uri
    assert resp.call_id == req.call_id
    assert resp.cseq == req.cseq
    assert "Record-Route" not in resp.headers and "Contact" not in resp.headers
    validate(resp)
    wire = parse_message(resp.serialize())
    assert wire == resp and wire.content_length == 0


def test_make_response_keeps_existing_to_tag_and_custom_reason(invite: bytes) -> None:
    req = parse_message(invite.replace(b"To: Bob <sip:bob@biloxi.example.com>",
                                       b"To: Bob <sip:bob@biloxi.example.com>;tag=x1"))
    assert isinstance(req, Request)
    resp = make_response(req, 200, "Fine", to_tag="other")
    assert resp.to.tag == "x1" and resp.reason == "Fine"
    assert make_response(req, 299).reason == "OK"  # class default


def test_reason_phrases_cover_rfc3261_codes() -> None:
    rfc3261 = [100, 180, 181, 182, 183, 200, 300, 301, 302, 305, 380, 400, 401, 402, 403,
               404, 405, 406, 407, 408, 410, 413, 414, 415, 416, 420, 421, 423, 480, 481,
               482, 483, 484, 485, 486, 487, 488, 491, 493, 500, 501, 502, 503, 504, 505,
               513, 600, 603, 604, 606]
    assert all(code in REASON_PHRASES for code in rfc3261)
    assert REASON_PHRASES[481] == "Call/Transaction Does Not Exist"


def test_validate_checks(invite: bytes) -> None:
    def bad(old: bytes, new: bytes) -> ParseError:
        msg = parse_message(invite.replace(old, new))
        with pytest.raises(ParseError) as info:
            validate(msg)
        return info.value

    assert "Max-Forwards" in bad(b"Max-Forwards: 70", b"Max-Forwards: 256").reason
    assert "missing Call-ID" in bad(b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n",
                                    b"").reason
    assert "missing Via" in bad(b"Via: SIP/2.0/UDP pc33.atlanta.example.com;"
                                b"branch=z9hG4bK776asdhds;rport\r\n", b"").reason
    assert "Expires" in bad(b"Contact:", b"Expires: 4294967296\r\nContact:").reason
    assert "Contact expires" in bad(b"example.com>\r\nContent-Type",
                                    b"example.com>;expires=4294967296\r\nContent-Type").reason
    assert "Route" in bad(b"Contact:", b"Route: <sip:a@b\r\nContact:").reason
    assert "received" in bad(b";rport", b";received=not-an-ip").reason
    assert "Date" in bad(b"Contact:", b"Date: Sat, 13 Nov 2010 23:29:00 UTC\r\nContact:").reason
    validate(parse_message(invite.replace(
        b"Contact:", b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\nExpires: 4294967295\r\nContact:")))


def test_request_and_response_constructors_check_input() -> None:
    with pytest.raises(ParseError):
        Request("BAD METHOD", "sip:a@b")
    with pytest.raises(ParseError):
        Response(99)
    assert Response(404).reason == "Not Found"


def test_line_without_colon_is_refused_even_for_a_known_name(invite: bytes) -> None:
    parse_message(invite)  # every header name of the message has been seen
    for line in (b"Max-Forwards", b"Via", b"l"):
        with pytest.raises(ParseError, match="malformed header line") as info:
            parse_message(invite.replace(b"Max-Forwards: 70", line))
        assert info.value.status == 400


def test_continuation_line_is_never_a_header_of_its_own(invite: bytes) -> None:
    # a lookup by a name written with a leading space must not make the
    # parser take a continuation line for a header line
    assert parse_message(invite).headers.get(" Contact") == "<sip:alice@pc33.atlanta.example.com>"
    data = invite.replace(b"Contact:", b"Subject: a\r\n Contact: b\r\nContact:")
    for _ in range(2):
        msg = parse_message(data)
        assert msg.headers.get("Subject") == "a Contact: b"
        assert msg.headers.count("Contact") == 1
        assert msg.serialize() == data


def test_lazily_split_headers_read_and_change_like_built_ones(invite: bytes) -> None:
    msg = parse_message(invite)
    parse_message(invite)
    assert msg.headers.get("content-type") == "application/sdp"
    assert msg.headers.get_lines("Via") == [
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport"]
    assert [n for n, _ in msg.headers][:3] == ["Via", "Max-Forwards", "To"]
    copy = msg.headers.copy()
    assert copy == msg.headers and copy is not msg.headers
    msg.headers.remove("Contact")
    assert "Contact" not in msg.headers and "Contact" in copy
    msg.headers.add("X-New", "1")
    assert msg.headers.get("x-new") == "1"
    assert msg.serialize().endswith(b"Content-Length: 4\r\nX-New: 1\r\n\r\nv=0\n")


def test_make_response_adds_tag_when_tag_is_only_a_uri_parameter(invite: bytes) -> None:
    # "tag" inside the <URI> is a URI parameter, not the To tag (§19.1.1, §20.39)
    req = parse_message(invite.replace(b"To: Bob <sip:bob@biloxi.example.com>",
                                       b"t: Bob <sip:bob@biloxi.example.com;tag=u>"))
    assert isinstance(req, Request) and req.to.tag is None
    resp = make_response(req, 200, to_tag="as7d")
    assert resp.to.tag == "as7d" and resp.to.uri == "sip:bob@biloxi.example.com;tag=u"
    # compact names in the request are written in full in the response
    assert b"\r\nTo: Bob <sip:bob@biloxi.example.com;tag=u>;tag=as7d\r\n" in resp.serialize()
    assert make_response(req, 200).to.tag is None


def test_make_response_copies_timestamp_into_100_trying(invite: bytes) -> None:
    req = parse_message(invite.replace(b"Contact:", b"Timestamp: 54.2 0.5\r\nContact:"))
    assert isinstance(req, Request)
    trying = make_response(req, 100)
    assert trying.headers.get("Timestamp") == "54.2 0.5"  # §8.2.6.1
    assert "Timestamp" not in make_response(req, 180).headers
    assert parse_message(trying.serialize()) == trying


def test_built_message_serialises_every_header_line_once() -> None:
    headers = Headers()
    headers.add("v", "SIP/2.0/UDP h;branch=z9hG4bK1")
    headers.add("X-Custom", " spaced ")
    headers.add("Content-Length", "99")
    headers.prepend("Via", "SIP/2.0/UDP p;branch=z9hG4bK2")
    req = Request("MESSAGE", "sip:a@b", headers, b"hi")
    assert req.serialize() == (
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bK2\r\n"
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nX-Custom: spaced\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    assert headers.remove_first("Via") == "SIP/2.0/UDP p;branch=z9hG4bK2"
    headers.set("X-Custom", "one")
    assert b"\r\nX-Custom: one\r\n" in req.serialize()
