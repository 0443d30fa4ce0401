"""RFC 3261 §12 dialogs: creation on both sides, route sets, CSeq and target refresh."""

from __future__ import annotations

import random

import pytest

from protocols.sip.dialog import (
    TRANSITIONS,
    Dialog,
    DialogError,
    DialogId,
    DialogInput,
    DialogState,
    OutOfOrderRequest,
)
from protocols.sip.message import Request, Response, make_response, parse_message
from protocols.sip.transaction import RequestReceived, TransactionLayer, make_branch

ALICE_CONTACT = "sip:alice@192.0.2.1:5060"
BOB_CONTACT = "sip:bob@192.0.2.2:5070;transport=tcp"


def invite(
    *,
    uri: str = "sip:bob@example.com",
    record_route: tuple[str, ...] = (),
    cseq: int = 314,
    method: str = "INVITE",
    from_tag: str = "alice-tag",
    to_tag: str | None = None,
    contact: str | None = ALICE_CONTACT,
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKd1",
        "Max-Forwards: 70",
        *(f"Record-Route: {rr}" for rr in record_route),
        f'From: "Alice" <sip:alice@example.com>;tag={from_tag}',
        "To: Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: dlg-1@192.0.2.1",
        f"CSeq: {cseq} {method}",
    ]
    if contact is not None:
        lines.append(f"Contact: <{contact}>")
    msg = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def answer(
    req: Request,
    status: int = 200,
    *,
    to_tag: str | None = "bob-tag",
    contact: str | None = BOB_CONTACT,
    copy_record_route: bool = True,
) -> Response:
    resp = make_response(req, status, to_tag=to_tag)
    if copy_record_route:
        for rr in req.headers.get_all("Record-Route"):
            resp.headers.add("Record-Route", rr)
    if contact is not None:
        resp.headers.add("Contact", f"<{contact}>")
    # Go through the wire form, as a received response would.
    parsed = parse_message(resp.serialize())
    assert isinstance(parsed, Response)
    return parsed


RR = ("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>")


def uac_dialog(**kwargs: object) -> tuple[Dialog, Request]:
    req = invite(record_route=RR, **kwargs)  # type: ignore[arg-type]
    return Dialog.create_uac(req, answer(req)), req


def roundtrip(req: Request) -> Request:
    if "Via" not in req.headers:
        req.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKrt")
    msg = parse_message(req.serialize())
    assert isinstance(msg, Request)
    msg.validate()
    return msg


# --------------------------------------------------------------------------- UAC


def test_uac_dialog_from_2xx() -> None:
    dialog, req = uac_dialog()
    assert dialog.id == DialogId("dlg-1@192.0.2.1", "alice-tag", "bob-tag")
    assert dialog.state is DialogState.CONFIRMED
    # Record-Route reversed at the UAC (§12.1.2).
    assert dialog.route_set == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert dialog.remote_target == BOB_CONTACT
    assert (dialog.local_seq, dialog.remote_seq) == (314, None)
    assert dialog.local_uri == "sip:alice@example.com"
    assert dialog.remote_uri == "sip:bob@example.com"
    assert dialog.secure is False
    assert DialogId.for_response(answer(req)) == dialog.id


