"""RFC 3261 §18 rules without sockets: the Via fixed on receipt, where responses
go, and the answer to a request the parser refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sip.errors import ParseError
from protocols.sip.headers import parse_via
from protocols.sip.message import Request, Response, parse_message
from protocols.sip.rules import (
    build_error_response,
    fix_top_via,
    rewrite_top_via_transport,
    same_host,
    stateless_response_destination,
)


def request(via: str) -> Request:
    msg = parse_message(
        (f"OPTIONS sip:a@127.0.150.1 SIP/2.0\r\nVia: {via}\r\n"
         "Via: SIP/2.0/UDP lower;branch=z9hG4bKl\r\nFrom: <sip:b@x>;tag=1\r\n"
         "To: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
         "Content-Length: 0\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


@pytest.mark.parametrize(("via", "source", "changed", "top"), [
    # sent-by is the source address: untouched (§18.2.1)
    ("SIP/2.0/UDP 127.0.150.2:5090;branch=z9hG4bK1", ("127.0.150.2", 5090), False,
     "SIP/2.0/UDP 127.0.150.2:5090;branch=z9hG4bK1"),
    # a host name, or another address: received added
    ("SIP/2.0/UDP phone.example.com:5090;branch=z9hG4bK1", ("127.0.150.2", 5090), True,
     "SIP/2.0/UDP phone.example.com:5090;branch=z9hG4bK1;received=127.0.150.2"),
    ("SIP/2.0/UDP 10.0.0.7:5090;branch=z9hG4bK1", ("127.0.150.2", 40000), True,
     "SIP/2.0/UDP 10.0.0.7:5090;branch=z9hG4bK1;received=127.0.150.2"),
    # an empty rport: filled in, and received added even when equal (RFC 3581 §4)
    ("SIP/2.0/UDP 127.0.150.2:5090;rport;branch=z9hG4bK1", ("127.0.150.2", 40000), True,
     "SIP/2.0/UDP 127.0.150.2:5090;rport=40000;branch=z9hG4bK1;received=127.0.150.2"),
])
def test_fix_top_via(via: str, source: tuple[str, int], changed: bool, top: str) -> None:
    req = request(via)
    assert fix_top_via(req, source) is changed
    assert req.headers.get_lines("Via") == [top, "SIP/2.0/UDP lower;branch=z9hG4bKl"]


def test_same_host_compares_addresses_never_names() -> None:
    assert same_host("[::1]", "::1") and same_host("127.0.150.2", "127.0.150.2")
    assert not same_host("localhost", "127.0.0.1")
    assert not same_host("127.0.150.2", "127.0.150.3")


def test_rewrite_top_via_transport_keeps_the_parameters() -> None:
    req = request("SIP/2.0/UDP 127.0.150.2:5090;branch=z9hG4bK1;rport")
    rewrite_top_via_transport(req, "TCP", 5070)
    assert req.top_via.transport == "TCP" and req.top_via.port == 5070
    assert req.top_via.branch == "z9hG4bK1" and "rport" in req.top_via.params
    assert len(req.vias) == 2


@pytest.mark.parametrize(("via", "expected"), [
    ("SIP/2.0/UDP 127.0.150.2:5090;branch=z9hG4bK1", ("127.0.150.2", 5090)),
    ("SIP/2.0/UDP 10.0.0.7:5090;branch=z9hG4bK1;received=127.0.150.2;rport=40000",
     ("127.0.150.2", 40000)),
    ("SIP/2.0/UDP phone.example.com;branch=z9hG4bK1", ("phone.example.com", 5060)),
    ("SIP/2.0/TLS phone.example.com;branch=z9hG4bK1", ("phone.example.com", 5061)),
])
def test_stateless_response_destination(via: str, expected: tuple[str, int]) -> None:
    assert stateless_response_destination(parse_via(via)) == expected


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from([400, 413, 505]))
def test_error_answer_to_any_bytes_is_none_or_a_parseable_response(data: bytes,
                                                                   status: int) -> None:
    """Whatever a peer sends: no exception, and an answer is a response that the
    parser reads, with the status given and a To tag (§8.2.6.2)."""
    answer = build_error_response(data, status, "Bad \r\n Request")
    if answer is None:
        return
    try:
        msg = parse_message(answer)
    except ParseError:
        # the copied lines came from the broken request; they need not parse
        assert answer.startswith(f"SIP/2.0 {status} Bad".encode())
        return
    assert isinstance(msg, Response) and msg.status == status
