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
  refreshes; no Session-Expires in it means no timer on that leg.

Every 2xx to a re-INVITE on a leg refreshes its timer. When the node
refreshes, it sends an UPDATE (a re-INVITE with the same SDP to a party that
does not allow UPDATE) at half the interval. A leg whose session expires
without a refresh ends the call: BYE to every party, ``sessions_expired``
counted. The clock itself is :class:`protocols.sip.session_timer.SessionTimer`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.sip_server.call import Leg
from daemons.sip_server.session import SessionBase
from protocols.sip.errors import SipError
from protocols.sip.headers import Headers
from protocols.sip.message import Response
from protocols.sip.reliable import option_tags
from protocols.sip.session_timer import (
    OPTION_TAG,
    SessionExpires,
    SessionTimer,
    TimerAction,
    UasAnswer,
    answer_request,
    read_response,
)

__all__ = ["LegSessionTimer", "SessionTimers"]


@dataclass(eq=False, slots=True)
class LegSessionTimer:
    """One leg's session timer: what was agreed, the clock, its loop timer."""

    #: the caller's leg: what the node answered to its INVITE (before the 2xx)
    answer: UasAnswer | None = None
    timer: SessionTimer | None = None
    handle: asyncio.TimerHandle | None = None
    #: the party allows UPDATE: the node refreshes with UPDATE, else re-INVITE
    peer_allows_update: bool = False

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
        now = self._now()
        state = leg_a.session_timer
        if isinstance(state, LegSessionTimer) and state.answer is not None \
                and state.answer.session is not None:
            state.timer = SessionTimer(state.answer.session.interval, state.answer.we_refresh,
                                       now)
            self._arm_session(leg_a)
            self._log_timer(leg_a, state.timer)
        if not self._timers_on:
            return
        try:
            se = read_response(resp_b.headers)
        except SipError as exc:
            self.log.info("session_expires_unreadable", conn_id=leg_b.call.conn_id,
                          reason=str(exc))
            se = None
        if se is not None:
            leg_b.session_timer = LegSessionTimer(
                timer=SessionTimer(se.interval, se.refresher == "uac", now),
                peer_allows_update=_allows_update(resp_b.headers))
            self._arm_session(leg_b)
            self._log_timer(leg_b, leg_b.session_timer.timer)

    def _log_timer(self, leg: Leg, timer: SessionTimer | None) -> None:
        if timer is not None:
            self.log.info("session_timer_started", conn_id=leg.call.conn_id, dn=leg.number,
                          interval=timer.interval,
                          refresher="node" if timer.we_refresh else "party")

    def _session_refreshed(self, leg: Leg, request: Headers | None,
                           response: Headers | None) -> list[tuple[str, str]]:
        """A 2xx to a re-INVITE on ``leg``: its session is refreshed. ``request`` is
        the party's re-INVITE (the node answers it: returns the 2xx's headers), or
        ``response`` the party's 2xx to the node's re-INVITE."""
        state = leg.session_timer
        now = self._now()
        if request is not None and self._timers_on:
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
        if isinstance(state, LegSessionTimer) and state.timer is not None:
            se = None
            if response is not None:
                try:
                    se = read_response(response)
                except SipError:
                    se = None
            state.timer.refreshed(now, se, se.refresher == "uac" if se else None)
            self._arm_session(leg)
        return []

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
        timer = state.timer
        dialog = leg.dialog
        if timer is None or dialog is None or not leg.connected:
            return
        se = SessionExpires(timer.interval, "uac")
        headers = [("Supported", OPTION_TAG), ("Session-Expires", str(se)),
                   ("Contact", self._contact())]
        other = leg.call.other(leg)
        method = "UPDATE" if state.peer_allows_update else "INVITE"
        body = b"" if method == "UPDATE" or other is None else other.sdp
        if body:
            headers.append(("Content-Type", "application/sdp"))
        request = dialog.create_request(method, headers=headers, body=body)
        try:
            resp = await self._request(request)
            dialog.receive_response(resp)
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
        if leg.alive and isinstance(leg.session_timer, LegSessionTimer):
            self._session_refreshed(leg, None, resp.headers)


def _allows_update(headers: Headers) -> bool:
    return "UPDATE" in {m.upper() for m in headers.get_all("Allow")}
