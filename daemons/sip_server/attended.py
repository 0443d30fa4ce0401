"""Attended transfer from a phone: REFER with Replaces (RFC 3891, RFC 5589 §7).

The transferor A talks to B (call 1) and consults C (call 2); its REFER in
call 1 names call 2's dialog in the Refer-To URI's ``Replaces`` header. The
node that receives the REFER joins B and C and lets A go from both calls:

* call 2 on this node: B and C are re-INVITEd (late offer from B, its offer
  to C, RFC 3725 §4.1), A's dialog of call 2 ends with BYE as a replaced
  dialog does (RFC 3891 §3), C's leg joins call 1;
* call 2 on another node (the proxies spread calls over the nodes by
  Call-ID): an INVITE with the same ``Replaces`` goes to the other nodes of
  the cluster, those of this data centre first; a node without that dialog
  answers 481 (RFC 3891 §3), the one holding it replaces A's leg with the
  new dialog and answers with C's offer, which this node carries to B.

Progress reaches A in NOTIFY message/sipfrag (RFC 3515); after the final 200
A hangs up call 1 itself (RFC 5589 §7.1), else the node ends A's leg.
"""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import Any

from daemons.runtime.sip_endpoint import Destination, IncomingRequest
from daemons.sip_server.call import Call, CallState, Leg, LegState, hold_sdp
from daemons.sip_server.dialing import done_future
from daemons.sip_server.session import ALLOW
from daemons.sip_server.transfer import Transfer
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import ParseError, SipError
from protocols.sip.headers import parse_name_addr
from protocols.sip.message import Response
from protocols.sip.replaces import Replaces, parse_replaces, replaces_in_uri
from protocols.sip.uri import parse_uri

__all__ = ["AttendedTransfer"]

#: how long the node waits for another node to answer an INVITE with Replaces
REMOTE_REPLACE_TIMEOUT = 8.0
#: RFC 5589 §7.1: the transferor hangs up after the final NOTIFY; then the node does
TRANSFEROR_BYE_WAIT = 2.0


