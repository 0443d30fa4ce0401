"""Where the ACK of a 2xx goes (protocols.sip.dialog.ack_route, RFC 3261 §13.2.2.4)."""

from __future__ import annotations

from protocols.sip.dialog import ack_route
from protocols.sip.message import parse_message


def _msg(text: str):  # type: ignore[no-untyped-def]
    return parse_message(text.replace("\n", "\r\n").encode())


INVITE = """INVITE sip:1002@10.0.0.2:5060 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1
From: <sip:1001@lab>;tag=a
To: <sip:1002@lab>{to_tag}
Call-ID: c1
CSeq: 7 INVITE
{routes}Contact: <sip:node@10.0.0.1:5070>
Content-Length: 0

"""

OK = """SIP/2.0 200 OK
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1
From: <sip:1001@lab>;tag=a
To: <sip:1002@lab>;tag=b
Call-ID: c1
CSeq: 7 INVITE
{rr}Contact: <sip:1002@127.0.0.1:40123;transport=tcp>
Content-Length: 0

"""


def test_initial_invite_follows_the_record_route_reversed() -> None:
    invite = _msg(INVITE.format(to_tag="", routes=""))
    ok = _msg(OK.format(rr="Record-Route: <sip:10.0.0.9:5060;lr>\n"
                           "Record-Route: <sip:10.0.0.8:5060;lr>\n"))
    assert ack_route(invite, ok) == ([], "sip:10.0.0.8:5060;lr")


def test_initial_invite_without_record_route_goes_to_the_contact() -> None:
    invite = _msg(INVITE.format(to_tag="", routes=""))
    assert ack_route(invite, _msg(OK.format(rr=""))) == (
        [], "sip:1002@127.0.0.1:40123;transport=tcp")


def test_reinvite_acks_through_the_routes_it_carried() -> None:
    """A re-INVITE's 2xx has no Record-Route: the ACK keeps the dialog's route set,
    not the phone's Contact (an ephemeral TCP address)."""
    invite = _msg(INVITE.format(to_tag=";tag=b", routes="Route: <sip:10.0.0.8:5060;lr>\n"
                                                         "Route: <sip:10.0.0.9:5060;lr>\n"))
    routes, hop = ack_route(invite, _msg(OK.format(rr="")))
    assert routes == ["<sip:10.0.0.8:5060;lr>", "<sip:10.0.0.9:5060;lr>"]
    assert hop == "sip:10.0.0.8:5060;lr"
