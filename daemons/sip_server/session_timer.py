"""Session timers (RFC 4028) on each leg of the node's calls (docs/node.md,
"Session timers"; ``sip-session-expires``, ``sip-min-se``).

The node is a user agent on every leg, so each leg has its own timer:

* the caller's leg (the node answers the INVITE): a Session-Expires below
  ``sip-min-se`` gets 422 with Min-SE; otherwise the 2xx carries the
  interval (shortened to ``sip-session-expires``, never below either side's
  Min-SE) and the refresher: the caller when it supports ``timer`` and did
  not ask otherwise, else the node;
* the callee's leg (the node sends the INVITE with ``Supported: timer`` and
  ``Session-Expires: sip-session-expires``): the callee's 2xx says who
  refreshes; no Session-Expires in it means no timer on that leg. A callee's
  422 with a larger Min-SE gets the INVITE again (same Call-ID and From tag,
  new CSeq) with Session-Expires and Min-SE of that value, once per distinct
  value (§7.4, §8.2); the caller sees the 422 only when that fails too, with
  the larger of the callee's Min-SE and the node's own (§6: a 422 has one).

Every 2xx to a re-INVITE or UPDATE on a leg refreshes its timer (§10), the
party's and the node's own alike: the node's re-INVITEs and UPDATEs (a
refresh, a transfer, a routed call leaving a treatment, a re-INVITE or UPDATE
relayed from the other party) carry the leg's Session-Expires and Min-SE
(§7.1, §8), a 422 to them is retried the same way (one that stands reaches the
sender of a relayed request with Min-SE as above; either way its Min-SE stays the
leg's floor, so the next request on the leg starts from it, §7.3), and their 2xx
restarts the leg's session with the interval and refresher it names; a 2xx without
Session-Expires stops the leg's timer (the party wants none, §7.2, §7.4). When the node
refreshes, it sends an UPDATE (a re-INVITE with the same SDP to a party that
does not allow UPDATE) at half the interval. A leg whose session expires
without a refresh ends the call: BYE to every party, ``sessions_expired``
counted. The clock itself is :class:`protocols.sip.session_timer.SessionTimer`.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.sip_server.call import Leg
from daemons.sip_server.session import SessionBase
from protocols.sip.errors import ParseError, SipError
from protocols.sip.headers import Headers
from protocols.sip.message import Request, Response
from protocols.sip.reliable import option_tags
from protocols.sip.session_timer import (
    MIN_SE,
    OPTION_TAG,
    SessionExpires,
    SessionTimer,
    TimerAction,
    UasAnswer,
    answer_request,
    parse_min_se,
    parse_session_expires,
    read_response,
)

__all__ = ["MAX_TOO_SMALL_RETRIES", "LegSessionTimer", "SessionTimers"]

#: 422 retries of one request at most, each with a larger Min-SE (§7.4: once per value)
MAX_TOO_SMALL_RETRIES = 3


@dataclass(eq=False, slots=True)
class LegSessionTimer:
    """One leg's session timer: what was agreed, the clock, its loop timer."""

    #: the caller's leg: what the node answered to its INVITE (before the 2xx)
    answer: UasAnswer | None = None
    timer: SessionTimer | None = None
    handle: asyncio.TimerHandle | None = None
    #: the party allows UPDATE: the node refreshes with UPDATE, else re-INVITE
    peer_allows_update: bool = False
    #: the leg's floor for the node's requests on it: the Min-SE of its INVITE, raised
    #: by every 422 the party answers one of them with (§7.3, §7.4, §8.2)
    min_se: int = 0

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.timer = None


