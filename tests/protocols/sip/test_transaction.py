"""RFC 3261 §17 transaction layer, driven with bytes and a fake clock."""

from __future__ import annotations

import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sip.errors import ParseError
from protocols.sip.headers import parse_via
from protocols.sip.message import Request, Response, make_response, parse_message
from protocols.sip.timers import TimerName, TimerQueue, TimerSettings
from protocols.sip.transaction import (
    TRANSITIONS,
    AckFor2xx,
    CancelReceived,
    Event,
    Input,
    NoSuchTransaction,
    RequestReceived,
    ResponseReceived,
    Role,
    StrayResponse,
    TransactionError,
    TransactionKey,
    TransactionKind,
    TransactionLayer,
    TransactionState,
    TransactionStateError,
    TransactionTerminated,
    TransactionTimeout,
    Transmit,
    TransportFailed,
    make_ack,
    make_branch,
    make_cancel,
    response_destination,
)

S = TransactionState
UAC = ("192.0.2.1", 5060)
UAS = ("192.0.2.2", 5060)
T1, T2, T4 = 0.5, 4.0, 5.0


def request_bytes(
    method: str = "INVITE",
    branch: str | None = "z9hG4bKabc1",
    *,
    transport: str = "UDP",
    sent_by: str = "192.0.2.1:5060",
    uri: str = "sip:bob@example.com",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    from_tag: str = "ft1",
    call_id: str = "call-1@192.0.2.1",
    extra: str = "",
) -> bytes:
    via = f"SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        f"Via: SIP/2.0/UDP 198.51.100.7:5080;branch=z9hG4bKlower\r\n"
        f"Max-Forwards: 70\r\n"
        f"Route: <sip:p1.example.com;lr>\r\n"
        f"Route: <sip:p2.example.com;lr>\r\n"
        f"From: Alice <sip:alice@example.com>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def request(method: str = "INVITE", **kwargs: object) -> Request:
    msg = parse_message(request_bytes(method, **kwargs))  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


def response_to(req: Request, status: int, to_tag: str | None = "tt1") -> bytes:
    return make_response(req, status, to_tag=to_tag if status > 100 else None).serialize()


def events(layer: TransactionLayer) -> list[Event]:
    out = []
    while (ev := layer.next_event()) is not None:
        out.append(ev)
    return out


