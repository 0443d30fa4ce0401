"""Reliable provisional responses (RFC 3262) through the node's back-to-back
user agent (docs/node.md, "Reliable provisional responses";
``sip-enable-100rel``).

Each leg has its own RSeq space. A caller that supports or requires
``100rel`` gets the callee's reliable 18x reliably, numbered by the node and
retransmitted (T1, 2*T1 ... until 64*T1) until the caller's PRACK; that
PRACK, and its SDP answer if the 18x held an offer, goes on to the callee,
and the callee's answer to it comes back to the caller. A caller that
requires ``100rel`` gets every 18x reliably (the node answers the PRACK of
one the callee sent unreliably). A callee's reliable 18x that the caller
cannot take reliably is PRACKed by the node itself. A caller that requires
``100rel`` while it is turned off gets 420 with ``Unsupported: 100rel``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.sip_server.call import Leg
from daemons.sip_server.session import SessionBase
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import ParseError, SipError
from protocols.sip.message import Response
from protocols.sip.reliable import (
    OPTION_TAG,
    RAck,
    ReliableReceiver,
    ReliableSender,
    is_reliable,
    option_tags,
    parse_rack,
    parse_rseq,
)

__all__ = ["CalleeReliability", "CallerReliability", "ReliableProvisionals"]


@dataclass(eq=False, slots=True)
class CallerReliability:
    """A caller's leg that takes reliable 18x: the node's RSeq space for it, which
    of its reliable 18x carry a callee's reliable 18x, the retransmission timer."""

    sender: ReliableSender
    required: bool
    #: the node's RSeq -> the callee's leg and its reliable 18x, PRACKed when the caller PRACKs
    relayed: dict[int, tuple[Leg, Response]] = field(default_factory=dict)
    handle: asyncio.TimerHandle | None = None
    #: set while no reliable 18x waits for its PRACK
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self) -> None:
        self.sender.close()
        self.relayed.clear()
        self.settled.set()
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


@dataclass(eq=False, slots=True)
class CalleeReliability:
    """A callee's leg that sent reliable 18x: their order (per early dialog, by To
    tag), the early dialogs PRACKs go in, the highest CSeq the node used there."""

    receivers: dict[str, ReliableReceiver] = field(default_factory=dict)
    dialogs: dict[str, Dialog] = field(default_factory=dict)
    last_cseq: int = 0
    #: (To tag, RSeq) of the reliable 18x relayed to a caller, who PRACKs them
    relayed: set[tuple[str, int]] = field(default_factory=set)

    def close(self) -> None:
        self.dialogs.clear()
        self.relayed.clear()