class SessionTimers(SessionBase):
    """RFC 4028 on each leg (see module doc)."""

    @cached_property
    def m_sessions_expired(self) -> Any:
        return self.server.metrics.counter(
            "sessions_expired", "Calls ended because a leg's session expired without refresh "
            "(RFC 4028)")

    @cached_property
    def m_session_refreshes(self) -> Any:
        return self.server.metrics.counter(
            "session_refreshes", "Session refreshes (RFC 4028) by who sent them and outcome",
            ("by", "outcome"))

    @property
    def _timers_on(self) -> bool:
        return self.tserver.sip_session_expires > 0

    def _session_answer(self, headers: Headers) -> UasAnswer:
        ts = self.tserver
        return answer_request(headers, interval=ts.sip_session_expires,
                              min_se=max(ts.sip_min_se, 90))

    def _session_refusal(self, inc: IncomingRequest) -> Response | None:
        """422 with Min-SE for a Session-Expires below ``sip-min-se`` (§8.1, §9); 420
        for ``Require: timer`` while session timers are off."""
        headers = inc.request.headers
        if not self._timers_on:
            if OPTION_TAG in option_tags(headers, "Require"):
                return self._refuse(inc, 420, headers=[("Unsupported", OPTION_TAG)])
            return None
        answer = self._session_answer(headers)
        if answer.reject_min_se is not None:
            self.log.info("session_interval_too_small", call_id=inc.request.call_id,
                          session_expires=headers.get("Session-Expires"),
                          min_se=answer.reject_min_se)
            return self._refuse(inc, 422, headers=[("Min-SE", str(answer.reject_min_se))])
        return None

    def _too_small_headers(self, status: int, resp: Response | None) -> list[tuple[str, str]]:
        """The Min-SE of a final response the node passes back to the sender of a request
        the other party answered (an INVITE, re-INVITE, UPDATE): a 422 carries one (§6,
        §8.1), the larger of the other party's Min-SE (in ``resp``, when readable) and
        the node's own minimum, so the sender's next try passes both. [] when
        ``status`` is not 422."""
        if status != 422:
            return []
        theirs = _min_se_of(resp.headers) if resp is not None else 0
        return [("Min-SE", str(max(self.tserver.sip_min_se, MIN_SE, theirs)))]

    def _take_session_timer(self, leg_a: Leg) -> None:
        """The caller's leg: what its 2xx will say about the session timer."""
        if not self._timers_on:
            return
        headers = leg_a.incoming.request.headers
        answer = self._session_answer(headers)
        if answer.session is not None:
            leg_a.session_timer = LegSessionTimer(
                answer=answer, peer_allows_update=_allows_update(headers))

    def _session_headers(self, leg: Leg) -> list[tuple[str, str]]:
        """Session-Expires (and Require: timer) for a 2xx to the caller's INVITE."""
        state = leg.session_timer
        if not isinstance(state, LegSessionTimer) or state.answer is None \
                or state.answer.session is None:
            return []
        headers = [("Session-Expires", str(state.answer.session))]
        if state.answer.require:
            headers.append(("Require", OPTION_TAG))
        return headers

    def _start_session_timers(self, leg_a: Leg, leg_b: Leg, resp_b: Response) -> None:
        """Both legs are established: start the clocks the two INVITEs agreed on."""
        self._start_caller_timer(leg_a)
        self._start_callee_timer(leg_b, resp_b)

    def _start_caller_timer(self, leg_a: Leg) -> None:
        """A leg whose INVITE the node answered with 2xx: the clock of what it said."""
        state = leg_a.session_timer
        if isinstance(state, LegSessionTimer) and state.answer is not None \
                and state.answer.session is not None and state.timer is None:
            state.timer = SessionTimer(state.answer.session.interval, state.answer.we_refresh,
                                       self._now())
            self._arm_session(leg_a)
            self._log_timer(leg_a, state.timer)

    def _start_callee_timer(self, leg_b: Leg, resp_b: Response) -> None:
        """A leg the node called (the original callee, a transfer target, an agent a
        routed call reached): the timer its 2xx asked for (§7.2)."""
        if not self._timers_on:
            return
        try:
            se = read_response(resp_b.headers)
        except SipError as exc:
            self.log.info("session_expires_unreadable", conn_id=leg_b.call.conn_id,
                          reason=str(exc))
            se = None
        if se is not None:
            invite = leg_b.invite
            # a floor a party's 422 set on this leg before (the caller's 422 to the
            # re-INVITE of a routed call leaving its treatment) stays (§7.3)
            previous = leg_b.session_timer
            learned = 0
            if isinstance(previous, LegSessionTimer):
                learned = previous.min_se
                previous.close()
            leg_b.session_timer = LegSessionTimer(
                timer=SessionTimer(se.interval, se.refresher == "uac", self._now()),
                peer_allows_update=_allows_update(resp_b.headers),
                min_se=max(learned, _min_se_of(invite.headers) if invite is not None else 0))
            self._arm_session(leg_b)
            self._log_timer(leg_b, leg_b.session_timer.timer)

    def _log_timer(self, leg: Leg, timer: SessionTimer | None) -> None:
        if timer is not None:
            self.log.info("session_timer_started", conn_id=leg.call.conn_id, dn=leg.number,
                          interval=timer.interval,
                          refresher="node" if timer.we_refresh else "party")

    def _session_refreshed(self, leg: Leg, request: Headers) -> list[tuple[str, str]]:
        """The node answers the party's re-INVITE or UPDATE ``request`` on ``leg`` with
        2xx: the leg's session is refreshed (§9, §10). The 2xx's Session-Expires and
        Require headers. (A 2xx to the node's own request: :meth:`_refresh_answered`.)"""
        if not self._timers_on:
            return []
        state = leg.session_timer
        now = self._now()
        answer = self._session_answer(request)
        if answer.session is None:
            if isinstance(state, LegSessionTimer) and state.timer is not None:
                state.timer.refreshed(now)
                self.m_session_refreshes.labels("party", "ok").inc()
            return []
        if not isinstance(state, LegSessionTimer):
            state = leg.session_timer = LegSessionTimer(
                peer_allows_update=_allows_update(request))
        if state.timer is None:
            state.timer = SessionTimer(answer.session.interval, answer.we_refresh, now)
        else:
            state.timer.refreshed(now, answer.session, answer.we_refresh)
        self.m_session_refreshes.labels("party", "ok").inc()
        self._arm_session(leg)
        headers = [("Session-Expires", str(answer.session))]
        return headers + ([("Require", OPTION_TAG)] if answer.require else [])

    def _arm_session(self, leg: Leg) -> None:
        state: LegSessionTimer = leg.session_timer
        if state.handle is not None:
            state.handle.cancel()
            state.handle = None
        if state.timer is None or not leg.alive:
            return
        state.handle = asyncio.get_running_loop().call_at(state.timer.next_timer(),
                                                          self._session_due, leg)

    def _session_due(self, leg: Leg) -> None:
        state: LegSessionTimer = leg.session_timer
        state.handle = None
        if state.timer is None or not leg.alive:
            return
        action = state.timer.handle_timer(self._now())
        if action is TimerAction.EXPIRE:
            self._session_expired(leg)
            return
        if action is TimerAction.REFRESH:
            self._spawn(self._send_refresh(leg))
        self._arm_session(leg)

    def _session_expired(self, leg: Leg) -> None:
        """§10: no refresh in time: BYE to every party of the call."""
        call = leg.call
        self.m_sessions_expired.inc()
        self.log.warning("session_expired", conn_id=call.conn_id, dn=leg.number,
                         call_id=leg.call_id)
        for party in call.live_legs():
            self._end_leg(party)
        self._finish(call, "session_expired")

    async def _send_refresh(self, leg: Leg) -> None:
        """The node refreshes ``leg``'s session (§7.4): UPDATE without SDP, or a
        re-INVITE with the SDP the party last got from the node."""
        state: LegSessionTimer = leg.session_timer
        if state.timer is None or leg.dialog is None or not leg.connected:
            return
        other = leg.call.other(leg)
        method = "UPDATE" if state.peer_allows_update else "INVITE"
        body = b"" if method == "UPDATE" or other is None else other.sdp
        headers = [("Contact", self._contact())]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        try:
            request, resp = await self._session_request(leg, method, headers, body)
        except (SipError, OSError) as exc:
            self.log.info("session_refresh_failed", conn_id=leg.call.conn_id, reason=str(exc))
            self.m_session_refreshes.labels("node", "failed").inc()
            return
        if method == "INVITE" and 200 <= resp.status < 300:
            await self._ack(request, resp)
        if not 200 <= resp.status < 300:
            self.log.info("session_refresh_refused", conn_id=leg.call.conn_id,
                          method=method, status=resp.status)
            self.m_session_refreshes.labels("node", str(resp.status)).inc()
            return  # the session expires unless a later refresh gets through
        self.m_session_refreshes.labels("node", "ok").inc()

    # ------------------------------------------------ the node's own requests (§7.4)

    def _refresh_headers(self, leg: Leg, *, offer: bool = False) -> list[tuple[str, str]]:
        """Supported, Session-Expires and Min-SE of a re-INVITE / UPDATE the node sends
        on ``leg`` (§7.4): the leg's interval (raised to its Min-SE, the largest a
        party's 422 named) and its refresher as it stands, seen from the node as the
        request's UAC. When the leg has no session timer: :meth:`_timer_offer` with
        ``offer``, else none."""
        state = leg.session_timer
        if not self._timers_on:
            return []
        if not isinstance(state, LegSessionTimer) or state.timer is None:
            return self._timer_offer(leg) if offer else []
        timer = state.timer
        floor = max(self.tserver.sip_min_se, MIN_SE, state.min_se)
        se = SessionExpires(max(timer.interval, floor), "uac" if timer.we_refresh else "uas")
        return [("Supported", OPTION_TAG), ("Session-Expires", str(se)),
                ("Min-SE", str(floor))]

    def _timer_running(self, leg: Leg) -> bool:
        state = leg.session_timer
        return isinstance(state, LegSessionTimer) and state.timer is not None

    def _timer_offer(self, leg: Leg) -> list[tuple[str, str]]:
        """Supported: timer and the node's Session-Expires, for a re-INVITE that starts
        a session timer on a leg without one (§7.1; the 2xx says who refreshes). After
        a party's 422 on the leg, Session-Expires and Min-SE are at least its Min-SE
        (§6, §7.4: the retry asks for no less than the Min-SE it got)."""
        ts = self.tserver
        state = leg.session_timer
        learned = state.min_se if isinstance(state, LegSessionTimer) else 0
        headers = [("Supported", OPTION_TAG),
                   ("Session-Expires", str(max(ts.sip_session_expires, ts.sip_min_se,
                                               learned)))]
        if learned:
            headers.append(("Min-SE", str(max(ts.sip_min_se, MIN_SE, learned))))
        return headers

    def _min_se_to_retry(self, request: Request, resp: Response, tried: set[int]) -> int | None:
        """§7.4 / §8.2: the Min-SE to send ``request`` again with after a 422, or None
        (no 422, no usable Min-SE in it, or a value already tried or not above the
        Session-Expires that was refused)."""
        raw_se = request.headers.get("Session-Expires")
        if resp.status != 422 or not self._timers_on or raw_se is None:
            return None
        raw_min = resp.headers.get("Min-SE")
        try:
            min_se = parse_min_se(raw_min) if raw_min is not None else None
            asked = parse_session_expires(raw_se).interval
        except ParseError:
            min_se = asked = None
        if min_se is None or asked is None or min_se in tried or min_se <= asked \
                or len(tried) >= MAX_TOO_SMALL_RETRIES:
            self.log.info("session_interval_too_small_final", call_id=request.call_id,
                          method=request.method, min_se=raw_min)
            return None
        tried.add(min_se)
        self.log.info("session_interval_too_small_retry", call_id=request.call_id,
                      method=request.method, min_se=min_se)
        return min_se

    def _invite_again(self, invite: Request, resp: Response, tried: set[int]) -> Request | None:
        """The retry of an INVITE that opens a dialog, after the callee's 422 (§8.2):
        same Call-ID, From tag, Request-URI and body, the next CSeq, Session-Expires
        and Min-SE of the Min-SE received. None: the 422 is final."""
        min_se = self._min_se_to_retry(invite, resp, tried)
        if min_se is None:
            return None
        headers = invite.headers.copy()
        headers.remove("Via")  # the endpoint adds its own, with a new branch
        headers.set("CSeq", f"{invite.cseq.number + 1} INVITE")
        raw = invite.headers.get("Session-Expires")
        refresher = parse_session_expires(raw).refresher if raw is not None else None
        headers.set("Session-Expires", str(SessionExpires(min_se, refresher)))
        headers.set("Min-SE", str(min_se))
        return Request("INVITE", invite.uri, headers=headers, body=invite.body)

    async def _session_request(self, leg: Leg, method: str, headers: list[tuple[str, str]],
                               body: bytes, *, offer_timer: bool = False
                               ) -> tuple[Request, Response]:
        """A re-INVITE or UPDATE the node sends on ``leg``'s dialog with the leg's
        session-timer headers (:meth:`_refresh_headers`; ``offer_timer``: a leg without
        a timer is asked for one); a 422 raises the leg's Min-SE
        (:meth:`_min_se_learned`) and is retried with it (:meth:`_min_se_to_retry`);
        a 2xx restarts the leg's session (§10). The request last sent and its final
        response (a 2xx to an INVITE is not ACKed here: the ACK may carry an answer)."""
        dialog = leg.dialog
        assert dialog is not None
        tried: set[int] = set()
        while True:
            out = dialog.create_request(method, headers=[
                *headers, *self._refresh_headers(leg, offer=offer_timer)], body=body)
            resp = await self._request(out)
            dialog.receive_response(resp)
            self._min_se_learned(leg, resp)
            if self._min_se_to_retry(out, resp, tried) is None or not leg.alive:
                break
        if 200 <= resp.status < 300 and leg.alive:
            self._refresh_answered(leg, out, resp)
        return out, resp

    def _min_se_learned(self, leg: Leg, resp: Response) -> None:
        """A party's 422 to a re-INVITE / UPDATE the node sent on ``leg``: its Min-SE is
        the leg's floor from then on (§7.3, §8.2), whether the retry gets through or
        the 422 stands, so the next request on the leg starts from it. A leg without
        session-timer state yet (a caller answered by a treatment) gets one holding the
        floor, for the timer its 2xx starts."""
        if resp.status != 422 or not self._timers_on:
            return
        state = leg.session_timer
        if not isinstance(state, LegSessionTimer):
            state = leg.session_timer = LegSessionTimer()
        state.min_se = max(state.min_se, _min_se_of(resp.headers))

    def _refresh_answered(self, leg: Leg, request: Request, resp: Response) -> None:
        """A 2xx to a re-INVITE / UPDATE the node sent on ``leg``: its session restarts
        with the interval and refresher the 2xx names (§7.4, §10); a 2xx without
        Session-Expires stops the leg's timer (the party wants none, §7.2, §7.4)."""
        state = leg.session_timer
        if not isinstance(state, LegSessionTimer) or state.timer is None:
            return
        timer, now = state.timer, self._now()
        try:
            se = read_response(resp.headers)
        except SipError as exc:
            # unreadable is not absent: the session goes on as agreed
            self.log.info("session_expires_unreadable", conn_id=leg.call.conn_id,
                          reason=str(exc))
            timer.refreshed(now)
        else:
            if se is None:
                state.close()
                self.log.info("session_timer_stopped", conn_id=leg.call.conn_id,
                              dn=leg.number, method=request.method)
                return
            timer.refreshed(now, se, se.refresher == "uac")
        self._arm_session(leg)
        self.log.info("session_timer_restarted", conn_id=leg.call.conn_id, dn=leg.number,
                      method=request.method, interval=timer.interval,
                      refresher="node" if timer.we_refresh else "party")

    def _session_status(self, leg: Leg) -> dict[str, Any] | None:
        """A leg's session timer for the status page: interval, refresher, the seconds
        to the node's next refresh and to the expiry (None: no timer)."""
        state = leg.session_timer
        if not isinstance(state, LegSessionTimer) or state.timer is None:
            return None
        timer, now = state.timer, self._now()
        return {"interval": timer.interval,
                "refresher": "node" if timer.we_refresh else "party",
                "refresh_in": round(timer.refresh_at - now, 1)
                if timer.refresh_at != math.inf else None,
                "expires_in": round(timer.expires_at - now, 1)
                if timer.expires_at != math.inf else None}


def _allows_update(headers: Headers) -> bool:
    return "UPDATE" in {m.upper() for m in headers.get_all("Allow")}


def _min_se_of(headers: Headers) -> int:
    """The Min-SE a message carried, 0 without one (or unreadable)."""
    raw = headers.get("Min-SE")
    try:
        return parse_min_se(raw) if raw is not None else 0
    except ParseError:
        return 0
