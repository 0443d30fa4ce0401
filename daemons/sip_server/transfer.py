"""Transfers in the Session Controller (guide: "Session Controller";
docs/node.md).

Single-step transfer by REFER (RFC 3515, progress in NOTIFY sipfrag) or
RequestSingleStepTransfer: late offer to the target, re-INVITE to the party
that stays (RFC 3725 §4.1). Consultation (attended) transfer from T-Library:
RequestInitiateTransfer holds the call and makes a consultation call over the
agent's same dialog, RequestRetrieveCall returns to the held party,
RequestCompleteTransfer joins the held party and the target.
"""

from __future__ import annotations

import asyncio
from typing import Any

from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.call import Call, CallState, Leg, LegState, hold_sdp
from daemons.sip_server.dialing import Dialing, done_future
from daemons.sip_server.session import ALLOW, CallControlError
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import ParseError
from protocols.sip.headers import parse_name_addr
from protocols.sip.message import Request, Response
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

__all__ = ["Transfer"]


class Transfer(Dialing):
    """REFER, single-step and consultation transfer."""

    def _refer(self, inc: IncomingRequest) -> Response:
        """RFC 3515: REFER within a call = single-step transfer of the other party."""
        req = inc.request
        leg = self._leg_for(req)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        refer_to = req.headers.get("Refer-To")
        if refer_to is None:
            return self._refuse(inc, 400, "Missing Refer-To")
        try:
            target = parse_name_addr(refer_to).sip_uri.user or ""
        except (ParseError, ValueError):
            return self._refuse(inc, 400, "Bad Refer-To")
        other = leg.call.other(leg)
        if not target or not leg.connected or other is None or not other.connected:
            return self._refuse(inc, 488 if target else 400)
        self._spawn(self._transfer(leg.call, leg, target, via_refer=True))
        return inc.response(202)

    async def _notify_refer(self, leg: Leg, status: int, reason: str, final: bool) -> None:
        if leg.dialog is None or not leg.alive:
            return
        state = "terminated;reason=noresource" if final else "active;expires=60"
        await self._send_in_dialog(leg, "NOTIFY", headers=[
            ("Event", "refer"), ("Subscription-State", state),
            ("Content-Type", "message/sipfrag;version=2.0"),
            ("Contact", self._contact())], body=f"SIP/2.0 {status} {reason}\r\n".encode())

    async def _transfer(self, call: Call, transferor: Leg, target: str, *,
                        via_refer: bool) -> None:
        """Single-step transfer: the other party of ``transferor`` is connected to
        ``target`` (late offer to the target, re-INVITE to the party that stays,
        as in RFC 3725 §4.1)."""
        keep = call.other(transferor)
        if keep is None or keep.dialog is None:
            return
        call.move(CallState.TRANSFERRING)
        transferor.transferred = True
        if via_refer:
            await self._notify_refer(transferor, 100, "Trying", False)
        else:
            self._end_leg(transferor)

        def ringing(leg: Leg, resp: Response, first: bool) -> None:
            if first:
                self._event(call, "EventRinging", leg, other=keep.number,
                            third=transferor.number)

        self.log.info("call_transfer", conn_id=call.conn_id, transferor=transferor.number,
                      target=target)
        leg_c, result = await self._reach(call, keep, target, b"", ringing)
        if leg_c is None or not isinstance(result, Response) or result.status >= 300:
            status = result if isinstance(result, int) else result.status
            self.log.info("call_transfer_failed", conn_id=call.conn_id, status=status)
            if via_refer and transferor.alive:
                transferor.transferred = False
                call.move(CallState.CONNECTED)
                await self._notify_refer(transferor, status, "Failed", True)
            elif keep.alive:
                self._hangup(keep, remote=False)
            return
        resp = result
        assert leg_c.invite is not None
        try:
            leg_c.dialog = Dialog.create_uac(leg_c.invite, resp)
        except (DialogError, ParseError):
            leg_c.dialog = None
        if not keep.alive or keep.dialog is None:
            leg_c.abandoned = True
            self._late_final(leg_c, done_future(resp))
            self._release(leg_c)
            self._finish(call, "released")
            return
        # the re-INVITE restarts the session timer of the party that stays, and the
        # target's leg gets the timer its 2xx asked for (RFC 4028 §7.2, §10)
        out, answer = await self._reinvite_leg(keep, resp.body)
        if answer.status >= 300:
            await self._ack(leg_c.invite, resp)
            self._end_leg(leg_c)
            self._hangup(keep, remote=False)
            return
        await self._ack(out, answer)
        await self._ack(leg_c.invite, resp, answer.body)
        leg_c.sdp, keep.sdp = resp.body, answer.body
        leg_c.move(LegState.ESTABLISHED)
        self._start_callee_timer(leg_c, resp)
        call.move(CallState.CONNECTED)
        self._event(call, "EventEstablished", leg_c, other=keep.number, third=transferor.number)
        self._event(call, "EventPartyChanged", keep, other=leg_c.number,
                    third=transferor.number)
        if via_refer and transferor.alive:
            await self._notify_refer(transferor, 200, "OK", True)
            await asyncio.sleep(2.0)  # the transferor normally sends BYE itself (RFC 5589)
            if transferor.alive:
                self._end_leg(transferor)
        self.log.info("call_transferred", conn_id=call.conn_id, to=leg_c.number)

    def _initiate_transfer(self, conn: TLibConnection, request: RequestReceived, call: Call,
                           leg: Leg, target: str) -> None:
        """RequestInitiateTransfer: hold the call, consultation call from the same phone."""
        other = call.other(leg)
        if leg.state is not LegState.ESTABLISHED or other is None or not other.connected \
                or other.dialog is None or leg.dialog is None or call.consult is not None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {leg.number} is not talking")
        if target not in self.config.dns:
            raise CallControlError(ErrorCode.UNKNOWN_DN, f"Unknown DN: {target}")
        self.server.expect_answer(conn, request, leg.number, call.conn_id,
                                  frozenset({"EventHeld"}))
        self._spawn(self._consultation(call, leg, other, target,
                                       request.message.get("AttributeUserData")))

    async def _reinvite_leg(self, leg: Leg, body: bytes) -> tuple[Request, Response]:
        """A re-INVITE to ``leg`` (an offer, or none for a late offer, RFC 3725 §4.1),
        a session refresh of the leg too (RFC 4028 §10: :meth:`_session_request`)."""
        headers = [("Contact", self._contact()), ("Allow", ALLOW)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return await self._session_request(leg, "INVITE", headers, body)

    async def _consultation(self, call: Call, leg_a: Leg, other: Leg, target: str,
                            user_data: dict[str, Any] | None) -> None:
        """Classic T-Library consultation: EventHeld on the agent's DN (the other party
        is re-INVITEd with ``a=inactive``), then a consultation call (its own ConnID)
        over the agent's same dialog: late-offer re-INVITE to the agent's phone, its
        offer to ``target``, the target's answer in the ACK (RFC 3725 §4.1)."""
        dn = leg_a.number
        call.move(CallState.TRANSFERRING)
        out, resp = await self._reinvite_leg(other, hold_sdp(leg_a.sdp) if leg_a.sdp else b"")
        if resp.status >= 300 or not leg_a.alive or not other.alive:
            if call.state is CallState.TRANSFERRING:
                call.move(CallState.CONNECTED)
            self.server.fail_pending(call.conn_id, dn, ErrorCode.INVALID_CALL_STATE,
                                     f"The phone of DN {other.number} refused the hold: "
                                     f"{resp.status} {resp.reason}")
            return
        await self._ack(out, resp)
        leg_a.move(LegState.HELD)
        leg_a.held_by_node = True
        self._event(call, "EventHeld", leg_a, other=other.number,
                    observers=(other.dn,) if other.dn else ())
        consult = self._new_call(dn, target, leg_a.dn)
        if user_data:
            consult.user_data.update(user_data)
        call.consult, consult.consult_of = consult, call
        leg_c = consult.add_leg(leg_a.dn, dn, outbound=False, cti=leg_a.cti)
        leg_c.dialog, leg_c.shared_with, leg_a.shared_with = leg_a.dialog, leg_a, leg_c
        self.log.info("call_consultation", conn_id=call.conn_id, consult=consult.conn_id,
                      dn=dn, target=target)
        out_a, resp_a = await self._reinvite_leg(leg_a, b"")
        if resp_a.status >= 300 or not resp_a.body or not leg_c.alive:
            if resp_a.status < 300:
                await self._ack(out_a, resp_a, other.sdp)
            self._end_consultation(call, consult, "failed_offer")
            return
        self._event(consult, "EventDialing", leg_c, other=target, role="Origination",
                    extra={"AttributeTransferConnID": call.conn_id})

        def ringing(leg: Leg, resp: Response, first: bool) -> None:
            if first:
                self._event(consult, "EventRinging", leg, other=dn)

        leg_b, result = await self._reach(consult, leg_c, target, resp_a.body, ringing)
        if leg_b is None or not isinstance(result, Response) or result.status >= 300:
            # the agent's phone gets back the media of the held party (still on hold)
            await self._ack(out_a, resp_a, other.sdp)
            if leg_c.alive:
                self._release(leg_c, target)
            self._end_consultation(call, consult, "failed")
            return
        assert leg_b.invite is not None
        try:
            leg_b.dialog = Dialog.create_uac(leg_b.invite, result)
        except (DialogError, ParseError):
            leg_b.dialog = None
        await self._ack(leg_b.invite, result)
        await self._ack(out_a, resp_a, result.body)
        leg_b.sdp, leg_a.sdp = result.body, resp_a.body
        if leg_c.state is LegState.RELEASED:  # the agent left while the target rang
            self._end_leg(leg_b)
            self._end_consultation(call, consult, "released")
            return
        leg_c.move(LegState.ESTABLISHED)
        leg_b.move(LegState.ESTABLISHED)
        consult.move(CallState.CONNECTED)
        self._start_callee_timer(leg_b, result)
        self._event(consult, "EventEstablished", leg_b, other=dn)
        self._event(consult, "EventEstablished", leg_c, other=leg_b.number, role="Origination")

    def _retrieve_held(self, conn: TLibConnection, request: RequestReceived, call: Call,
                       leg: Leg) -> None:
        """RequestRetrieveCall for a call the node held for a consultation: the agent's
        phone and the held party are joined again (late offer from the phone)."""
        other = call.other(leg)
        if call.consult is not None or other is None or not other.connected \
                or leg.dialog is None or other.dialog is None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {leg.number} still consults or "
                                   "has no party to return to")
        self.server.expect_answer(conn, request, leg.number, call.conn_id,
                                  frozenset({"EventRetrieved"}))

        async def reconnect() -> None:
            out_a, resp_a = await self._reinvite_leg(leg, b"")
            if resp_a.status >= 300 or not resp_a.body:
                if resp_a.status < 300:
                    await self._ack(out_a, resp_a, other.sdp)
                self.server.fail_pending(call.conn_id, leg.number, ErrorCode.INVALID_CALL_STATE,
                                         f"The phone of DN {leg.number} refused the retrieve: "
                                         f"{resp_a.status} {resp_a.reason}")
                return
            out_o, resp_o = await self._reinvite_leg(other, resp_a.body)
            await self._ack(out_a, resp_a, resp_o.body if resp_o.status < 300 else other.sdp)
            if resp_o.status >= 300:
                self.server.fail_pending(call.conn_id, leg.number, ErrorCode.INVALID_CALL_STATE,
                                         f"The phone of DN {other.number} refused the "
                                         f"retrieve: {resp_o.status} {resp_o.reason}")
                return
            await self._ack(out_o, resp_o)
            leg.sdp, other.sdp = resp_a.body, resp_o.body
            leg.held_by_node = False
            leg.shared_with = None
            leg.move(LegState.ESTABLISHED)
            if call.state is CallState.TRANSFERRING:
                call.move(CallState.CONNECTED)
            self._event(call, "EventRetrieved", leg, other=other.number,
                        observers=(other.dn,) if other.dn else ())
        self._spawn(reconnect())

    def _end_consultation(self, call: Call, consult: Call, outcome: str) -> None:
        for leg in consult.live_legs():
            self._end_leg(leg)
        call.consult = None
        for leg in call.legs:
            leg.shared_with = None
        self._finish(consult, outcome)

    def _complete_transfer(self, conn: TLibConnection, request: RequestReceived, call: Call,
                           leg_a: Leg, consult_id: str) -> None:
        """RequestCompleteTransfer: ConnID is the held call, TransferConnID the consultation."""
        consult = call.consult
        if consult is None or consult.conn_id != consult_id or consult.released:
            raise CallControlError(ErrorCode.UNKNOWN_CONNID,
                                   f"Unknown ConnID: {consult_id} is not a consultation of "
                                   f"{call.conn_id}")
        leg_c = consult.leg_of(leg_a.number)
        other = call.other(leg_a)
        leg_b = consult.other(leg_c) if leg_c is not None else None
        if leg_a.state is not LegState.HELD or leg_c is None or leg_b is None \
                or not leg_b.connected or other is None or not other.connected \
                or leg_b.dialog is None or other.dialog is None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {leg_a.number} has no held call "
                                   "and connected consultation to join")
        self.server.expect_answer(conn, request, leg_a.number, call.conn_id,
                                  frozenset({"EventReleased"}))
        self._spawn(self._join(call, consult, leg_a, leg_c, other, leg_b))

    async def _join(self, call: Call, consult: Call, leg_a: Leg, leg_c: Leg, other: Leg,
                    leg_b: Leg) -> None:
        """Connect the held party and the target (late offer from the held party, RFC
        3725 §4.1), release the agent from both calls; the consultation merges into
        the held call, which keeps its ConnID."""
        dn = leg_a.number
        out_o, resp_o = await self._reinvite_leg(other, b"")
        if resp_o.status >= 300 or not resp_o.body:
            if resp_o.status < 300:
                await self._ack(out_o, resp_o, hold_sdp(leg_a.sdp))
            self.server.fail_pending(call.conn_id, dn, ErrorCode.INVALID_CALL_STATE,
                                     f"The phone of DN {other.number} refused the transfer: "
                                     f"{resp_o.status} {resp_o.reason}")
            return
        out_b, resp_b = await self._reinvite_leg(leg_b, resp_o.body)
        if resp_b.status >= 300:
            await self._ack(out_o, resp_o, hold_sdp(leg_a.sdp))
            self.server.fail_pending(call.conn_id, dn, ErrorCode.INVALID_CALL_STATE,
                                     f"The phone of DN {leg_b.number} refused the transfer: "
                                     f"{resp_b.status} {resp_b.reason}")
            return
        await self._ack(out_b, resp_b)
        await self._ack(out_o, resp_o, resp_b.body)
        other.sdp, leg_b.sdp = resp_o.body, resp_b.body
        # the agent leaves: one BYE for the one dialog, EventReleased in both calls
        leg_a.shared_with = leg_c.shared_with = None
        if leg_a.dialog is not None and leg_a.alive:
            self._spawn(self._send_in_dialog(leg_a, "BYE"))
        self._release(leg_c, leg_b.number)
        self._release(leg_a, other.number)
        consult.legs.remove(leg_b)
        leg_b.call = call
        call.legs.append(leg_b)
        call.consult = None
        call.move(CallState.CONNECTED)
        self._finish(consult, "transferred")
        self._event(call, "EventPartyChanged", other, other=leg_b.number, third=dn)
        self._event(call, "EventPartyChanged", leg_b, other=other.number, third=dn,
                    extra={"AttributePreviousConnID": consult.conn_id})
        self.log.info("call_transferred", conn_id=call.conn_id, to=leg_b.number,
                      consult=consult.conn_id)
