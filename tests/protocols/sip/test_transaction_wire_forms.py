"""The transaction layer with wire forms the TU made (a proxy's spliced requests
and edited responses), driven with bytes and a fake clock (RFC 3261 §17.1.2,
§17.2.2)."""

from __future__ import annotations

import pytest

from protocols.sip.message import Request, make_response, parse_message
from protocols.sip.timers import TimerName, TimerSettings
from protocols.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    Role,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    TransactionState,
    TransactionStateError,
    TransactionTerminated,
    TransactionTimeout,
)
from tests.protocols.sip.test_transaction import (
    UAC,
    UAS,
    events,
    request,
    request_bytes,
    run_until,
)

S = TransactionState



def spliced(req: Request, branch: str) -> bytes:
    """``req`` as a proxy sends it: its own Via spliced on top of the received bytes."""
    data = req.serialize()
    first = data.index(b"\r\n")
    via = f"\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch={branch}".encode()
    return data[:first] + via + data[first:]


def test_client_with_tu_wire_form_retransmits_it_and_ends_like_any_non_invite() -> None:
    """send_request_data: the bytes given go out and are retransmitted (timer E,
    doubling to T2, T2 once a provisional came), a final response completes the
    transaction, retransmitted finals are absorbed for T4 (timer K)."""
    layer = TransactionLayer()
    req = request("REGISTER")
    data = spliced(req, "z9hG4bKsplice1")
    key = layer.send_request_data(req, data, "z9hG4bKsplice1", UAS, 0.0)
    assert key == TransactionKey(Role.CLIENT, "REGISTER", "z9hG4bKsplice1")
    assert [t.data for t in layer.messages_to_send()] == [data]
    sent = run_until(layer, 3.6)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5]
    assert all(tx.data == data and tx.key == key for _, tx in sent)
    out = parse_message(data)
    assert isinstance(out, Request)
    trying = make_response(out, 100).serialize()
    layer.receive(trying, UAS, 3.6)
    assert [type(e) for e in events(layer)] == [ResponseReceived]
    assert layer.state(key) is S.PROCEEDING
    assert [t for t, _ in run_until(layer, 12.0)] == [7.5, 11.5]  # every T2 in Proceeding
    ok = make_response(out, 200, to_tag="x").serialize()
    layer.receive(ok, UAS, 12.0)
    assert [type(e) for e in events(layer)] == [ResponseReceived]
    assert layer.state(key) is S.COMPLETED
    layer.receive(ok, UAS, 13.0)
    assert events(layer) == [] and layer.counters["response_absorbed"] == 1
    assert run_until(layer, 16.0) == []
    assert layer.state(key) is S.COMPLETED
    run_until(layer, 17.0)  # K = T4 after the final
    assert events(layer) == [TransactionTerminated(key)]
    assert key not in layer and layer.next_timer() is None


def test_client_with_tu_wire_form_times_out_with_timer_f() -> None:
    layer = TransactionLayer(TimerSettings(t1=0.02, t2=0.08, t4=0.1))
    req = request("OPTIONS")
    key = layer.send_request_data(req, spliced(req, "z9hG4bKsplice2"), "z9hG4bKsplice2",
                                  UAS, 10.0)
    layer.messages_to_send()
    sent = run_until(layer, 20.0)
    assert [round(t - 10.0, 3) for t, _ in sent] == [0.02, 0.06, 0.14, 0.22, 0.3, 0.38, 0.46,
                                                     0.54, 0.62, 0.7, 0.78, 0.86, 0.94, 1.02,
                                                     1.1, 1.18, 1.26]
    assert events(layer) == [TransactionTimeout(key, TimerName.F), TransactionTerminated(key)]


def test_client_with_tu_wire_form_refuses_invite_and_bad_branches() -> None:
    layer = TransactionLayer()
    invite = request("INVITE")
    with pytest.raises(TransactionError):
        layer.send_request_data(invite, spliced(invite, "z9hG4bKi"), "z9hG4bKi", UAS, 0.0)
    req = request("REGISTER")
    with pytest.raises(TransactionError):
        layer.send_request_data(req, spliced(req, "rfc2543"), "rfc2543", UAS, 0.0)
    layer.send_request_data(req, spliced(req, "z9hG4bKtwice"), "z9hG4bKtwice", UAS, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request_data(req, spliced(req, "z9hG4bKtwice"), "z9hG4bKtwice", UAS, 0.0)
    assert len(layer) == 1


def test_server_sends_and_repeats_the_tu_wire_form_until_timer_j() -> None:
    """send_response(data=...): the given bytes answer the request and every
    retransmission of it; timer J (64*T1) then ends the transaction (§17.2.2)."""
    layer = TransactionLayer()
    layer.receive(request_bytes("REGISTER"), UAC, 0.0)
    (received,) = events(layer)
    assert isinstance(received, RequestReceived)
    response = make_response(received.request, 200, to_tag="t")
    data = response.serialize().replace(b"Content-Length: 0", b"X-Made: by-tu\r\nContent-Length: 0")
    layer.send_response(response, 0.1, key=received.key, data=data)
    assert [t.data for t in layer.messages_to_send()] == [data]
    assert layer.state(received.key) is S.COMPLETED
    layer.receive(request_bytes("REGISTER"), UAC, 5.0)
    assert [t.data for t in layer.messages_to_send()] == [data]
    with pytest.raises(TransactionStateError):
        layer.send_response(response, 6.0, key=received.key, data=data)
    run_until(layer, 32.0)
    assert received.key in layer
    run_until(layer, 32.2)
    assert events(layer) == [TransactionTerminated(received.key)]
