"""Unit tests: the registrar (RFC 3261 §10.3), call / leg state tables, SDP direction."""

from __future__ import annotations

import pytest

from daemons.sip_server.call import (
    Call,
    CallState,
    InvalidTransition,
    LegState,
    hold_sdp,
    sdp_direction,
)
from daemons.sip_server.registrar import RegisterError, Registrar
from protocols.sip.headers import parse_name_addr


def contacts(*values: str) -> list:
    return [parse_name_addr(v) for v in values]


def test_first_binding_brings_dn_in_service_and_expiry_takes_it_out() -> None:
    reg = Registrar(min_expires=30)
    result = reg.apply("1001", contacts("<sip:1001@10.0.0.1:5060>"), 60, now=0.0,
                       call_id="c1", cseq=1)
    assert result.came_in_service and not result.went_out_of_service
    assert [b.contact for b in result.bindings] == ["sip:1001@10.0.0.1:5060"]
    again = reg.apply("1001", contacts("<sip:1001@10.0.0.2:5060>;expires=120"), None, now=1.0,
                      call_id="c2", cseq=1)
    assert not again.came_in_service and len(again.bindings) == 2
    assert reg.expire(now=61.0) == []
    assert reg.expire(now=122.0) == ["1001"]
    assert reg.bindings("1001", 122.0) == []


def test_star_removes_all_and_needs_expires_zero() -> None:
    reg = Registrar()
    reg.apply("1002", contacts("<sip:a@h1>", "<sip:b@h2>"), 300, now=0.0, call_id="x", cseq=1)
    with pytest.raises(RegisterError) as info:
        reg.apply("1002", contacts("*"), 300, now=1.0, call_id="x", cseq=2)
    assert info.value.status == 400
    result = reg.apply("1002", contacts("*"), 0, now=1.0, call_id="x", cseq=3)
    assert result.went_out_of_service and result.bindings == []


def test_interval_too_brief_and_old_cseq_ignored() -> None:
    reg = Registrar(min_expires=60)
    with pytest.raises(RegisterError) as info:
        reg.apply("1003", contacts("<sip:a@h>"), 10, now=0.0)
    assert info.value.status == 423 and info.value.min_expires == 60
    reg.apply("1003", contacts("<sip:a@h>"), 100, now=0.0, call_id="c", cseq=5)
    reg.apply("1003", contacts("<sip:a@h>"), 0, now=1.0, call_id="c", cseq=4)  # older: ignored
    assert len(reg.bindings("1003", 2.0)) == 1


def test_call_and_leg_transitions() -> None:
    call = Call("0123456789abcdef", "1001", "1002")
    leg = call.add_leg("1002", "1002", outbound=True)
    call.move(CallState.ALERTING)
    leg.move(LegState.RINGING)
    leg.move(LegState.ESTABLISHED)
    leg.move(LegState.HELD)
    with pytest.raises(InvalidTransition):
        leg.move(LegState.RINGING)
    call.move(CallState.CONNECTED)
    with pytest.raises(InvalidTransition):
        call.move(CallState.ROUTING)
    call.move(CallState.RELEASED)
    with pytest.raises(InvalidTransition):
        call.move(CallState.CONNECTED)


@pytest.mark.parametrize(("sdp", "direction"), [
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n", "sendonly"),
    (b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n", "inactive"),
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n", "sendrecv"),
])
def test_sdp_direction(sdp: bytes, direction: str) -> None:
    assert sdp_direction(sdp) == direction


def test_hold_sdp_marks_every_stream_inactive_and_raises_the_version() -> None:
    offer = (b"v=0\r\no=a 1 7 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
             b"m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\nm=video 4002 RTP/AVP 96\r\n"
             b"a=recvonly\r\n")
    held = hold_sdp(offer)
    lines = held.decode().split("\r\n")
    assert "o=a 1 8 IN IP4 1.2.3.4" in lines
    assert "a=sendrecv" not in lines and "a=recvonly" not in lines
    assert lines.count("a=inactive") == 3  # session level + two streams
    assert lines[lines.index("m=video 4002 RTP/AVP 96") + 1] == "a=inactive"
    assert sdp_direction(held) == "inactive"
