"""In-dialog requests a B2BUA carries to the other party: INFO (RFC 6086:
DTMF, application data) and UPDATE (RFC 3311: session refresh and offers).

A phone's INFO reaches the party it talks to, not the node: a voicemail menu
or an IVR behind the node reads SIP INFO DTMF, and the phone learns the far
end's answer (its status, body and Content-Type) rather than a 200 the node
made up. An UPDATE's offer goes to the other party, whose answer comes back
in the 2xx; both legs remember the new SDP. An UPDATE is a session refresh
(RFC 4028): the one the node sends on the other leg carries that leg's
Session-Expires and Min-SE (a 422 to it retried), and the 2xx refreshes both
legs' session timers (:mod:`session_timer`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.sip_server.session import AS_UNAVAILABLE
from daemons.sip_server.session_timer import SessionTimers
from protocols.sip.dialog import DialogError
from protocols.sip.message import Response

__all__ = ["RELAYED_HEADERS", "Relay"]

#: headers of an INFO / UPDATE that carry meaning end to end (RFC 6086 §4.2, RFC 3311)
RELAYED_HEADERS = ("Content-Type", "Content-Disposition", "Info-Package", "Recv-Info",
                   "Event", "Signal")


class Relay(SessionTimers):
    """INFO and UPDATE relayed to the other leg of the call."""

    @cached_property
    def m_relayed(self) -> Any:
        return self.server.metrics.counter(
            "sip_relayed", "In-dialog requests relayed to the other party", ("method", "status"))

    async def _relay(self, inc: IncomingRequest) -> Response | None:
        req = inc.request
        method = inc.method
        leg = self._leg_for(req)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        if leg.dialog is not None:
            try:
                leg.dialog.receive_request(req)
            except DialogError as exc:
                return self._refuse(inc, exc.status, exc.reason)
        if method == "UPDATE":
            refusal = self._session_refusal(inc)  # 422 (RFC 4028 §8.1)
            if refusal is not None:
                return refusal
        other = leg.call.other(leg)
        if other is None or other.dialog is None or not other.alive:
            # nobody to carry it to yet (the call still rings): an INFO is taken as
            # read; an offer in an UPDATE cannot be answered here
            if method == "UPDATE" and req.body:
                return self._refuse(inc, 491, "Request Pending: the other party is not "
                                    "connected yet")
            return inc.response(200)
        headers = [(name, value) for name in RELAYED_HEADERS
                   for value in req.headers.get_all(name)]
        if method == "UPDATE":
            # a session refresh of the other leg too (RFC 4028 §10): its own
            # Session-Expires and Min-SE, its timer restarted by the 2xx
            headers.append(("Contact", self._contact()))
            _, resp = await self._session_request(other, method, headers, req.body)
        else:
            out = other.dialog.create_request(method, headers=headers, body=req.body)
            resp = await self._request(out)
            try:
                other.dialog.receive_response(resp)
            except DialogError:
                pass
        status = resp.status
        self.m_relayed.labels(method, str(status)).inc()
        if status in AS_UNAVAILABLE:
            status = 480 if method == "INFO" else 488
        if method == "UPDATE" and 200 <= status < 300 and req.body:
            leg.sdp, other.sdp = req.body, resp.body
        answer = [("Recv-Info", v) for v in resp.headers.get_all("Recv-Info")]
        answer += self._too_small_headers(status, resp)  # RFC 4028 §6: a 422 has Min-SE
        if method == "UPDATE" and 200 <= status < 300:
            # the sender's leg is refreshed too (RFC 4028 §10)
            answer += self._session_refreshed(leg, req.headers)
        if resp.body:
            answer += [("Content-Type", v) for v in resp.headers.get_all("Content-Type")]
        if method == "UPDATE":
            answer.append(("Contact", self._contact(inc.flow.transport, inc.flow.remote[0])))
        return inc.response(status, resp.reason if status == resp.status else None,
                            headers=answer, body=resp.body)
