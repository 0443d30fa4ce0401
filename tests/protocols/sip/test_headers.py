"""Headers multi-map and the typed header values (RFC 3261 §7.3, §20, §25)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sip.errors import ParseError
from protocols.sip.headers import (
    _KEY_CACHE,
    CSeq,
    Headers,
    NameAddr,
    Via,
    _parse_name_addr_full,
    _parse_via_full,
    canonical_name,
    header_key,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_quoted,
    parse_via,
    parse_vias,
    split_list,
    unquote_param,
)


@pytest.mark.parametrize(
    ("compact", "full"),
    [("v", "Via"), ("f", "From"), ("t", "To"), ("i", "Call-ID"), ("m", "Contact"),
     ("l", "Content-Length"), ("c", "Content-Type"), ("e", "Content-Encoding"),
     ("s", "Subject"), ("k", "Supported"), ("o", "Event"), ("r", "Refer-To"),
     ("u", "Allow-Events"), ("a", "Accept-Contact"), ("b", "Referred-By"),
     ("x", "Session-Expires"), ("y", "Identity"), ("d", "Request-Disposition"),
     ("j", "Reject-Contact")],
)
def test_compact_forms_match_full_names(compact: str, full: str) -> None:
    h = Headers([(compact.upper(), "value")])
    assert h.get(full) == "value"
    assert full.upper() in h
    assert canonical_name(compact) == full


def test_canonical_names() -> None:
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("CSEQ") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("x-custom-thing") == "X-Custom-Thing"
    assert canonical_name("NewFangledHeader") == "NewFangledHeader"


def test_invalid_header_name() -> None:
    with pytest.raises(ParseError, match="invalid header name"):
        header_key("Bad Name")


def test_get_all_splits_list_headers_and_repeated_lines() -> None:
    h = Headers([("Route", "<sip:a,b@x;lr>, <sip:c@y>"), ("Route", "<sip:d@z>"),
                 ("Subject", "hello, world")])
    assert h.get_all("route") == ["<sip:a,b@x;lr>", "<sip:c@y>", "<sip:d@z>"]
    assert h.get_all("Subject") == ["hello, world"]  # not a list header
    assert h.get("Route") == "<sip:a,b@x;lr>, <sip:c@y>"
    assert h.count("Route") == 2


def test_set_add_prepend_remove() -> None:
    h = Headers([("Via", "SIP/2.0/UDP a"), ("To", "<sip:t@x>"), ("Via", "SIP/2.0/UDP b")])
    h.prepend("v", "SIP/2.0/UDP proxy")
    assert h.get_all("Via") == ["SIP/2.0/UDP proxy", "SIP/2.0/UDP a", "SIP/2.0/UDP b"]
    assert next(iter(h))[0] == "Via"
    h.set("Via", "SIP/2.0/TCP only")
    assert h.get_all("Via") == ["SIP/2.0/TCP only"]
    assert list(h) == [("Via", "SIP/2.0/TCP only"), ("To", "<sip:t@x>")]
    h.add("Record-Route", "<sip:p1;lr>")
    h.prepend("Record-Route", "<sip:p2;lr>")
    assert h.get_all("Record-Route") == ["<sip:p2;lr>", "<sip:p1;lr>"]
    assert h.remove("record-route") == 2
    assert "Record-Route" not in h
    assert h.remove("X-Absent") == 0


def test_prepend_without_existing_goes_to_top() -> None:
    h = Headers([("To", "<sip:t@x>")])
    h.prepend("Via", "SIP/2.0/UDP p")
    assert h.items()[0] == ("Via", "SIP/2.0/UDP p")


def test_remove_first_pops_one_value_of_a_comma_joined_line() -> None:
    h = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"),
                 ("Via", "SIP/2.0/UDP c")])
    assert h.remove_first("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get_all("Via") == ["SIP/2.0/UDP b;branch=z9hG4bK2", "SIP/2.0/UDP c"]
    assert h.remove_first("Via") == "SIP/2.0/UDP b;branch=z9hG4bK2"
    assert h.remove_first("Via") == "SIP/2.0/UDP c"
    assert h.remove_first("Via") is None


def test_values_with_cr_or_lf_are_refused() -> None:
    with pytest.raises(ParseError):
        Headers().add("Subject", "x\r\nInjected: yes")


def test_quoted_string_escapes() -> None:
    assert parse_quoted('"a \\"b\\" \\\\ c" rest', 0) == ('a "b" \\ c', 14)
    with pytest.raises(ParseError, match="unterminated"):
        parse_quoted('"open', 0)


def test_split_list_respects_quotes_and_angles() -> None:
    assert split_list('"Doe, J" <sip:j@x>, <sip:a,b@y>') == ['"Doe, J" <sip:j@x>', " <sip:a,b@y>"]
    assert split_list("a, b,c") == ["a", " b", "c"]
    with pytest.raises(ParseError):
        split_list("<sip:a@b, c")


def test_split_list_of_one_value_in_angles() -> None:
    """A value without comma or quote (one Contact, one Route) is not scanned, and
    an unterminated '<' is refused all the same."""
    assert split_list("<sip:1001@10.0.0.1:5060>;expires=600") == \
        ["<sip:1001@10.0.0.1:5060>;expires=600"]
    assert split_list("<sip:a@b>x<y>") == ["<sip:a@b>x<y>"]
    for bad in ("<sip:a@b", "<sip:a@b> <sip:c@d", "x<"):
        with pytest.raises(ParseError, match="unterminated"):
            split_list(bad)


def test_params() -> None:
    assert parse_params(" Tag = abc ; lr ; q=0.5", "x") == {"tag": "abc", "lr": None, "q": "0.5"}
    assert parse_params('name="a;b"', "x") == {"name": '"a;b"'}
    assert unquote_param('"a\\"b"') == 'a"b'
    for bad in (";;", "a=", "a b=c", 'n="x" y', "a=b c"):
        with pytest.raises(ParseError):
            parse_params(bad, "x")


def test_via_parse_and_serialise() -> None:
    via = parse_via("SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776;rport;received=1.2.3.4")
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0", "UDP", "pc33.atlanta.com", 5066)
    assert via.branch == "z9hG4bK776"
    assert via.received == "1.2.3.4"
    assert via.rport is None and via.wants_rport
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776;rport;received=1.2.3.4"
    via.params["rport"] = "5066"
    assert via.rport == 5066 and not via.wants_rport


def test_via_odd_whitespace_and_ipv6() -> None:
    via = parse_via("SIP  /  2.0 / tcp   [2001:db8::9:1] : 6050 ; branch = z9hG4bKx")
    assert (via.transport, via.host, via.port, via.branch) == ("TCP", "2001:db8::9:1", 6050,
                                                               "z9hG4bKx")
    assert str(via) == "SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bKx"
    assert str(Via("udp", "::1")) == "SIP/2.0/UDP [::1]"


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0/UDP", "SIP/2.0 UDP host", "SIP/2.0/UDP host;;", "SIP/2.0/UDP host:abc",
     "SIP/2.0/U<P host", "SIP/2.0/UDP [::1", "SIP/2.0/UDP ho st"],
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(ParseError):
        parse_via(text)


def test_parse_vias_rejects_empty_elements() -> None:
    assert len(parse_vias(["SIP/2.0/UDP a, SIP/2.0/UDP b", "SIP/2.0/TCP c"])) == 3
    with pytest.raises(ParseError, match="empty Via"):
        parse_vias(["SIP/2.0/UDP a,,SIP/2.0/UDP b"])


def test_name_addr_forms() -> None:
    na = parse_name_addr('"Mr. \\"Watson\\"" <sip:watson@bell.com;transport=tcp>;tag=8a;q=0.7')
    assert na.display_name == 'Mr. "Watson"'
    assert na.uri == "sip:watson@bell.com;transport=tcp"
    assert na.tag == "8a"
    assert na.params == {"tag": "8a", "q": "0.7"}
    assert na.sip_uri.params == {"transport": "tcp"}
    assert str(na) == '"Mr. \\"Watson\\"" <sip:watson@bell.com;transport=tcp>;tag=8a;q=0.7'
    plain = parse_name_addr("sip:a@b;tag=1")
    assert (plain.uri, plain.tag, plain.display_name) == ("sip:a@b", "1", None)
    tokens = parse_name_addr("Bob Smith <sip:bob@b>")
    assert tokens.display_name == "Bob Smith"
    star = parse_name_addr(" * ")
    assert star.is_star and str(star) == "*"
    assert parse_name_addr("<sip:a@b>") == NameAddr("sip:a@b")


@pytest.mark.parametrize(
    ("text", "reason"),
    [('"unterminated <sip:a@b>', "unterminated"),
     ("<sip:a@b", "unterminated"),
     ("< sip:a@b >", "whitespace"),
     ("Bell, Alex <sip:a@b>", "display name"),
     ("sip:a@b?x=y", "enclosed"),
     ("<sip:a@b> junk", "unexpected"),
     ("<sip:a@b>;;", "empty parameter"),
     ('"x" sip:a@b', "expected <URI>"),
     ("", "empty")],
)
def test_bad_name_addrs(text: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_name_addr(text)


def test_cseq() -> None:
    assert parse_cseq("0009\t INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(1, "ACK")) == "1 ACK"
    assert parse_cseq("2147483647 BYE").number == 2**31 - 1
    for bad in ("2147483648 BYE", "1", "1 2 3", "-1 BYE", "x BYE", "1 BY<E"):
        with pytest.raises(ParseError):
            parse_cseq(bad)


# ----------------------------------------------------------------------------- fast paths
# parse_via, parse_name_addr and parse_cseq read the common shapes with a short
# path; the full grammar (_parse_via_full, _parse_name_addr_full, the split()
# path of parse_cseq) must give the very same answer, or the same error.


def _outcome(fn: Callable[[str], object], text: str) -> object:
    try:
        value = fn(text)
    except ParseError as exc:
        return ("error", exc.reason, exc.status)
    if isinstance(value, Via):
        return (value.protocol, value.transport, value.host, value.port,
                list(value.params.items()), str(value))
    if isinstance(value, NameAddr):
        return (value.uri, value.display_name, list(value.params.items()), str(value))
    assert isinstance(value, CSeq)
    return (value.number, value.method)


def _cseq_full(text: str) -> CSeq:
    # the general path: as if the fast shape check had not matched
    return parse_cseq(text.replace(" ", "\t", 1) if " " in text else text)


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
     "SIP/2.0/udp h;branch=z9hG4bKa;RPORT;received=192.0.2.1",
     "SIP/2.0/TCP h:65535", "SIP/2.0/TCP h:65536", "SIP/2.0/TCP h:00080;x",
     "SIP/2.0/UDP h;Branch=1;branch=2", "SIP/2.0/UDP h;", "SIP/2.0/UDP h;=x",
     "SIP/2.0/UDP h;a=", "SIP/2.0/UDP h;a=b=c;d=<e>", "SIP/2.0/UDP h;a=,b",
     "SIP/2.0/UDP h:;a", "SIP/2.0/UDP h.;x", "SIP/2.0/UDP -;x", "SIP/2.0/X~Y h",
     "SIP/2.0/UDP h;a\u00e9=1", "SIP/2.0/UDP h;a=\u00e9", "SIP/2.0/UDP h ;a",
     "  SIP/2.0/UDP h;a=1  ", "SIP/2.0/UDP h:5060;branch=\"q\""],
)
def test_via_fast_path_agrees_with_full_grammar(text: str) -> None:
    expected = _outcome(_parse_via_full, text.strip(" \t"))
    assert _outcome(parse_via, text) == expected
    assert _outcome(parse_via, text) == expected  # names cached by the first call


@pytest.mark.parametrize(
    "text",
    ["Alice <sip:alice@atlanta.example.com>;tag=1928301774", "<sip:a@b>", "Bob  <sip:b@c>",
     "Bob\t<sip:b@c>;TAG=x;lr", "<sip:a@b>;", "<sip:a@b>;tag=", "<sip:a@b>;=1",
     "B@d <sip:a@b>", "<sip:a@b>;p=<q>", "<sip:a<b>", "<>", "x<sip:a@b>y",
     "<sip:a@b>;tag=a,b", "<sip:a@b>;t\u00e9g=1", "  <sip:a@b>  ", "\"A\" <sip:a@b>"],
)
def test_name_addr_fast_path_agrees_with_full_grammar(text: str) -> None:
    expected = _outcome(_parse_name_addr_full, text.strip(" \t"))
    assert _outcome(parse_name_addr, text) == expected
    assert _outcome(parse_name_addr, text) == expected


@pytest.mark.parametrize(
    "text",
    ["314159 INVITE", "0 ACK", "999999999 BYE", "1000000000 BYE", "2147483648 BYE",
     "00001 OPTIONS", "1 INVITE ", "1  INVITE", "\u0661 INVITE", "1 invite", "1 FOO"],
)
def test_cseq_fast_path_agrees_with_full_grammar(text: str) -> None:
    assert _outcome(parse_cseq, text) == _outcome(_cseq_full, text)


VIA_CHARS = "SIP/2.0UDPudphost:5060;branch=z9\"<> \t,[]\u00e9"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=VIA_CHARS, max_size=30), st.integers(0, 72))
def test_via_fast_path_agrees_on_mutations(noise: str, at: int) -> None:
    base = "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport"
    text = base[:at] + noise + base[at + len(noise) // 2 :]
    assert _outcome(parse_via, text) == _outcome(_parse_via_full, text.strip(" \t"))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="Alice<sip:@b.c>;tag=19\" \t,\\\u00e9", max_size=20), st.integers(0, 50))
def test_name_addr_fast_path_agrees_on_mutations(noise: str, at: int) -> None:
    base = "Alice <sip:alice@atlanta.example.com>;tag=1928301774"
    text = base[:at] + noise + base[at + len(noise) // 2 :]
    assert _outcome(parse_name_addr, text) == _outcome(_parse_name_addr_full, text.strip(" \t"))


def test_name_written_with_leading_whitespace_is_not_cached() -> None:
    # a continuation line starts with whitespace: looking such a name up must
    # not teach the message parser to take the line for a header of its own
    assert header_key(" Foo-Bar") == "foo-bar"
    assert " Foo-Bar" not in _KEY_CACHE
    assert "Foo-Bar " in Headers([("Foo-Bar ", "x")])