def test_uac_in_dialog_request_loose_routing() -> None:
    dialog, _ = uac_dialog()
    bye = roundtrip(dialog.create_request("BYE", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb1"))
    assert bye.method == "BYE"
    assert bye.uri == BOB_CONTACT
    assert [r.uri for r in bye.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert bye.from_.uri == "sip:alice@example.com" and bye.from_.tag == "alice-tag"
    assert bye.from_.display_name == "Alice"
    assert bye.to.uri == "sip:bob@example.com" and bye.to.tag == "bob-tag"
    assert bye.call_id == "dlg-1@192.0.2.1"
    assert (bye.cseq.number, bye.cseq.method) == (315, "BYE")
    assert bye.max_forwards == 70
    assert dialog.local_seq == 315
    assert dialog.next_hop() == "sip:p1.example.com;lr"
    info = dialog.create_request("INFO", headers=[("Content-Type", "text/plain")], body=b"hi")
    assert info.cseq.number == 316 and roundtrip(info).body == b"hi"


def test_uac_in_dialog_request_strict_routing() -> None:
    strict = ("<sip:p2.example.com>", "<sip:p1.example.com;method=INVITE?X=1>")
    req = invite(record_route=strict)
    dialog = Dialog.create_uac(req, answer(req))
    assert dialog.route_set[0] == "sip:p1.example.com;method=INVITE?X=1"
    upd = roundtrip(dialog.create_request("UPDATE"))
    # The first route becomes the Request-URI without parameters a Request-URI may
    # not carry; the remote target becomes the last Route (§12.2.1.1).
    assert upd.uri == "sip:p1.example.com"
    assert [r.uri for r in upd.routes] == ["sip:p2.example.com", BOB_CONTACT]
    assert dialog.next_hop() == "sip:p1.example.com;method=INVITE?X=1"


def test_no_route_set_targets_remote_directly() -> None:
    req = invite()
    dialog = Dialog.create_uac(req, answer(req))
    assert dialog.route_set == []
    bye = roundtrip(dialog.create_request("BYE"))
    assert bye.uri == BOB_CONTACT and bye.routes == []
    assert dialog.next_hop() == BOB_CONTACT


def test_ack_for_2xx_reuses_invite_cseq() -> None:
    dialog, _ = uac_dialog()
    ack = roundtrip(dialog.create_request("ACK"))
    assert (ack.cseq.number, ack.cseq.method) == (314, "ACK")
    assert dialog.local_seq == 314
    reinvite = dialog.create_request("INVITE", contact=f"<{ALICE_CONTACT}>")
    assert reinvite.cseq.number == 315
    assert dialog.create_request("ACK").cseq.number == 315
    assert dialog.create_request("ACK", cseq=314).cseq.number == 314
    assert dialog.local_seq == 315


def test_uac_early_dialog_confirmed_by_2xx() -> None:
    req = invite(record_route=RR)
    ringing = answer(req, 180, copy_record_route=False, contact=None)
    dialog = Dialog.create_uac(req, ringing)
    assert dialog.state.name == "EARLY"
    assert dialog.route_set == []
    assert dialog.remote_target == req.uri  # 1xx without Contact
    ok = answer(req, 200)
    assert DialogId.for_response(ok) == dialog.id
    dialog.receive_response(ok)
    assert dialog.state is DialogState.CONFIRMED
    # Route set and remote target recomputed from the 2xx (§13.2.2.4).
    assert dialog.route_set == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert dialog.remote_target == BOB_CONTACT


def test_uac_early_dialog_ends_on_failure() -> None:
    req = invite()
    dialog = Dialog.create_uac(req, answer(req, 183))
    dialog.receive_response(answer(req, 180))
    assert dialog.state.name == "EARLY"
    dialog.receive_response(answer(req, 486))
    assert dialog.state is DialogState.TERMINATED
    with pytest.raises(DialogError):
        dialog.create_request("BYE")


def test_uac_target_refresh_on_2xx_to_reinvite_only() -> None:
    dialog, _ = uac_dialog()
    reinvite = dialog.create_request("INVITE")
    reinvite.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr1")
    dialog.receive_response(answer(reinvite, 488, contact="sip:bob@198.51.100.9"))
    assert dialog.remote_target == BOB_CONTACT
    dialog.receive_response(answer(reinvite, 200, contact="sip:bob@198.51.100.9"))
    assert dialog.remote_target == "sip:bob@198.51.100.9"
    info = dialog.create_request("INFO")
    info.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr2")
    dialog.receive_response(answer(info, 200, contact="sip:bob@203.0.113.1"))
    assert dialog.remote_target == "sip:bob@198.51.100.9"
    assert dialog.state is DialogState.CONFIRMED


@pytest.mark.parametrize("status", [408, 481])
def test_uac_dialog_terminated_by_408_481(status: int) -> None:
    dialog, _ = uac_dialog()
    info = dialog.create_request("INFO")
    info.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr3")
    dialog.receive_response(answer(info, status))
    assert dialog.state is DialogState.TERMINATED


def test_uac_creation_errors() -> None:
    req = invite()
    with pytest.raises(DialogError):
        Dialog.create_uac(req, answer(req, 200, to_tag=None))
    with pytest.raises(DialogError):
        Dialog.create_uac(req, answer(req, 200, contact=None))
    with pytest.raises(DialogError):
        Dialog.create_uac(req, answer(req, 100, to_tag=None))
    with pytest.raises(DialogError):
        Dialog.create_uac(req, answer(req, 404))


@pytest.mark.parametrize(
    ("uri", "transport", "secure"),
    [
        ("sips:bob@example.com", "TLS", True),
        ("sips:bob@example.com", "TCP", False),
        ("sip:bob@example.com", "TLS", False),
    ],
)
def test_secure_flag(uri: str, transport: str, secure: bool) -> None:
    req = invite(uri=uri)
    assert Dialog.create_uac(req, answer(req), transport=transport).secure is secure
    assert Dialog.create_uas(req, answer(req), transport=transport).secure is secure


# --------------------------------------------------------------------------- UAS


def uas_dialog() -> tuple[Dialog, Request]:
    req = invite(record_route=RR)
    return Dialog.create_uas(req, make_response(req, 200, to_tag="bob-tag")), req


def test_uas_dialog_from_request_and_our_response() -> None:
    dialog, _ = uas_dialog()
    assert dialog.id == DialogId("dlg-1@192.0.2.1", "bob-tag", "alice-tag")
    assert dialog.route_set == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert dialog.remote_target == ALICE_CONTACT
    assert (dialog.local_seq, dialog.remote_seq) == (None, 314)
    assert dialog.local_uri == "sip:bob@example.com"
    assert dialog.remote_uri == "sip:alice@example.com"
    assert dialog.state is DialogState.CONFIRMED
    # An in-dialog request from the UAC maps to the same id.
    bye = invite(method="BYE", to_tag="bob-tag", cseq=315)
    assert DialogId.for_incoming_request(bye) == dialog.id


def test_uas_request_uses_random_initial_cseq_and_our_tags() -> None:
    req = invite(record_route=RR)
    resp = make_response(req, 200, to_tag="bob-tag")
    d1 = Dialog.create_uas(req, resp, rng=random.Random(5))
    d2 = Dialog.create_uas(req, resp, rng=random.Random(5))
    bye1 = roundtrip(d1.create_request("BYE"))
    assert bye1.cseq.number == d2.create_request("BYE").cseq.number
    assert 1 <= bye1.cseq.number < 2**31
    assert d1.create_request("INFO").cseq.number == bye1.cseq.number + 1
    assert bye1.from_.tag == "bob-tag" and bye1.to.tag == "alice-tag"
    assert bye1.uri == ALICE_CONTACT  # loose routing
    assert [r.uri for r in bye1.routes] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]


def test_uas_cseq_order() -> None:
    dialog, _ = uas_dialog()
    dialog.receive_request(invite(method="INFO", to_tag="bob-tag", cseq=320, contact=None))
    assert dialog.remote_seq == 320
    with pytest.raises(OutOfOrderRequest) as err:
        dialog.receive_request(invite(method="INFO", to_tag="bob-tag", cseq=319, contact=None))
    assert err.value.status == 500
    assert dialog.remote_seq == 320
    # ACK and CANCEL carry the CSeq of the request they refer to.
    dialog.receive_request(invite(method="ACK", to_tag="bob-tag", cseq=314, contact=None))
    assert dialog.remote_seq == 320
    dialog.receive_request(invite(method="BYE", to_tag="bob-tag", cseq=400, contact=None))
    assert dialog.remote_seq == 400


def test_uas_empty_remote_seq_takes_first_request() -> None:
    req = invite()
    dialog = Dialog(
        DialogId("c", "l", "r"),
        local=req.to,
        remote=req.from_,
        remote_target=ALICE_CONTACT,
    )
    dialog.receive_request(invite(method="INFO", cseq=7, contact=None))
    assert dialog.remote_seq == 7


def test_uas_target_refresh() -> None:
    dialog, _ = uas_dialog()
    dialog.receive_request(
        invite(method="INFO", to_tag="bob-tag", cseq=315, contact="sip:alice@203.0.113.1")
    )
    assert dialog.remote_target == ALICE_CONTACT  # INFO does not refresh the target
    dialog.receive_request(
        invite(method="INVITE", to_tag="bob-tag", cseq=316, contact="sip:alice@203.0.113.2")
    )
    assert dialog.remote_target == "sip:alice@203.0.113.2"
    dialog.receive_request(
        invite(method="UPDATE", to_tag="bob-tag", cseq=317, contact="sip:alice@203.0.113.3")
    )
    assert dialog.remote_target == "sip:alice@203.0.113.3"
    # A re-INVITE without Contact keeps the target.
    dialog.receive_request(invite(method="INVITE", to_tag="bob-tag", cseq=318, contact=None))
    assert dialog.remote_target == "sip:alice@203.0.113.3"


def test_uas_early_dialog_confirmed_or_ended_by_our_final() -> None:
    req = invite()
    early = Dialog.create_uas(req, make_response(req, 180, to_tag="bob-tag"))
    assert early.state.name == "EARLY"
    early.response_sent(make_response(req, 200, to_tag="bob-tag"))
    assert early.state is DialogState.CONFIRMED
    other = Dialog.create_uas(req, make_response(req, 183, to_tag="bob-tag"))
    other.response_sent(make_response(req, 603, to_tag="bob-tag"))
    assert other.state is DialogState.TERMINATED


def test_uas_creation_needs_tag_and_contact() -> None:
    req = invite()
    with pytest.raises(DialogError):
        Dialog.create_uas(req, make_response(req, 200))
    with pytest.raises(DialogError):
        Dialog.create_uas(invite(contact=None), make_response(req, 200, to_tag="x"))


def test_dialog_request_through_transaction_layer() -> None:
    """A request built by the dialog is accepted by both transaction layers."""
    dialog, _ = uac_dialog()
    client = TransactionLayer(rng=random.Random(3))
    server = TransactionLayer()
    bye = dialog.create_request("BYE", via=f"SIP/2.0/UDP 192.0.2.1:5060;branch={make_branch()}")
    client.send_request(bye, ("192.0.2.9", 5060), 0.0)
    [tx] = client.messages_to_send()
    server.receive(tx.data, ("192.0.2.1", 5060), 0.0)
    ev = server.next_event()
    assert isinstance(ev, RequestReceived)
    assert ev.request.method == "BYE" and ev.request.cseq.number == 315
    assert DialogId.for_incoming_request(ev.request) == DialogId(
        dialog.id.call_id, dialog.id.remote_tag, dialog.id.local_tag
    )


def test_cancel_is_not_built_by_the_dialog() -> None:
    dialog, _ = uac_dialog()
    with pytest.raises(DialogError):
        dialog.create_request("CANCEL")
    assert dialog.local_seq == 314


# --------------------------------------------------------------------------- state table
# A dialog has no timers of its own (the transaction layer has them), so the table
# is driven by messages alone.


def dialog_in(role: str, state: DialogState) -> tuple[Dialog, Request]:
    """A dialog of ``role`` (uac/uas) brought to ``state`` through its public API."""
    req = invite(record_route=RR)
    provisional = state is DialogState.EARLY
    if role == "uac":
        resp = answer(req, 180 if provisional else 200)
        dialog = Dialog.create_uac(req, resp)
    else:
        dialog = Dialog.create_uas(req, make_response(req, 180 if provisional else 200,
                                                      to_tag="bob-tag"))
    if state is DialogState.TERMINATED:
        dialog.terminate()
    assert dialog.state is state
    return dialog, req


def cause(role: str, dialog: Dialog, req: Request, trigger: DialogInput) -> None:
    """What makes ``trigger`` happen: a request built, a response sent or received, a BYE."""
    if trigger is DialogInput.LOCAL_REQUEST:
        dialog.create_request("INFO")
    elif trigger in (DialogInput.INVITE_ACCEPTED, DialogInput.INVITE_REJECTED):
        status = 200 if trigger is DialogInput.INVITE_ACCEPTED else 486
        if role == "uac":
            dialog.receive_response(answer(req, status))
        else:
            dialog.response_sent(make_response(req, status, to_tag="bob-tag"))
    elif trigger is DialogInput.DIALOG_GONE:
        info = invite(method="INFO", cseq=900, to_tag="bob-tag", contact=None)
        dialog.receive_response(answer(info, 481))
    else:
        dialog.terminate()


@pytest.mark.parametrize("role", ["uac", "uas"])
@pytest.mark.parametrize(("state", "trigger"), list(TRANSITIONS))
def test_every_transition_of_the_table(
    role: str, state: DialogState, trigger: DialogInput
) -> None:
    dialog, req = dialog_in(role, state)
    cause(role, dialog, req, trigger)
    assert dialog.state is TRANSITIONS[state, trigger]


NOT_IN_TABLE = [
    (state, trigger)
    for state in DialogState
    for trigger in DialogInput
    if (state, trigger) not in TRANSITIONS
]


def test_only_requests_in_a_terminated_dialog_are_refused() -> None:
    assert NOT_IN_TABLE == [(DialogState.TERMINATED, DialogInput.LOCAL_REQUEST)]


@pytest.mark.parametrize("role", ["uac", "uas"])
@pytest.mark.parametrize(("state", "trigger"), NOT_IN_TABLE)
def test_inputs_missing_from_the_table_are_refused(
    role: str, state: DialogState, trigger: DialogInput
) -> None:
    dialog, req = dialog_in(role, state)
    seqs = (dialog.local_seq, dialog.remote_seq)
    with pytest.raises(DialogError) as err:
        dialog.apply(trigger)
    assert err.value.reason == f"the dialog is {state.value}"
    with pytest.raises(DialogError):
        cause(role, dialog, req, trigger)
    assert dialog.state is state
    assert (dialog.local_seq, dialog.remote_seq) == seqs


def test_dialog_state_is_read_only() -> None:
    dialog, _ = uac_dialog()
    with pytest.raises(AttributeError):
        dialog.state = DialogState.TERMINATED  # type: ignore[misc]
    assert dialog.state is DialogState.CONFIRMED