class AttendedTransfer(Transfer):
    """REFER with Replaces, and INVITE with Replaces from another node."""

    @cached_property
    def m_transfers_attended(self) -> Any:
        return self.server.metrics.counter(
            "transfers_attended", "Attended transfers (REFER with Replaces) by outcome",
            ("outcome",))

    def _refer(self, inc: IncomingRequest) -> Response:
        req = inc.request
        refer_to = req.headers.get("Refer-To")
        if refer_to is None:
            return super()._refer(inc)
        try:
            uri = parse_name_addr(refer_to).sip_uri
            replaces = replaces_in_uri(uri)
        except ParseError as exc:
            return self._refuse(inc, 400, exc.reason)
        except ValueError:
            return super()._refer(inc)  # a non-SIP Refer-To: the blind path refuses it
        if replaces is None:
            return super()._refer(inc)
        leg = self._leg_for(req)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        other = leg.call.other(leg)
        if not leg.connected or other is None or not other.connected or other.dialog is None:
            return self._refuse(inc, 488, "Not Acceptable Here: nobody to transfer")
        consult = self._replaced_leg(replaces)
        if consult is leg:
            return self._refuse(inc, 400, "Replaces names the REFER's own dialog")
        self.m_transfers_attended.labels("accepted").inc()
        self._spawn(self._attended(leg.call, leg, other, replaces, consult, uri.user or ""))
        return inc.response(202)

    def _replaced_leg(self, replaces: Replaces) -> Leg | None:
        """This node's leg of the dialog ``replaces`` names (its tag is one of the two)."""
        for tag in replaces.tags():
            leg = self.legs.get((replaces.call_id, tag))
            if leg is not None and leg.alive:
                return leg
        return None

    async def _attended(self, call: Call, transferor: Leg, keep: Leg, replaces: Replaces,
                        consult: Leg | None, target: str) -> None:
        call.move(CallState.TRANSFERRING)
        transferor.transferred = True
        await self._notify_refer(transferor, 100, "Trying", False)
        self.log.info("call_transfer_attended", conn_id=call.conn_id,
                      transferor=transferor.number, replaces=replaces.call_id,
                      here=consult is not None)
        if consult is not None:
            status = await self._replace_here(call, transferor, keep, consult)
        else:
            status = await self._replace_elsewhere(call, transferor, keep, replaces, target)
        if status:
            self.m_transfers_attended.labels("failed").inc()
            self.log.info("call_transfer_failed", conn_id=call.conn_id, status=status)
            if transferor.alive:
                transferor.transferred = False
                if call.state is CallState.TRANSFERRING:
                    call.move(CallState.CONNECTED)
                await self._notify_refer(transferor, status, "Failed", True)
            return
        self.m_transfers_attended.labels("completed").inc()
        if call.state is CallState.TRANSFERRING:
            call.move(CallState.CONNECTED)
        if transferor.alive:
            await self._notify_refer(transferor, 200, "OK", True)
            await asyncio.sleep(TRANSFEROR_BYE_WAIT)
            if transferor.alive:
                self._end_leg(transferor)

    async def _replace_here(self, call: Call, transferor: Leg, keep: Leg, consult: Leg) -> int:
        """Join ``keep`` (B) with the other party of ``consult`` (C); 0 or a failure status."""
        call2 = consult.call
        target = call2.other(consult)
        if call2 is call or target is None or not target.connected or target.dialog is None:
            return 481
        # the party put on hold answers an offer: a phone left "paused by remote"
        # resumes on a sendrecv offer, not on an answer in an ACK (linphone); so the
        # late offer goes to the other party (RFC 3725 §4.1 flow I, in that order)
        if consult.state is LegState.HELD:
            status = await self._bridge(keep, target, transferor.sdp)
        else:
            status = await self._bridge(target, keep, transferor.sdp)
        if status:
            return status
        # the consultation dialog is replaced: it ends (RFC 3891 §3), C joins call 1
        consult.transferred = True
        self._end_leg(consult)
        call2.legs.remove(target)
        target.call = call
        call.legs.append(target)
        self._finish(call2, "transferred")
        third = transferor.number
        self._event(call, "EventPartyChanged", keep, other=target.number, third=third)
        self._event(call, "EventPartyChanged", target, other=keep.number, third=third,
                    extra={"AttributePreviousConnID": call2.conn_id})
        self.log.info("call_transferred", conn_id=call.conn_id, to=target.number,
                      replaced=call2.conn_id)
        return 0

    async def _bridge(self, first: Leg, second: Leg, fallback: bytes) -> int:
        """Connect the media of two parties: ``first`` is re-INVITEd without an
        offer, its offer goes to ``second``, whose answer goes back in the ACK. 0
        or the failing status; on failure ``first`` gets ``fallback`` on hold."""
        out_1, resp_1 = await self._reinvite_leg(first, b"")
        if resp_1.status >= 300 or not resp_1.body:
            if resp_1.status < 300:
                await self._ack(out_1, resp_1, hold_sdp(fallback))
            return resp_1.status if resp_1.status >= 300 else 488
        out_2, resp_2 = await self._reinvite_leg(second, resp_1.body)
        if resp_2.status >= 300:
            await self._ack(out_1, resp_1, hold_sdp(fallback))
            return resp_2.status
        await self._ack(out_2, resp_2)
        await self._ack(out_1, resp_1, resp_2.body)
        first.sdp, second.sdp = resp_1.body, resp_2.body
        return 0

    def _other_nodes(self) -> list[Destination]:
        me = self.config.applications.get(self.server.app_name)
        geo = me.geo_location if me is not None else None
        nodes = [n for n in self.config.cluster_nodes() if n.name != self.server.app_name]
        nodes.sort(key=lambda n: n.geo_location != geo)
        return [Destination("UDP", n.host, n.ports["sip-port"]) for n in nodes
                if n.ports.get("sip-port")]

    async def _replace_elsewhere(self, call: Call, transferor: Leg, keep: Leg,
                                 replaces: Replaces, target: str) -> int:
        """INVITE with Replaces to the other nodes until one holds the dialog."""
        number = target or "transfer"
        for hop in self._other_nodes():
            leg = call.add_leg(None, number, outbound=True)
            invite = self._new_invite(leg, f"sip:{number}@{hop.host}:{hop.port}", keep.number,
                                      number, b"", (), [("Replaces", str(replaces))], hop)
            leg.invite = invite
            resp: Response | None = None
            try:
                resp = await asyncio.wait_for(self._invite_final(leg, hop, None),
                                              REMOTE_REPLACE_TIMEOUT)
            except TimeoutError:
                self.ep.cancel(leg.invite or invite)
            except (SipError, OSError) as exc:
                self.log.info("call_replace_unreachable", node=hop.host, reason=str(exc))
            invite = leg.invite or invite  # the INVITE answered (a 422 retry, RFC 4028)
            if resp is None or resp.status >= 300 or not resp.body:
                leg.abandoned = resp is None
                if resp is not None and 200 <= resp.status < 300:
                    self._late_final(leg, done_future(resp))
                leg.move(LegState.RELEASED)
                self.legs.pop((leg.call_id, leg.local_tag), None)
                call.legs.remove(leg)
                if resp is None or resp.status == 481:
                    continue
                return resp.status
            try:
                leg.dialog = Dialog.create_uac(invite, resp)
            except (DialogError, ParseError):
                leg.dialog = None
            out_b, resp_b = await self._reinvite_leg(keep, resp.body)
            if resp_b.status >= 300:
                await self._ack(invite, resp, hold_sdp(resp.body))
                self._end_leg(leg)
                return resp_b.status
            await self._ack(out_b, resp_b)
            await self._ack(invite, resp, resp_b.body)
            keep.sdp, leg.sdp = resp_b.body, resp.body
            leg.move(LegState.ESTABLISHED)
            self._start_callee_timer(leg, resp)  # RFC 4028 on the new dialog
            leg.settle()
            self._event(call, "EventPartyChanged", keep, other=number,
                        third=transferor.number)
            self.log.info("call_transferred", conn_id=call.conn_id, to=number,
                          via_node=f"{hop.host}:{hop.port}")
            return 0
        return 481

    async def _invite_replaces(self, inc: IncomingRequest) -> Response | None:
        """RFC 3891 at this node: the new dialog takes the place of the one named.

        The party that stays (C) is re-INVITEd with the new dialog's offer, or
        without one (then C's offer goes back in the 200 and the ACK carries
        the answer); the replaced party gets BYE.
        """
        req = inc.request
        replaces = parse_replaces(req.headers.get("Replaces") or "")
        refusal = self._session_refusal(inc)  # 420, 422 (RFC 4028 §8.1)
        if refusal is not None:
            return refusal
        old = self._replaced_leg(replaces)
        if old is None or not old.connected:
            return self._refuse(inc, 481, "Call/Transaction Does Not Exist: nothing to replace")
        if replaces.early_only:
            return self._refuse(inc, 486, "Busy Here: the dialog is confirmed")
        call = old.call
        stays = call.other(old)
        if stays is None or not stays.connected or stays.dialog is None:
            return self._refuse(inc, 481, "Call/Transaction Does Not Exist: nobody stays")
        caller = parse_uri(req.from_.uri).user or ""
        new = call.add_leg(None, caller, outbound=False)
        new.incoming, new.sdp = inc, req.body
        new.call_id, new.local_tag = req.call_id, inc.to_tag
        self.legs[(new.call_id, new.local_tag)] = new
        self._take_session_timer(new)  # RFC 4028 on the new dialog
        if call.state is CallState.CONNECTED:
            call.move(CallState.TRANSFERRING)
        inc.respond(100)
        out, resp = await self._reinvite_leg(stays, req.body)
        if resp.status >= 300 or not resp.body:
            if resp.status < 300:
                await self._ack(out, resp, hold_sdp(stays.sdp))
            self._release(new)
            if call.state is CallState.TRANSFERRING:
                call.move(CallState.CONNECTED)
            status = resp.status if resp.status >= 300 else 488
            return inc.response(status, headers=self._too_small_headers(status, resp))
        if req.body:
            await self._ack(out, resp)
        else:
            stays.invite, stays.pending_response = out, resp  # the ACK brings the answer
        headers = [("Contact", self._contact(inc.flow.transport, inc.flow.remote[0])),
                   ("Allow", ALLOW), ("Content-Type", "application/sdp"),
                   *self._session_headers(new)]
        sent = inc.respond(200, headers=headers, body=resp.body)
        if sent is None:
            self._release(new)
            return None
        try:
            new.dialog = Dialog.create_uas(req, sent)
        except (DialogError, ParseError) as exc:
            self.log.warning("call_dialog_failed", conn_id=call.conn_id, reason=str(exc))
        new.move(LegState.ESTABLISHED)
        self._start_caller_timer(new)
        stays.sdp = resp.body
        old.transferred = True
        self._end_leg(old)
        if call.state is CallState.TRANSFERRING:
            call.move(CallState.CONNECTED)
        self._event(call, "EventPartyChanged", stays, other=caller, third=old.number)
        self.log.info("call_replaced", conn_id=call.conn_id, replaced=old.number, by=caller)
        return None