class ReliableProvisionals(SessionBase):
    """RFC 3262 on both legs of a call (see module doc)."""

    @cached_property
    def m_reliable(self) -> Any:
        return self.server.metrics.counter(
            "sip_reliable_provisionals",
            "Reliable provisional responses: sent, retransmitted, acknowledged, timed out, "
            "PRACKed by the node", ("event",))

    # ------------------------------------------------------------ the caller's side

    def _unsupported_100rel(self, inc: IncomingRequest) -> Response | None:
        """420 with Unsupported: 100rel to a caller that requires it while it is off
        (RFC 3261 §8.2.2.3, RFC 3262 §3); else take the caller's 100rel on its leg."""
        if OPTION_TAG in option_tags(inc.request.headers, "Require") \
                and not self.tserver.sip_enable_100rel:
            return self._refuse(inc, 420, headers=[("Unsupported", OPTION_TAG)])
        return None

    def _take_100rel(self, leg_a: Leg) -> None:
        """The caller's leg sends reliable 18x when the caller supports 100rel."""
        if not self.tserver.sip_enable_100rel:
            return
        headers = leg_a.incoming.request.headers
        required = OPTION_TAG in option_tags(headers, "Require")
        if required or OPTION_TAG in option_tags(headers, "Supported"):
            t1 = self.ep.layer.settings.t1
            state = CallerReliability(ReliableSender(t1), required)
            state.settled.set()
            leg_a.reliable = state

    def _provisional_to_caller(self, leg_a: Leg, leg_b: Leg, resp: Response, status: int,
                               headers: list[tuple[str, str]], relay: bool) -> bool:
        """Send an 18x to the caller reliably when it should go so: the callee's was
        reliable (``relay``) or the caller requires 100rel. False: send it as usual."""
        state = leg_a.reliable
        if not isinstance(state, CallerReliability) or not (relay or state.required):
            return False
        inc: IncomingRequest = leg_a.incoming
        if inc.final_sent:
            return True
        out = inc.response(status, headers=headers, body=resp.body)
        now = self._now()
        first = state.sender.send(out, now)
        rseq = int(out.headers.get("RSeq") or 0)
        callee = leg_b.reliable
        if relay and isinstance(callee, CalleeReliability):
            state.relayed[rseq] = (leg_b, resp)
            callee.relayed.add((resp.to.tag or "", parse_rseq(resp.headers.get("RSeq"))))
        state.settled.clear()
        self.m_reliable.labels("sent").inc()
        if first is not None:
            inc.respond(first)
            self._arm_reliable(leg_a)
        return True

    def _arm_reliable(self, leg_a: Leg) -> None:
        state: CallerReliability = leg_a.reliable
        if state.handle is not None:
            state.handle.cancel()
            state.handle = None
        when = state.sender.next_timer()
        if when is not None:
            state.handle = asyncio.get_running_loop().call_at(when, self._reliable_due, leg_a)

    def _reliable_due(self, leg_a: Leg) -> None:
        state: CallerReliability = leg_a.reliable
        state.handle = None
        inc: IncomingRequest | None = leg_a.incoming
        if inc is None or inc.final_sent or not leg_a.alive:
            state.close()
            return
        again = state.sender.handle_timer(self._now())
        if again is not None:
            self.m_reliable.labels("retransmitted").inc()
            inc.respond(again)
        if state.sender.expired:
            # §3: 64*T1 without a PRACK: the INVITE is rejected with a 5xx
            self.m_reliable.labels("timeout").inc()
            self.log.warning("prack_timeout", conn_id=leg_a.call.conn_id,
                             call_id=leg_a.call_id)
            state.close()
            inc.respond(504, "Reliable Provisional Response Not Acknowledged")
            self._hangup(leg_a, remote=False)
            return
        self._arm_reliable(leg_a)

    async def _reliable_settled(self, leg_a: Leg) -> None:
        """Before the caller's 2xx: no reliable 18x with SDP may be left unacknowledged
        (§3); the wait ends with the retransmissions (64*T1) at the latest."""
        state = leg_a.reliable
        if not isinstance(state, CallerReliability):
            return
        out = state.sender.outstanding
        if out is not None and out.response.body:
            timeout = 64 * state.sender.t1
            try:
                await asyncio.wait_for(state.settled.wait(), timeout)
            except TimeoutError:
                pass
        state.close()

    async def _prack(self, inc: IncomingRequest) -> Response:
        """A caller's PRACK (§3): 481 unless it acknowledges the reliable 18x the node
        waits for; else relayed to the callee when that 18x was the callee's."""
        req = inc.request
        leg = self._leg_for(req)
        state = leg.reliable if leg is not None else None
        if leg is None or not leg.alive or not isinstance(state, CallerReliability) \
                or leg.incoming is None:
            return self._refuse(inc, 481)
        rack = parse_rack(req.headers.get("RAck"))
        ok, nxt = state.sender.acknowledge(rack, leg.incoming.request.cseq.number, self._now())
        if not ok:
            return self._refuse(inc, 481, "No Matching Reliable Provisional Response")
        self.m_reliable.labels("acknowledged").inc()
        relayed = state.relayed.pop(rack.rseq, None)
        if nxt is not None:
            leg.incoming.respond(nxt)
        else:
            state.settled.set()
        self._arm_reliable(leg)
        if relayed is None or not relayed[0].alive:
            return inc.response(200)
        leg_b, resp_b = relayed
        answer = await self._prack_callee(leg_b, resp_b, req.body,
                                          req.headers.get("Content-Type"))
        headers = [("Content-Type", v) for v in answer.headers.get_all("Content-Type")] \
            if answer.body else []
        status = answer.status if answer.status < 300 else (
            answer.status if answer.status in (481, 488, 500) else 500)
        return inc.response(status, answer.reason if status == answer.status else None,
                            headers=headers, body=answer.body)

    # ------------------------------------------------------------ the callee's side

    def _reliable_in_order(self, leg_b: Leg, resp: Response) -> bool:
        """A callee's 18x: False to drop a reliable one that repeats an RSeq or comes
        out of order (§4); True for a new one, and for any unreliable 18x."""
        if not is_reliable(resp):
            return True
        try:
            rseq = parse_rseq(resp.headers.get("RSeq"))
        except ParseError:
            return False
        state = leg_b.reliable
        if not isinstance(state, CalleeReliability):
            state = leg_b.reliable = CalleeReliability()
        receiver = state.receivers.setdefault(resp.to.tag or "", ReliableReceiver())
        return receiver.accept(rseq)

    def _prack_unless_relayed(self, leg_b: Leg, resp: Response) -> None:
        """After a callee's 18x was handled: the node PRACKs a reliable one that no
        caller will (the caller takes no 100rel, or the call is not a basic call)."""
        state = leg_b.reliable
        if not is_reliable(resp) or not isinstance(state, CalleeReliability):
            return
        key = (resp.to.tag or "", parse_rseq(resp.headers.get("RSeq")))
        if key in state.relayed:
            return
        self.m_reliable.labels("pracked_by_node").inc()
        self._spawn(self._prack_callee(leg_b, resp))

    async def _prack_callee(self, leg_b: Leg, resp: Response, body: bytes = b"",
                            content_type: str | None = None) -> Response:
        """PRACK ``resp`` (a reliable 18x of ``leg_b``) in its early dialog (§4, §7.2)."""
        state = leg_b.reliable
        invite = leg_b.invite
        assert isinstance(state, CalleeReliability)
        if invite is None:  # the leg settled: its early dialog is over
            return Response(481)
        tag = resp.to.tag or ""
        try:
            dialog = state.dialogs.get(tag) or Dialog.create_uac(invite, resp)
            state.dialogs[tag] = dialog
            rack = RAck(parse_rseq(resp.headers.get("RSeq")), invite.cseq.number, "INVITE")
        except (DialogError, ParseError) as exc:
            self.log.info("prack_not_sent", call_id=invite.call_id, reason=str(exc))
            return Response(500)
        headers = [("RAck", str(rack))]
        if body:
            headers.append(("Content-Type", content_type or "application/sdp"))
        out = dialog.create_request("PRACK", headers=headers, body=body)
        state.last_cseq = max(state.last_cseq, out.cseq.number)
        try:
            answer = await self._request(out)
        except (SipError, OSError) as exc:
            self.log.info("prack_failed", call_id=invite.call_id, reason=str(exc))
            return Response(503)
        if answer.status >= 300:
            self.log.info("prack_refused", call_id=invite.call_id, status=answer.status)
        return answer

    def _after_early_requests(self, leg_b: Leg) -> None:
        """The confirmed dialog goes on from the CSeq the PRACKs used (RFC 3261 §12.2.1.1)."""
        state = leg_b.reliable
        dialog = leg_b.dialog
        if isinstance(state, CalleeReliability) and dialog is not None and state.last_cseq:
            dialog.local_seq = max(dialog.local_seq or 0, state.last_cseq)
