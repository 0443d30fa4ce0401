"""SIP/SIPS/tel/other URIs (RFC 3261 §19.1, RFC 5118)."""

from __future__ import annotations

import pytest

from protocols.sip.errors import ParseError
from protocols.sip.uri import SipUri, normalise_ipv6, parse_uri


def test_full_sip_uri_parts() -> None:
    uri = parse_uri("sips:alice:secret@atlanta.example.com:5061;transport=tcp;lr?subject=x&h=y")
    assert uri.scheme == "sips"
    assert (uri.user, uri.password) == ("alice", "secret")
    assert (uri.host, uri.port) == ("atlanta.example.com", 5061)
    assert uri.params == {"transport": "tcp", "lr": None}
    assert uri.headers == {"subject": "x", "h": "y"}
    assert uri.is_sip


@pytest.mark.parametrize(
    "text",
    [
        "sip:bob@biloxi.example.com",
        "sip:biloxi.example.com:5060;lr",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:[2001:db8::10]:5070;transport=udp",
        "sips:%61lice@atlanta.example.com?Route=%3Csip:a%3E",
        "tel:+358-555-1234567;postd=pp22",
        "urn:service:sos",
        "nobodyknowsthisscheme:totallyopaquecontent",
    ],
)
def test_str_round_trips(text: str) -> None:
    uri = parse_uri(text)
    assert str(uri) == text
    assert parse_uri(str(uri)) == uri


def test_scheme_is_case_insensitive() -> None:
    assert str(parse_uri("SIP:a@b")) == "sip:a@b"
    assert parse_uri("nobodyKnowsThisScheme:x").scheme == "nobodyknowsthisscheme"


def test_ipv6_host_is_stored_without_brackets() -> None:
    uri = parse_uri("sip:alice@[2001:db8::1]:5060")
    assert (uri.host, uri.port) == ("2001:db8::1", 5060)
    assert uri.hostport == "[2001:db8::1]:5060"


def test_port_inside_brackets_is_part_of_the_address() -> None:
    uri = parse_uri("sip:[2001:db8::10:5070]")
    assert (uri.host, uri.port) == ("2001:db8::10:5070", None)


def test_three_colon_reference_is_tolerated_and_garbage_is_not() -> None:
    assert normalise_ipv6("2001:db8:::192.0.2.1") == "2001:db8:::192.0.2.1"
    for bad in ("2001:db8:::1", "1:2:3:4:5:6:7:8:9", "::ffff:1.2.3.256", "zz::1"):
        with pytest.raises(ParseError, match="invalid IPv6"):
            normalise_ipv6(bad)


def test_user_unescaped_decodes_percent_escapes_once() -> None:
    uri = parse_uri("sip:%61lice%2541@example.com")
    assert uri.user == "%61lice%2541"
    assert uri.user_unescaped == "alice%41"


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;ext=22")
    assert (uri.scheme, uri.user, uri.params) == ("tel", "+1-201-555-0123", {"ext": "22"})
    assert not uri.is_sip


def test_built_uri_serialises() -> None:
    uri = SipUri("sip", "bob", "2001:db8::5", 5062, params={"transport": "tcp"})
    assert str(uri) == "sip:bob@[2001:db8::5]:5062;transport=tcp"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<sip:user@example.com>", "scheme"),
        ("sip:2001:db8::10", "invalid port"),
        ("sip:user@example.com:99999", "out of range"),
        ("sip:user@exa mple.com", "invalid host"),
        ("sip:@example.com", "empty user"),
        ("sip:us%zzer@example.com", "invalid escape"),
        ("sip:user@[2001:db8::1", "unterminated IPv6"),
        ("sip:user@example.com;;lr", "empty parameter"),
        ("sip:user@example.com;a=", "empty value"),
        ("sip:user@example.com?bad", "malformed header"),
        ("sip:user@", "invalid host"),
        ("1sip:x", "scheme"),
        ("foo:", "empty"),
        ("tel:", "empty tel"),
        ("sip:us er@example.com", "invalid character"),
    ],
)
def test_malformed_uris_raise_parse_error(text: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason) as info:
        parse_uri(text)
    assert info.value.status == 400
