"""RFC 3891 Replaces values and their place in a Refer-To URI (RFC 5589 §7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.sip.errors import ParseError
from protocols.sip.headers import parse_name_addr
from protocols.sip.replaces import Replaces, parse_replaces, replaces_in_uri


def test_rfc3891_example() -> None:
    r = parse_replaces("98732@sip.example.com;from-tag=r33th4x0r;to-tag=ff87ff")
    assert r == Replaces("98732@sip.example.com", "ff87ff", "r33th4x0r")
    assert not r.early_only
    assert parse_replaces(str(r)) == r


def test_early_only_flag() -> None:
    assert parse_replaces("a@b;to-tag=1;from-tag=2;early-only").early_only


@pytest.mark.parametrize("text", ["", ";to-tag=1;from-tag=2", "a@b;to-tag=1", "a@b;from-tag=2",
                                  "a b;to-tag=1;from-tag=2", "a@b;to-tag=;from-tag=2"])
def test_incomplete_values_are_400(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_replaces(text)
    assert info.value.status == 400


def test_refer_to_of_an_attended_transfer() -> None:
    """RFC 5589 §7.2's Refer-To, as linphone and baresip write it."""
    refer_to = ("<sip:1003@cluster.lab?Replaces=9b7c1e%40127.0.0.1%3Bto-tag%3D6a2f%3B"
                "from-tag%3D88e1>")
    uri = parse_name_addr(refer_to).sip_uri
    assert uri.user == "1003"
    assert replaces_in_uri(uri) == Replaces("9b7c1e@127.0.0.1", "6a2f", "88e1")


def test_blind_refer_to_has_none() -> None:
    assert replaces_in_uri(parse_name_addr("<sip:1003@cluster.lab>").sip_uri) is None


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~", min_size=1,
                max_size=20)


@given(call_id=st.builds(lambda a, b: f"{a}@{b}", token, token), to_tag=token, from_tag=token,
       early=st.booleans())
def test_uri_header_round_trip(call_id: str, to_tag: str, from_tag: str, early: bool) -> None:
    r = Replaces(call_id, to_tag, from_tag, early)
    uri = parse_name_addr(f"<sip:1003@cluster.lab?Replaces={r.uri_header()}>").sip_uri
    assert replaces_in_uri(uri) == r
