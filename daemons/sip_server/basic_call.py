"""The basic call of the Session Controller's back-to-back user agent (guide:
"Session Controller"; docs/node.md).

Every call is two (or more) dialogs joined by the node; SDP is copied from
one leg to the other, RTP never reaches the node. INVITEs from phones are
challenged with 407 when ``sip-enable-strict-auth`` applies to the calling
DN. Basic call, CANCEL, busy, unreachable, no answer, late offer (the
caller's ACK holds the answer), BYE, hold / retrieve by re-INVITE (RFC 3264
§8.4).
"""

from __future__ import annotations

import asyncio

from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.sip_server.call import Call, CallState, Leg, LegState, sdp_direction
from daemons.sip_server.dialing import done_future
from daemons.sip_server.registration import Registration
from daemons.sip_server.session import ALLOW, AS_UNAVAILABLE
from daemons.sip_server.session_timer import SessionTimers
from daemons.sip_server.treatment import TreatmentControl
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import ParseError
from protocols.sip.message import Response
from protocols.sip.reliable import is_reliable
from protocols.sip.uri import parse_uri

__all__ = ["BasicCall"]


class BasicCall(Registration, TreatmentControl, SessionTimers):
    """INVITE / ACK / BYE / re-INVITE from phones and their calls."""

    async def _invite(self, inc: IncomingRequest) -> Response | None:
        req = inc.request
        # parse_uri, not ``.sip_uri``: the From / To headers become the dialog's remote /
        # local party for the whole call, and ``.sip_uri`` would cache a parsed URI on them
        caller = parse_uri(req.from_.uri).user or ""
        caller_dn = self._agent_dn(caller)
        if caller_dn is not None and self.config.strict_auth(caller_dn, self.server.app_name):
            if not self._authenticate(inc, caller_dn, "Proxy-Authorization"):
                return self._challenge(inc, 407, caller_dn)
        dest = req.ruri.user or parse_uri(req.to.uri).user or ""
        if not dest:
            return self._refuse(inc, 404, "No Destination")
        refusal = self._unsupported_100rel(inc) or self._session_refusal(inc)  # 420, 422
        if refusal is not None:
            return refusal
        # no explicit 100 Trying: the transaction sends it after 200 ms unless the
        # 180 relayed from the callee came first (RFC 3261 §17.2.1)
        call = self._new_call(caller, dest, caller_dn)
        leg_a = call.add_leg(caller_dn, caller, outbound=False, cti=self._cti(caller_dn))
        leg_a.incoming, leg_a.sdp = inc, req.body
        leg_a.call_id, leg_a.local_tag = req.call_id, inc.to_tag
        self.legs[(leg_a.call_id, leg_a.local_tag)] = leg_a
        self._take_100rel(leg_a)
        self._take_session_timer(leg_a)
        self.log.info("call_started", conn_id=call.conn_id, call_id=req.call_id, ani=caller,
                      dnis=dest)
        self._event(call, "EventDialing", leg_a, other=dest)
        try:
            await self._connect_inbound(call, leg_a, dest)
        except asyncio.CancelledError:
            self._caller_cancelled(call, leg_a)
            raise
        return None

    def _caller_cancelled(self, call: Call, leg_a: Leg) -> None:
        self.log.info("call_cancelled", conn_id=call.conn_id)
        self._release(leg_a, call.dnis)
        for leg in call.live_legs():
            self._end_leg(leg)
        self._finish(call, "cancelled")

    async def _connect_inbound(self, call: Call, leg_a: Leg, dest: str) -> None:
        inc: IncomingRequest = leg_a.incoming
        flow = inc.flow
        # §12.1.1: the proxies that record-routed stay in the dialog (they pin its
        # in-dialog requests to this node)
        record_route = [("Record-Route", v) for v in inc.request.headers.get_lines(
            "Record-Route")]

        def ringing(leg: Leg, resp: Response, first: bool) -> None:
            if first:
                self._event(call, "EventRinging", leg, other=leg_a.number)
            # a callee's reliable 18x goes reliably to a caller that takes them; the
            # node PRACKs the others itself (Dialing._dial)
            relay = is_reliable(resp) and leg_a.reliable is not None
            if relay or first or (resp.body and resp.status == 183):
                status = resp.status if resp.status in (180, 183) else 180
                headers = [*record_route,
                           ("Contact", self._contact(flow.transport, flow.remote[0]))]
                if resp.body:
                    headers.append(("Content-Type", "application/sdp"))
                if not self._provisional_to_caller(leg_a, leg, resp, status, headers, relay):
                    inc.respond(status, headers=headers, body=resp.body)

        leg_b, result = await self._reach(call, leg_a, dest, leg_a.sdp, ringing)
        if self._treated(call):  # answered for a treatment: the media changes by re-INVITE
            await self._leave_treatment(call, leg_a, leg_b, result)
            return
        if leg_b is None or not isinstance(result, Response) or result.status >= 300:
            status = result if isinstance(result, int) else result.status
            if status in AS_UNAVAILABLE:
                status = 480
            if leg_a.alive:
                self._release(leg_a, dest)
                # a callee's 422 that outlived the retry (RFC 4028 §8.2): Min-SE, ours at least
                inc.respond(status, headers=self._too_small_headers(
                    status, result if isinstance(result, Response) else None))
                self._finish(call, f"failed_{status}")
            return
        resp = result
        leg_b.sdp = resp.body
        try:
            leg_b.dialog = Dialog.create_uac(leg_b.invite, resp)  # type: ignore[arg-type]
        except (DialogError, ParseError):
            leg_b.dialog = None
        self._after_early_requests(leg_b)  # CSeq after the PRACKs
        if not leg_a.alive:
            leg_b.abandoned = True
            self._late_final(leg_b, done_future(resp))
            self._release(leg_b)
            return
        if leg_a.sdp:
            await self._ack(leg_b.invite, resp)  # type: ignore[arg-type]
        else:
            leg_b.pending_response = resp  # late offer: the caller's ACK holds the answer
        await self._reliable_settled(leg_a)  # RFC 3262 §3: no 2xx before the PRACK of an offer
        headers = [*record_route, ("Contact", self._contact(flow.transport, flow.remote[0])),
                   ("Allow", ALLOW), *self._session_headers(leg_a)]
        if resp.body:
            headers.append(("Content-Type", "application/sdp"))
        sent = inc.respond(200, headers=headers, body=resp.body)
        if sent is None or not leg_a.alive:
            self._hangup(leg_a, remote=True)
            return
        try:
            leg_a.dialog = Dialog.create_uas(inc.request, sent)
        except (DialogError, ParseError) as exc:
            self.log.warning("call_dialog_failed", conn_id=call.conn_id, reason=str(exc))
        leg_a.move(LegState.ESTABLISHED)
        leg_b.move(LegState.ESTABLISHED)
        call.move(CallState.CONNECTED)
        self.log.info("call_established", conn_id=call.conn_id, caller=leg_a.number,
                      callee=leg_b.number)
        self._event(call, "EventEstablished", leg_b, other=leg_a.number)
        self._event(call, "EventEstablished", leg_a, other=leg_b.number)
        self._start_session_timers(leg_a, leg_b, resp)
        leg_a.settle()
        leg_b.settle()

    def _ack_received(self, inc: IncomingRequest) -> None:
        leg = self._leg_for(inc.request)
        if leg is None:
            return
        for other in leg.call.legs:
            if other.pending_response is not None and other.invite is not None:
                resp, other.pending_response = other.pending_response, None
                self._spawn(self._ack(other.invite, resp, inc.request.body))
                if other.connected:
                    other.settle()

    def _bye(self, inc: IncomingRequest) -> Response:
        ended = self._treatment_bye(inc)  # a media server ended a treatment
        if ended is not None:
            return ended
        leg = self._leg_for(inc.request)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        if leg.dialog is not None:
            leg.dialog.terminate()
        leg.dialog = None
        self.log.info("call_bye", conn_id=leg.call.conn_id, dn=leg.number)
        shared = leg.shared_with
        self._hangup(leg, remote=True)
        if shared is not None and shared.alive:  # the phone left both calls of a consultation
            shared.dialog = None
            self._hangup(shared, remote=True)
        return inc.response(200)

    async def _reinvite(self, inc: IncomingRequest) -> Response | None:
        """Hold / retrieve / media change (RFC 3264 §8.4): relayed to the other leg."""
        req = inc.request
        leg = self._leg_for(req)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        call = leg.call
        other = call.other(leg)
        if not leg.connected or other is None or not other.connected or other.dialog is None:
            return self._refuse(inc, 491)
        refusal = self._session_refusal(inc)  # 422 (RFC 4028 §8.1)
        if refusal is not None:
            return refusal
        if leg.dialog is not None:
            try:
                leg.dialog.receive_request(req)
            except DialogError as exc:
                return self._refuse(inc, exc.status, exc.reason)
        inc.respond(100)
        headers = [("Contact", self._contact()), ("Allow", ALLOW)]
        if req.body:
            headers.append(("Content-Type", "application/sdp"))
        # a 2xx to a re-INVITE refreshes both legs' sessions (RFC 4028 §10): the other
        # leg's in _session_request, this one's in the 2xx the node answers with
        out, resp = await self._session_request(other, "INVITE", headers, req.body)
        if resp.status >= 300:
            status = resp.status if resp.status not in AS_UNAVAILABLE else 488
            return inc.response(status, headers=self._too_small_headers(status, resp))
        await self._ack(out, resp)
        leg.sdp, other.sdp = req.body, resp.body
        answer_headers = [("Contact", self._contact(inc.flow.transport, inc.flow.remote[0])),
                          ("Allow", ALLOW), *self._session_refreshed(leg, req.headers)]
        if resp.body:
            answer_headers.append(("Content-Type", "application/sdp"))
        sent = inc.respond(200, headers=answer_headers, body=resp.body)
        if req.body and sent is not None:
            direction = sdp_direction(req.body)
            # the held party's observers learn it too (its DN gets no event of its own)
            seen = (other.dn,) if other.dn else ()
            if direction in ("sendonly", "inactive") and leg.state is LegState.ESTABLISHED:
                leg.move(LegState.HELD)
                self._event(call, "EventHeld", leg, other=other.number, observers=seen)
            elif direction in ("sendrecv", "recvonly") and leg.state is LegState.HELD:
                leg.move(LegState.ESTABLISHED)
                self._event(call, "EventRetrieved", leg, other=other.number, observers=seen)
        return None