def run_until(layer: TransactionLayer, until: float) -> list[tuple[float, Transmit]]:
    """Fire timers in order up to ``until``; return what was sent and when."""
    sent: list[tuple[float, Transmit]] = []
    while (deadline := layer.next_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        sent.extend((deadline, t) for t in layer.messages_to_send())
    return sent


def parsed(t: Transmit) -> Request | Response:
    return parse_message(t.data)


# --------------------------------------------------------------------------- INVITE client


def start_invite(
    transport: str = "UDP", settings: TimerSettings | None = None
) -> tuple[TransactionLayer, TransactionKey, Request]:
    layer = TransactionLayer(settings)
    req = request("INVITE", transport=transport)
    key = layer.send_request(req, UAS, 0.0)
    out = layer.messages_to_send()
    assert [t.data for t in out] == [req.serialize()]
    assert out[0].destination == UAS and out[0].transport == transport
    return layer, key, req


def test_invite_client_retransmits_over_udp_until_timer_b() -> None:
    layer, key, req = start_invite()
    assert key == TransactionKey(Role.CLIENT, "INVITE", "z9hG4bKabc1")
    assert layer.state(key) is S.CALLING
    sent = run_until(layer, 100.0)
    times = [t for t, _ in sent]
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(tx.data == req.serialize() for _, tx in sent)
    assert events(layer) == [TransactionTimeout(key, TimerName.B), TransactionTerminated(key)]
    assert layer.state(key) is S.TERMINATED
    assert key not in layer
    assert layer.next_timer() is None


def test_invite_client_retransmission_follows_t1() -> None:
    layer, key, _ = start_invite(settings=TimerSettings(t1=0.1, t2=4.0))
    times = [round(t, 6) for t, _ in run_until(layer, 100.0)]
    # A doubles without a cap; B = 64*T1 = 6.4 s.
    assert times == [0.1, 0.3, 0.7, 1.5, 3.1, 6.3]
    assert events(layer)[0] == TransactionTimeout(key, TimerName.B)


@pytest.mark.parametrize("transport", ["TCP", "TLS"])
def test_invite_client_does_not_retransmit_over_reliable_transport(transport: str) -> None:
    layer, key, _ = start_invite(transport)
    assert layer.next_timer() == 32.0
    assert run_until(layer, 100.0) == []
    assert events(layer) == [TransactionTimeout(key, TimerName.B), TransactionTerminated(key)]


def test_invite_client_provisional_stops_retransmission() -> None:
    layer, key, req = start_invite()
    run_until(layer, 0.6)
    layer.receive(response_to(req, 100), UAS, 0.7)
    assert layer.state(key) is S.PROCEEDING
    [ev] = events(layer)
    assert isinstance(ev, ResponseReceived) and ev.key == key and ev.response.status == 100
    layer.receive(response_to(req, 180), UAS, 1.0)
    assert layer.state(key) is S.PROCEEDING
    [ev] = events(layer)
    assert isinstance(ev, ResponseReceived) and ev.response.status == 180
    # No retransmission and no timer B in Proceeding.
    assert run_until(layer, 1000.0) == []
    assert layer.next_timer() is None
    assert layer.state(key) is S.PROCEEDING


@pytest.mark.parametrize("status", [300, 404, 486, 503, 603])
def test_invite_client_acks_non_2xx_final(status: int) -> None:
    layer, key, req = start_invite()
    layer.receive(response_to(req, 180), UAS, 0.1)
    final = response_to(req, status)
    layer.receive(final, UAS, 0.2)
    assert layer.state(key) is S.COMPLETED
    evs = events(layer)
    assert [type(e) for e in evs] == [ResponseReceived, ResponseReceived]
    assert isinstance(evs[1], ResponseReceived) and evs[1].response.status == status
    [tx] = layer.messages_to_send()
    assert tx.destination == UAS and tx.key == key
    ack = parsed(tx)
    assert isinstance(ack, Request)
    assert ack.method == "ACK" and ack.uri == req.uri
    assert ack.call_id == req.call_id
    assert ack.headers.get("From") == req.headers.get("From")
    assert ack.to.tag == "tt1" and ack.to.uri == req.to.uri
    assert [str(v) for v in ack.vias] == [str(req.top_via)]
    assert (ack.cseq.number, ack.cseq.method) == (req.cseq.number, "ACK")
    assert [r.uri for r in ack.routes] == [r.uri for r in req.routes]
    assert ack.body == b""
    # A retransmitted final response is answered with the same ACK, not passed up.
    layer.receive(final, UAS, 5.0)
    assert [t.data for t in layer.messages_to_send()] == [tx.data]
    assert events(layer) == []
    # Timer D (32 s over UDP) ends the transaction.
    assert layer.next_timer() == pytest.approx(32.2)
    run_until(layer, 32.1)
    assert layer.state(key) is S.COMPLETED
    run_until(layer, 32.3)
    assert events(layer) == [TransactionTerminated(key)]


def test_invite_client_final_over_tcp_terminates_at_once() -> None:
    layer, key, req = start_invite("TCP")
    layer.receive(response_to(req, 486), UAS, 0.2, "TCP")
    evs = events(layer)
    assert isinstance(evs[0], ResponseReceived) and evs[0].response.status == 486
    assert evs[1:] == [TransactionTerminated(key)]
    [tx] = layer.messages_to_send()
    assert parsed(tx).method == "ACK"  # type: ignore[union-attr]
    assert layer.next_timer() is None


def test_invite_client_passes_2xx_up_and_waits_in_accepted() -> None:
    layer, key, req = start_invite()
    ok = response_to(req, 200)
    layer.receive(ok, UAS, 0.3)
    assert layer.state(key) is S.ACCEPTED
    [ev] = events(layer)
    assert isinstance(ev, ResponseReceived) and ev.response.status == 200
    # The 2xx is acknowledged by the TU, not by the transaction (§13.2.2.4).
    assert layer.messages_to_send() == []
    # Retransmitted or forked 2xx responses go up too (RFC 6026 §8.4).
    layer.receive(ok, UAS, 1.0)
    layer.receive(response_to(req, 200, to_tag="other"), UAS, 1.1)
    assert [e.response.to.tag for e in events(layer)] == ["tt1", "other"]  # type: ignore[attr-defined]
    assert run_until(layer, 32.0) == []
    assert layer.state(key) is S.ACCEPTED
    run_until(layer, 0.3 + 64 * T1)
    assert events(layer) == [TransactionTerminated(key)]
    # Once gone, a late 2xx is a stray response for the core.
    layer.receive(ok, UAS, 40.0)
    [ev] = events(layer)
    assert isinstance(ev, StrayResponse) and ev.response.status == 200


def test_invite_client_transport_error() -> None:
    layer, key, _ = start_invite()
    layer.transport_error(key, 0.1)
    assert events(layer) == [TransportFailed(key), TransactionTerminated(key)]
    assert layer.next_timer() is None
    layer.transport_error(key, 0.2)  # already gone: nothing happens
    assert events(layer) == []


# --------------------------------------------------------------------------- CANCEL (§9.1)


def test_cancel_after_provisional_is_sent_at_once() -> None:
    layer, key, req = start_invite()
    layer.receive(response_to(req, 180), UAS, 0.1)
    events(layer)
    cancel_key = layer.send_cancel(key, 0.2)
    assert cancel_key == TransactionKey(Role.CLIENT, "CANCEL", "z9hG4bKabc1")
    assert layer.state(cancel_key) is S.TRYING
    [tx] = layer.messages_to_send()
    assert tx.destination == UAS
    cancel = parsed(tx)
    assert isinstance(cancel, Request)
    assert cancel.method == "CANCEL" and cancel.uri == req.uri
    assert [str(v) for v in cancel.vias] == [str(req.top_via)]
    assert cancel.headers.get("To") == req.headers.get("To")
    assert cancel.headers.get("From") == req.headers.get("From")
    assert (cancel.cseq.number, cancel.cseq.method) == (1, "CANCEL")
    assert [r.uri for r in cancel.routes] == [r.uri for r in req.routes]
    # Sending it twice does not start a second transaction.
    assert layer.send_cancel(key, 0.3) == cancel_key
    assert layer.messages_to_send() == []
    # The 200 to CANCEL and the 487 to INVITE reach their own transactions.
    layer.receive(make_response(cancel, 200, to_tag="tt1").serialize(), UAS, 0.4)
    layer.receive(response_to(req, 487), UAS, 0.5)
    evs = events(layer)
    assert [(e.key.method, e.response.status) for e in evs if isinstance(e, ResponseReceived)] == [
        ("CANCEL", 200),
        ("INVITE", 487),
    ]


def test_cancel_before_provisional_waits_for_it() -> None:
    layer, key, req = start_invite()
    cancel_key = layer.send_cancel(key, 0.1)
    assert cancel_key is not None and cancel_key not in layer
    assert layer.messages_to_send() == []
    layer.receive(response_to(req, 100), UAS, 0.2)
    [tx] = layer.messages_to_send()
    assert parsed(tx).method == "CANCEL"  # type: ignore[union-attr]
    assert layer.state(cancel_key) is S.TRYING


def test_cancel_abandoned_when_final_arrives_first() -> None:
    layer, key, req = start_invite()
    cancel_key = layer.send_cancel(key, 0.1)
    assert cancel_key is not None
    layer.receive(response_to(req, 486), UAS, 0.2)
    assert TransactionTerminated(cancel_key) in events(layer)
    assert [parsed(t).method for t in layer.messages_to_send()] == ["ACK"]  # type: ignore[union-attr]
    assert layer.send_cancel(key, 0.3) is None


def test_make_cancel_refuses_non_invite() -> None:
    with pytest.raises(TransactionError):
        make_cancel(request("OPTIONS"))


# --------------------------------------------------------------------------- non-INVITE client


def start_non_invite(
    transport: str = "UDP", method: str = "OPTIONS"
) -> tuple[TransactionLayer, TransactionKey, Request]:
    layer = TransactionLayer()
    req = request(method, transport=transport)
    key = layer.send_request(req, UAS, 0.0)
    assert len(layer.messages_to_send()) == 1
    return layer, key, req


def test_non_invite_client_retransmits_capped_at_t2_until_timer_f() -> None:
    layer, key, req = start_non_invite()
    assert layer.state(key) is S.TRYING
    sent = run_until(layer, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(tx.data == req.serialize() for _, tx in sent)
    assert events(layer) == [TransactionTimeout(key, TimerName.F), TransactionTerminated(key)]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    layer, key, req = start_non_invite()
    run_until(layer, 0.6)
    layer.receive(response_to(req, 100), UAS, 0.7)
    assert layer.state(key) is S.PROCEEDING
    assert [type(e) for e in events(layer)] == [ResponseReceived]
    times = [t for t, _ in run_until(layer, 100.0)]
    assert times == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert events(layer) == [TransactionTimeout(key, TimerName.F), TransactionTerminated(key)]


@pytest.mark.parametrize("status", [200, 202, 404, 500])
@pytest.mark.parametrize("via_proceeding", [False, True])
def test_non_invite_client_final_then_timer_k(status: int, via_proceeding: bool) -> None:
    layer, key, req = start_non_invite()
    if via_proceeding:
        layer.receive(response_to(req, 100), UAS, 0.1)
    final = response_to(req, status)
    layer.receive(final, UAS, 0.2)
    assert layer.state(key) is S.COMPLETED
    assert [e.response.status for e in events(layer)] == (  # type: ignore[attr-defined]
        [100, status] if via_proceeding else [status]
    )
    # Retransmissions of the response are absorbed; nothing is retransmitted.
    layer.receive(final, UAS, 1.0)
    assert events(layer) == []
    assert layer.counters["response_absorbed"] == 1
    assert layer.next_timer() == pytest.approx(0.2 + T4)
    assert run_until(layer, 100.0) == []
    assert events(layer) == [TransactionTerminated(key)]


def test_next_timer_follows_timers_set_stopped_and_fired() -> None:
    """next_timer() is the earliest running timer whichever way the set changed:
    an earlier one set, the earliest stopped by a final response, one fired."""
    layer = TransactionLayer()
    a = request("OPTIONS", branch="z9hG4bKa")
    b = request("OPTIONS", branch="z9hG4bKb")
    layer.send_request(a, UAS, 0.0)
    assert layer.next_timer() == pytest.approx(T1)  # A's timer E
    layer.send_request(b, UAS, 0.3)
    assert layer.next_timer() == pytest.approx(T1)
    layer.receive(response_to(a, 200), UAS, 0.4)  # A's E and F stop, K starts
    assert layer.next_timer() == pytest.approx(0.3 + T1)  # B's timer E
    layer.receive(response_to(b, 200), UAS, 0.45)
    assert layer.next_timer() == pytest.approx(0.4 + T4)  # A's timer K
    layer.handle_timer(0.4 + T4)
    assert layer.next_timer() == pytest.approx(0.45 + T4)  # B's timer K
    layer.handle_timer(0.45 + T4)
    assert layer.next_timer() is None
    assert len(layer) == 0


def test_non_invite_client_final_over_tcp_terminates_at_once() -> None:
    layer, key, req = start_non_invite("TCP")
    assert layer.next_timer() == 64 * T1  # only F
    layer.receive(response_to(req, 200), UAS, 0.2, "TCP")
    evs = events(layer)
    assert isinstance(evs[0], ResponseReceived)
    assert evs[1:] == [TransactionTerminated(key)]
    assert layer.next_timer() is None


def test_non_invite_client_transport_error() -> None:
    layer, key, _ = start_non_invite()
    layer.transport_error(key, 0.1)
    assert events(layer) == [TransportFailed(key), TransactionTerminated(key)]


def test_send_request_checks_input() -> None:
    layer = TransactionLayer()
    with pytest.raises(TransactionError):
        layer.send_request(request("OPTIONS", branch=None), UAS, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(request("OPTIONS", branch="1234"), UAS, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(request("ACK"), UAS, 0.0)
    layer.send_request(request("OPTIONS"), UAS, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(request("OPTIONS"), UAS, 0.0)
    assert len(layer) == 1


def test_response_matching_needs_branch_and_method() -> None:
    layer, key, _req = start_non_invite()
    other_branch = make_response(request("OPTIONS", branch="z9hG4bKzzz"), 200, to_tag="x")
    layer.receive(other_branch.serialize(), UAS, 0.1)
    other_method = make_response(request("INVITE"), 200, to_tag="x")
    layer.receive(other_method.serialize(), UAS, 0.1)
    evs = events(layer)
    assert [type(e) for e in evs] == [StrayResponse, StrayResponse]
    assert layer.state(key) is S.TRYING


# --------------------------------------------------------------------------- INVITE server


def receive_invite(
    transport: str = "UDP", settings: TimerSettings | None = None
) -> tuple[TransactionLayer, TransactionKey, Request]:
    layer = TransactionLayer(settings)
    data = request_bytes("INVITE", transport=transport)
    layer.receive(data, UAC, 0.0, transport)
    [ev] = events(layer)
    assert isinstance(ev, RequestReceived)
    assert ev.source == UAC and ev.transport == transport
    assert ev.request.serialize() == data
    return layer, ev.key, ev.request


def test_invite_server_sends_100_trying_after_200_ms() -> None:
    layer, key, req = receive_invite()
    assert key == TransactionKey(Role.SERVER, "INVITE", "z9hG4bKabc1", "192.0.2.1:5060")
    assert layer.state(key) is S.PROCEEDING
    assert layer.next_timer() == pytest.approx(0.2)
    [(t, tx)] = run_until(layer, 0.3)
    assert t == pytest.approx(0.2)
    trying = parsed(tx)
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.call_id == req.call_id and len(trying.vias) == 2
    assert tx.destination == UAC
    # A retransmitted INVITE gets the 100 again and makes no new event.
    layer.receive(request_bytes("INVITE"), UAC, 0.5)
    assert [t.data for t in layer.messages_to_send()] == [tx.data]
    assert events(layer) == []
    assert layer.state(key) is S.PROCEEDING


def test_invite_server_no_100_when_tu_answers_in_time() -> None:
    layer, _key, req = receive_invite()
    ringing = make_response(req, 180, to_tag="ut1")
    layer.send_response(ringing, 0.1)
    assert [t.data for t in layer.messages_to_send()] == [ringing.serialize()]
    assert run_until(layer, 10.0) == []
    # The last provisional is what a retransmitted INVITE gets.
    layer.receive(request_bytes("INVITE"), UAC, 1.0)
    assert [t.data for t in layer.messages_to_send()] == [ringing.serialize()]


def test_invite_server_immediate_100_when_delay_is_zero() -> None:
    layer = TransactionLayer(TimerSettings(trying_delay=0.0))
    layer.receive(request_bytes("INVITE"), UAC, 0.0)
    [tx] = layer.messages_to_send()
    assert parsed(tx).status == 100  # type: ignore[union-attr]


def test_invite_server_without_automatic_100() -> None:
    layer = TransactionLayer(TimerSettings(trying_delay=None))
    layer.receive(request_bytes("INVITE"), UAC, 0.0)
    assert layer.next_timer() is None
    assert layer.messages_to_send() == []


def test_invite_server_non_2xx_retransmits_until_timer_h() -> None:
    layer, key, req = receive_invite()
    busy = make_response(req, 486, to_tag="ut1")
    layer.send_response(busy, 0.1)
    assert layer.state(key) is S.COMPLETED
    assert len(layer.messages_to_send()) == 1
    sent = run_until(layer, 100.0)
    times = [round(t, 6) for t, _ in sent]
    # G starts at T1 and doubles up to T2; H = 64*T1.
    assert times == [0.6, 1.6, 3.6, 7.6, 11.6, 15.6, 19.6, 23.6, 27.6, 31.6]
    assert all(tx.data == busy.serialize() for _, tx in sent)
    assert events(layer) == [TransactionTimeout(key, TimerName.H), TransactionTerminated(key)]


def test_invite_server_ack_confirms_then_timer_i() -> None:
    layer, key, req = receive_invite()
    busy = make_response(req, 486, to_tag="ut1")
    layer.send_response(busy, 0.1)
    layer.messages_to_send()
    run_until(layer, 0.7)  # one retransmission
    # Retransmitted INVITE in Completed gets the final response again.
    layer.receive(request_bytes("INVITE"), UAC, 0.8)
    assert [t.data for t in layer.messages_to_send()] == [busy.serialize()]
    ack = make_ack(req, parse_message(busy.serialize()))  # type: ignore[arg-type]
    layer.receive(ack.serialize(), UAC, 0.9)
    assert layer.state(key) is S.CONFIRMED
    assert events(layer) == []  # the ACK is absorbed by the transaction
    # Further ACKs and INVITEs are absorbed too, with no retransmission.
    layer.receive(ack.serialize(), UAC, 1.0)
    layer.receive(request_bytes("INVITE"), UAC, 1.1)
    assert layer.messages_to_send() == []
    assert layer.next_timer() == pytest.approx(0.9 + T4)
    assert run_until(layer, 100.0) == []
    assert events(layer) == [TransactionTerminated(key)]


def test_invite_server_over_tcp_has_no_g_and_zero_i() -> None:
    layer, key, req = receive_invite("TCP")
    busy = make_response(req, 404, to_tag="ut1")
    layer.send_response(busy, 0.1)
    [tx] = layer.messages_to_send()
    assert tx.destination == UAC and tx.transport == "TCP"
    assert layer.next_timer() == pytest.approx(0.1 + 64 * T1)  # H only
    ack = make_ack(req, busy)
    layer.receive(ack.serialize(), UAC, 0.2, "TCP")
    assert events(layer) == [TransactionTerminated(key)]


def test_invite_server_2xx_accepted_state() -> None:
    layer, key, req = receive_invite()
    ok = make_response(req, 200, to_tag="ut1")
    layer.send_response(ok, 0.1)
    assert layer.state(key) is S.ACCEPTED
    assert len(layer.messages_to_send()) == 1
    # A retransmitted INVITE is absorbed (no new transaction, no answer from us).
    layer.receive(request_bytes("INVITE"), UAC, 0.5)
    assert events(layer) == [] and layer.messages_to_send() == []
    assert layer.counters["request_absorbed"] == 1
    # The TU retransmits its 2xx through the transaction.
    layer.send_response(ok, 0.6)
    assert [t.data for t in layer.messages_to_send()] == [ok.serialize()]
    # The ACK for a 2xx carries a new branch: it goes to the TU unmatched.
    ack = request_bytes("ACK", branch="z9hG4bKack2", to_tag="ut1")
    layer.receive(ack, UAC, 0.7)
    [ev] = events(layer)
    assert isinstance(ev, AckFor2xx) and ev.invite_key is None and ev.source == UAC
    # One that does reuse the INVITE branch is matched and still passed up.
    layer.receive(request_bytes("ACK", to_tag="ut1"), UAC, 0.8)
    [ev] = events(layer)
    assert isinstance(ev, AckFor2xx) and ev.invite_key == key
    # A non-2xx final is no longer possible.
    with pytest.raises(TransactionStateError):
        layer.send_response(make_response(req, 500, to_tag="ut1"), 0.9)
    assert run_until(layer, 0.1 + 64 * T1 - 0.01) == []
    assert key in layer
    run_until(layer, 0.1 + 64 * T1)
    assert events(layer) == [TransactionTerminated(key)]
    with pytest.raises(NoSuchTransaction):
        layer.send_response(ok, 40.0)


def test_invite_server_transport_error() -> None:
    layer, key, req = receive_invite()
    layer.transport_error(key, 0.1)
    assert events(layer) == [TransportFailed(key), TransactionTerminated(key)]
    with pytest.raises(NoSuchTransaction):
        layer.send_response(make_response(req, 180), 0.2)


# --------------------------------------------------------------------------- non-INVITE server


def receive_options(transport: str = "UDP") -> tuple[TransactionLayer, TransactionKey, Request]:
    layer = TransactionLayer()
    layer.receive(request_bytes("OPTIONS", transport=transport), UAC, 0.0, transport)
    [ev] = events(layer)
    assert isinstance(ev, RequestReceived)
    return layer, ev.key, ev.request


def test_non_invite_server_trying_discards_retransmissions() -> None:
    layer, key, _ = receive_options()
    assert layer.state(key) is S.TRYING
    assert layer.next_timer() is None  # no 100 Trying for non-INVITE
    layer.receive(request_bytes("OPTIONS"), UAC, 0.5)
    assert events(layer) == [] and layer.messages_to_send() == []
    assert layer.counters["request_absorbed"] == 1


def test_non_invite_server_proceeding_and_completed_resend() -> None:
    layer, key, req = receive_options()
    trying = make_response(req, 100)
    layer.send_response(trying, 0.1)
    assert layer.state(key) is S.PROCEEDING
    layer.messages_to_send()
    layer.receive(request_bytes("OPTIONS"), UAC, 0.5)
    assert [t.data for t in layer.messages_to_send()] == [trying.serialize()]
    ok = make_response(req, 200, to_tag="ut1")
    layer.send_response(ok, 0.6)
    assert layer.state(key) is S.COMPLETED
    assert [t.data for t in layer.messages_to_send()] == [ok.serialize()]
    layer.receive(request_bytes("OPTIONS"), UAC, 1.0)
    assert [t.data for t in layer.messages_to_send()] == [ok.serialize()]
    # §17.2.2: further final responses from the TU are refused.
    with pytest.raises(TransactionStateError):
        layer.send_response(make_response(req, 500, to_tag="ut1"), 1.1)
    assert layer.messages_to_send() == []
    # No response retransmission by timer; J = 64*T1 ends it.
    assert run_until(layer, 0.6 + 64 * T1 - 0.01) == []
    assert layer.state(key) is S.COMPLETED
    run_until(layer, 0.6 + 64 * T1)
    assert events(layer) == [TransactionTerminated(key)]


def test_non_invite_server_over_tcp_terminates_on_final() -> None:
    layer, key, req = receive_options("TCP")
    layer.send_response(make_response(req, 200, to_tag="ut1"), 0.1)
    assert events(layer) == [TransactionTerminated(key)]
    assert len(layer.messages_to_send()) == 1
    # A late copy of the request is now a new transaction (§17.2.2, J = 0).
    layer.receive(request_bytes("OPTIONS", transport="TCP"), UAC, 0.2, "TCP")
    assert [type(e) for e in events(layer)] == [RequestReceived]


def test_non_invite_server_transport_error() -> None:
    layer, key, _ = receive_options()
    layer.transport_error(key, 0.1)
    assert events(layer) == [TransportFailed(key), TransactionTerminated(key)]


# --------------------------------------------------------------------------- server matching


def test_server_matching_uses_branch_sent_by_and_method() -> None:
    layer, key, _ = receive_options()
    layer.receive(request_bytes("OPTIONS", sent_by="192.0.2.99:5060"), UAC, 0.1)
    layer.receive(request_bytes("OPTIONS", branch="z9hG4bKabc2"), UAC, 0.1)
    layer.receive(request_bytes("INFO"), UAC, 0.1)
    evs = events(layer)
    assert [type(e) for e in evs] == [RequestReceived] * 3
    assert len({e.key for e in evs if isinstance(e, RequestReceived)} | {key}) == 4
    # sent-by compares the host case-insensitively and with the default port.
    layer.receive(request_bytes("OPTIONS", sent_by="192.0.2.1"), UAC, 0.2)
    assert events(layer) == []


def test_cancel_matches_invite_server_transaction() -> None:
    layer, invite_key, invite = receive_invite()
    cancel = make_cancel(invite)
    assert layer.find_invite_for_cancel(cancel) == invite_key
    layer.receive(cancel.serialize(), UAC, 0.1)
    [ev] = events(layer)
    assert isinstance(ev, CancelReceived)
    assert ev.invite_key == invite_key
    assert ev.key != invite_key and ev.key.method == "CANCEL"
    assert layer.state(ev.key) is S.TRYING
    # The CANCEL has its own transaction: its 200 does not touch the INVITE.
    layer.send_response(make_response(ev.request, 200, to_tag="ut1"), 0.2)
    assert layer.state(invite_key) is S.PROCEEDING
    assert layer.state(ev.key) is S.COMPLETED
    layer.send_response(make_response(invite, 487, to_tag="ut1"), 0.3)
    assert layer.state(invite_key) is S.COMPLETED


def test_cancel_without_invite_is_reported_unmatched() -> None:
    layer = TransactionLayer()
    layer.receive(request_bytes("CANCEL", branch="z9hG4bKnone"), UAC, 0.0)
    [ev] = events(layer)
    assert isinstance(ev, CancelReceived) and ev.invite_key is None


def test_ack_without_transaction_goes_to_tu() -> None:
    layer = TransactionLayer()
    layer.receive(request_bytes("ACK", to_tag="x"), UAC, 0.0)
    [ev] = events(layer)
    assert isinstance(ev, AckFor2xx) and ev.invite_key is None
    assert len(layer) == 0


# --------------------------------------------------------------------------- RFC 2543 matching


def test_rfc2543_request_matching() -> None:
    layer = TransactionLayer()
    layer.receive(request_bytes("INVITE", branch=None), UAC, 0.0)
    [ev] = events(layer)
    assert isinstance(ev, RequestReceived)
    key = ev.key
    assert key.branch == "" and key.legacy
    # The same request again is a retransmission.
    layer.receive(request_bytes("INVITE", branch=None), UAC, 0.1)
    assert events(layer) == []
    # Different Call-ID, CSeq number or From tag: new transactions.
    layer.receive(request_bytes("INVITE", branch=None, call_id="other"), UAC, 0.1)
    layer.receive(request_bytes("INVITE", branch=None, cseq=2), UAC, 0.1)
    layer.receive(request_bytes("INVITE", branch=None, from_tag="ft9"), UAC, 0.1)
    assert [type(e) for e in events(layer)] == [RequestReceived] * 3
    # A branch without the magic cookie is RFC 2543 too.
    layer.receive(request_bytes("OPTIONS", branch="old1"), UAC, 0.1)
    [ev2] = events(layer)
    assert isinstance(ev2, RequestReceived) and ev2.key.legacy
    # Responses find the RFC 2543 transaction from their copied headers.
    busy = make_response(ev.request, 486, to_tag="ut1")
    assert layer.send_response(busy, 0.2) == key
    assert layer.state(key) is S.COMPLETED


def test_rfc2543_ack_matches_by_to_tag_of_response() -> None:
    layer = TransactionLayer()
    layer.receive(request_bytes("INVITE", branch=None), UAC, 0.0)
    [ev] = events(layer)
    assert isinstance(ev, RequestReceived)
    layer.send_response(make_response(ev.request, 486, to_tag="ut1"), 0.1)
    # An ACK with another To tag (or another Request-URI) is not for this transaction.
    layer.receive(request_bytes("ACK", branch=None, to_tag="zz"), UAC, 0.2)
    layer.receive(
        request_bytes("ACK", branch=None, to_tag="ut1", uri="sip:carol@example.com"), UAC, 0.2
    )
    assert [type(e) for e in events(layer)] == [AckFor2xx, AckFor2xx]
    assert layer.state(ev.key) is S.COMPLETED
    layer.receive(request_bytes("ACK", branch=None, to_tag="ut1"), UAC, 0.3)
    assert events(layer) == []
    assert layer.state(ev.key) is S.CONFIRMED


def test_rfc2543_cancel_matching() -> None:
    layer = TransactionLayer()
    layer.receive(request_bytes("INVITE", branch=None), UAC, 0.0)
    [ev] = events(layer)
    assert isinstance(ev, RequestReceived)
    assert layer.find_invite_for_cancel(request("CANCEL", branch=None)) == ev.key
    assert layer.find_invite_for_cancel(request("CANCEL", branch=None, cseq=7)) is None
    other_uri = request("CANCEL", branch=None, uri="sip:carol@example.com")
    assert layer.find_invite_for_cancel(other_uri) is None


# --------------------------------------------------------------------------- misc


def test_receive_garbage_raises_and_changes_nothing() -> None:
    layer = TransactionLayer()
    with pytest.raises(ParseError):
        layer.receive(b"NOT SIP AT ALL\r\n\r\n", UAC, 0.0)
    no_cseq = request_bytes("OPTIONS").replace(b"CSeq: 1 OPTIONS\r\n", b"")
    with pytest.raises(ParseError):
        layer.receive(no_cseq, UAC, 0.0)
    assert len(layer) == 0 and events(layer) == [] and layer.messages_to_send() == []


def test_make_branch_uses_magic_cookie_and_injected_rng() -> None:
    assert make_branch(random.Random(7)) == make_branch(random.Random(7))
    assert make_branch(random.Random(7)) != make_branch(random.Random(8))
    assert make_branch().startswith("z9hG4bK") and make_branch() != make_branch()
    layer = TransactionLayer(rng=random.Random(1))
    assert layer.new_branch() == make_branch(random.Random(1))


@pytest.mark.parametrize(
    ("via", "source", "transport", "expected"),
    [
        ("SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKx", ("192.0.2.1", 5070), "UDP",
         ("192.0.2.1", 5070)),
        ("SIP/2.0/UDP pc.example.com;branch=z9hG4bKx", ("192.0.2.1", 4000), "UDP",
         ("192.0.2.1", 5060)),
        ("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKx", ("203.0.113.5", 41000), "UDP",
         ("203.0.113.5", 41000)),
        ("SIP/2.0/UDP 10.0.0.1:5060;maddr=224.0.1.75;branch=z9hG4bKx", ("10.0.0.1", 5060),
         "UDP", ("224.0.1.75", 5060)),
        ("SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKx", ("203.0.113.5", 41001), "TCP",
         ("203.0.113.5", 41001)),
    ],
)
def test_response_destination(
    via: str, source: tuple[str, int], transport: str, expected: tuple[str, int]
) -> None:
    assert response_destination(parse_via(via), source, transport) == expected


def test_server_responses_follow_rport() -> None:
    layer = TransactionLayer()
    src = ("203.0.113.5", 41000)
    layer.receive(request_bytes("OPTIONS", sent_by="10.0.0.1:5060;rport"), src, 0.0)
    [ev] = events(layer)
    assert isinstance(ev, RequestReceived)
    layer.send_response(make_response(ev.request, 200, to_tag="x"), 0.1)
    [tx] = layer.messages_to_send()
    assert tx.destination == src


def test_send_stateless() -> None:
    layer = TransactionLayer()
    ack = request("ACK", to_tag="x")
    layer.send_stateless(ack, UAS, "TCP")
    [tx] = layer.messages_to_send()
    assert tx == Transmit(ack.serialize(), UAS, "TCP", ack, None)
    assert len(layer) == 0


def test_timer_settings_derived_values() -> None:
    s = TimerSettings()
    assert (s.timeout, s.timer_d(False), s.timer_i(False), s.timer_j(False), s.timer_k(False)) == (
        32.0, 32.0, 5.0, 32.0, 5.0
    )
    assert (s.timer_d(True), s.timer_i(True), s.timer_j(True), s.timer_k(True)) == (0, 0, 0, 0)
    with pytest.raises(ValueError):
        TimerSettings(t1=1.0, t2=0.5)


# --------------------------------------------------------------------------- state coverage


def _reach(kind: TransactionKind, path: list[str]) -> tuple[TransactionLayer, TransactionKey]:
    """Drive one machine along ``path`` (names of inputs) over UDP."""
    layer = TransactionLayer()
    client = kind in (TransactionKind.INVITE_CLIENT, TransactionKind.NON_INVITE_CLIENT)
    method = "INVITE" if kind in (TransactionKind.INVITE_CLIENT,
                                  TransactionKind.INVITE_SERVER) else "OPTIONS"
    req = request(method)
    if client:
        key = layer.send_request(req, UAS, 0.0)
    else:
        layer.receive(req.serialize(), UAC, 0.0)
        ev = layer.next_event()
        assert isinstance(ev, RequestReceived)
        key, req = ev.key, ev.request
    now = 0.0
    for step in path:
        now += 0.01
        if step.startswith("recv"):
            layer.receive(response_to(req, int(step[4:])), UAS, now)
        elif step.startswith("send"):
            layer.send_response(make_response(req, int(step[4:]), to_tag="t"), now)
        elif step == "ack":
            layer.receive(request_bytes("ACK", to_tag="t"), UAC, now)
        elif step == "error":
            layer.transport_error(key, now)
        elif step == "timers":
            run_until(layer, 1000.0)
    return layer, key


STATE_PATHS = [
    (TransactionKind.INVITE_CLIENT, [], S.CALLING),
    (TransactionKind.INVITE_CLIENT, ["recv180"], S.PROCEEDING),
    (TransactionKind.INVITE_CLIENT, ["recv180", "recv404"], S.COMPLETED),
    (TransactionKind.INVITE_CLIENT, ["recv200"], S.ACCEPTED),
    (TransactionKind.INVITE_CLIENT, ["recv180", "recv404", "timers"], S.TERMINATED),
    (TransactionKind.INVITE_CLIENT, ["recv200", "timers"], S.TERMINATED),
    (TransactionKind.INVITE_CLIENT, ["error"], S.TERMINATED),
    (TransactionKind.NON_INVITE_CLIENT, [], S.TRYING),
    (TransactionKind.NON_INVITE_CLIENT, ["recv100"], S.PROCEEDING),
    (TransactionKind.NON_INVITE_CLIENT, ["recv200"], S.COMPLETED),
    (TransactionKind.NON_INVITE_CLIENT, ["recv100", "recv404", "timers"], S.TERMINATED),
    (TransactionKind.NON_INVITE_CLIENT, ["timers"], S.TERMINATED),
    (TransactionKind.INVITE_SERVER, [], S.PROCEEDING),
    (TransactionKind.INVITE_SERVER, ["send180"], S.PROCEEDING),
    (TransactionKind.INVITE_SERVER, ["send486"], S.COMPLETED),
    (TransactionKind.INVITE_SERVER, ["send486", "ack"], S.CONFIRMED),
    (TransactionKind.INVITE_SERVER, ["send200"], S.ACCEPTED),
    (TransactionKind.INVITE_SERVER, ["send486", "ack", "timers"], S.TERMINATED),
    (TransactionKind.INVITE_SERVER, ["send486", "timers"], S.TERMINATED),
    (TransactionKind.INVITE_SERVER, ["send200", "timers"], S.TERMINATED),
    (TransactionKind.NON_INVITE_SERVER, [], S.TRYING),
    (TransactionKind.NON_INVITE_SERVER, ["send100"], S.PROCEEDING),
    (TransactionKind.NON_INVITE_SERVER, ["send100", "send200"], S.COMPLETED),
    (TransactionKind.NON_INVITE_SERVER, ["send404", "timers"], S.TERMINATED),
    (TransactionKind.NON_INVITE_SERVER, ["error"], S.TERMINATED),
]


@pytest.mark.parametrize(("kind", "path", "expected"), STATE_PATHS)
def test_every_state_is_reachable(
    kind: TransactionKind, path: list[str], expected: TransactionState
) -> None:
    layer, key = _reach(kind, path)
    assert layer.state(key) is expected
    txn = layer.get(key)
    if expected is S.TERMINATED:
        assert txn is None
    else:
        assert txn is not None and txn.kind is kind


@pytest.mark.parametrize("kind", list(TransactionKind))
def test_state_tables_cover_the_reached_states(kind: TransactionKind) -> None:
    table = TRANSITIONS[kind]
    states = {s for s, _ in table} | set(table.values())
    reached = {exp for k, _, exp in STATE_PATHS if k is kind}
    assert states == reached
    # Every live state can fail on the transport and end.
    for state in states - {S.TERMINATED}:
        assert table[(state, Input.TRANSPORT_ERROR)] is S.TERMINATED


# --------------------------------------------------------------------------- properties

_CLIENT_STEPS = ["recv100", "recv180", "recv200", "recv486", "wait", "error", "cancel"]
_SERVER_STEPS = ["send100", "send180", "send200", "send486", "again", "ack", "wait", "error"]


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "OPTIONS"]),
    transport=st.sampled_from(["UDP", "TCP"]),
    client_steps=st.lists(st.sampled_from(_CLIENT_STEPS), max_size=8),
    server_steps=st.lists(st.sampled_from(_SERVER_STEPS), max_size=8),
)
def test_any_input_sequence_ends_cleanly(
    method: str, transport: str, client_steps: list[str], server_steps: list[str]
) -> None:
    """Whatever arrives in whatever order, every transaction ends by itself.

    Each transaction reports exactly one TransactionTerminated, nothing is left
    behind, and no timer remains once the clock has run far enough.
    """
    layer = TransactionLayer()
    req = request(method, transport=transport)
    client = layer.send_request(req, UAS, 0.0)
    layer.receive(request_bytes(method, branch="z9hG4bKsrv", transport=transport), UAC, 0.0,
                  transport)
    server_req = parse_message(request_bytes(method, branch="z9hG4bKsrv", transport=transport))
    assert isinstance(server_req, Request)
    keys = {client}
    now = 0.0
    for step in client_steps:
        now += 0.3
        if step.startswith("recv"):
            layer.receive(response_to(req, int(step[4:])), UAS, now, transport)
        elif step == "wait":
            layer.handle_timer(now + 5)
            now += 5
        elif step == "error":
            layer.transport_error(client, now)
        elif step == "cancel" and method == "INVITE":
            cancel_key = layer.send_cancel(client, now)
            if cancel_key is not None:
                keys.add(cancel_key)
    server = TransactionKey(Role.SERVER, method, "z9hG4bKsrv", "192.0.2.1:5060")
    keys.add(server)
    for step in server_steps:
        now += 0.3
        if step.startswith("send"):
            try:
                layer.send_response(make_response(server_req, int(step[4:]), to_tag="t"), now)
            except TransactionError:
                pass  # not allowed in this state, or already gone
        elif step == "again":
            layer.receive(server_req.serialize(), UAC, now, transport)
        elif step == "ack":
            layer.receive(request_bytes("ACK", branch="z9hG4bKsrv", to_tag="t",
                                        transport=transport), UAC, now, transport)
        elif step == "wait":
            layer.handle_timer(now + 5)
            now += 5
        elif step == "error":
            layer.transport_error(server, now)
    # An INVITE client transaction in Proceeding has no timer (the TU cancels it,
    # §9.1, or a proxy's timer C does), nor does an unanswered server
    # transaction: give both their final response.
    if layer.state(client) is S.PROCEEDING and method == "INVITE":
        layer.receive(response_to(req, 487), UAS, now, transport)
    if layer.state(server) in (S.TRYING, S.PROCEEDING):
        layer.send_response(make_response(server_req, 500, to_tag="t"), now)
    run_until(layer, now + 1000.0)
    layer.handle_timer(now + 2000.0)
    evs = events(layer)
    terminated = collections.Counter(
        e.key for e in evs if isinstance(e, TransactionTerminated)
    )
    created = collections.Counter(e.key for e in evs if isinstance(e, RequestReceived))
    created[client] += 1
    for key in keys - {client, server}:  # the CANCEL: sent or abandoned, at least once
        assert terminated.pop(key) >= 1
    assert terminated == created
    assert len(layer) == 0
    assert layer.next_timer() is None


def test_finished_transactions_let_go_of_the_request() -> None:
    layer, key, req = receive_options()
    txn = layer.get(key)
    assert txn is not None
    held: list[object] = [txn.request]
    layer.send_response(make_response(req, 200, to_tag="t"), 0.1)
    held.append(txn.request)
    assert held == [req, None] and txn.last_response is not None
    # Retransmissions still work from the kept bytes.
    layer.receive(request_bytes("OPTIONS"), UAC, 0.2)
    assert len(layer.messages_to_send()) == 2


@pytest.mark.parametrize("how", ["timeout", "error"])
def test_pending_cancel_reported_when_invite_ends_without_provisional(how: str) -> None:
    layer, key, _ = start_invite()
    cancel_key = layer.send_cancel(key, 0.1)
    assert cancel_key is not None
    if how == "timeout":
        run_until(layer, 100.0)
    else:
        layer.transport_error(key, 0.2)
    terminated = [e.key for e in events(layer) if isinstance(e, TransactionTerminated)]
    assert terminated == [cancel_key, key]
    assert not any(parsed(t).method == "CANCEL"  # type: ignore[union-attr]
                   for t in layer.messages_to_send())


def test_finished_non_invite_server_answers_retransmissions_from_bytes() -> None:
    layer, key, req = receive_options()
    ok = make_response(req, 200, to_tag="t")
    layer.send_response(ok, 0.1)
    [first] = layer.messages_to_send()
    layer.receive(request_bytes("OPTIONS"), UAC, 0.2)
    [again] = layer.messages_to_send()
    # the retransmission carries the same bytes and an equal, re-read response
    assert again.data == first.data == ok.serialize()
    assert again.message == ok and again.key == key
    txn = layer.get(key)
    assert txn is not None and txn.last_response == ok
    assert layer.counters["retransmissions"] == 1


def test_timer_queue_orders_by_deadline_then_start_order() -> None:
    queue = TimerQueue()
    live = {1, 2, 3, 4, 5, 6}
    queue.push(32.0, 32.0, 1)
    queue.push(0.5, 0.5, 2)
    queue.push(0.5, 0.5, 3)  # same deadline: after 2
    queue.push(32.0, 10.0, 4)  # "now" went back: out of FIFO order
    queue.push(5.0, 5.0, 5)
    queue.push(5.0, 6.0, 6)
    live.discard(5)  # stopped timers are skipped
    assert queue.next_deadline(live) == 0.5
    assert queue.pop_due(0.4, live) is None
    fired = []
    while (seq := queue.pop_due(100.0, live)) is not None:
        fired.append(seq)
    assert fired == [2, 3, 6, 4, 1]
    assert queue.next_deadline(live) is None and len(queue) == 0


def test_timers_fire_in_deadline_order_across_durations() -> None:
    layer = TransactionLayer()
    keys = []
    for i, branch in enumerate(("z9hG4bKq1", "z9hG4bKq2")):
        req = parse_message(request_bytes("OPTIONS", branch=branch))
        assert isinstance(req, Request)
        keys.append(layer.send_request(req, UAS, 0.1 * i))
    layer.messages_to_send()
    # E fires at T1, 2T1, 4T1 ...: both transactions retransmit in turn
    sent = []
    now = 0.0
    while (deadline := layer.next_timer()) is not None and deadline < 3.0:
        now = deadline
        layer.handle_timer(now)
        sent.extend((round(now, 3), t.key) for t in layer.messages_to_send())
    assert sent == [(0.5, keys[0]), (0.6, keys[1]), (1.5, keys[0]), (1.6, keys[1])]

