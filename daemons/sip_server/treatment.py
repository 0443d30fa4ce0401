"""Treatments for calls waiting on a routing point (docs/node.md, "Treatments";
guide: "Routing Limitations" lists TApplyTreatment among the requests a router
sends in a SIP Cluster, "Configuring MSML DNs" the media servers that play
them, the SIP Server options ``ring-tone``, ``default-music``,
``sip-invite-treatment-timeout`` and ``sip-treatments-continuous``).

``RequestApplyTreatment`` (``AttributeThisDN`` the routing point,
``AttributeConnID``, ``AttributeTreatmentType``, ``AttributeTreatmentParms``)
from any routing client of the default port, or relayed by the t-controller,
sends an INVITE with the caller's offer to a media server: a VoIPService DN
with ``service-type = "msml"`` and a ``contact`` (the feature-server's SIP
port), those of the node's geo-location first, the next one when one fails.
The treatment names the Request-URI (:data:`TREATMENT_USERS`:
``sip:music@FS``, ``sip:ringback@FS``, ``sip:annc@FS;play=NAME`` ...).

The caller is **answered** with the media server's SDP (not early media): the
guide's nodes run without reliable provisional responses
(``sip-enable-100rel=false``), and without them the answer in a 183 binds the
final 200 (RFC 3261 §13.2.1), so the agent's media could never replace the
treatment's; an answered call changes its media with a re-INVITE (RFC 3264
§8). A second treatment replaces the first (re-INVITE of the caller, then
BYE to the old one: no gap, ``sip-treatments-continuous``). When the call is
then routed and the agent answers (the agent got the caller's original offer
and rang while the caller still heard the treatment), the treatment leg gets
BYE and the caller a re-INVITE offering the agent's SDP; its answer completes
the call. A caller who hangs up during the treatment ends the treatment leg
and the call waits no more: ``EventAbandoned`` on the routing point.

Answers: ``EventTreatmentApplied`` once the caller hears it; ``EventError``
58 (unknown ConnID), 59 (the call does not wait on that routing point, or a
treatment is being set up), 41 (unknown treatment type), 64
(``TREATMENT_NOT_APPLIED``: no media server configured, none answered within
``sip-invite-treatment-timeout``, or the caller made no SDP offer) with
``EventTreatmentNotApplied`` on the routing point. The call is never lost to
a failed treatment: it keeps waiting for ``RequestRouteCall`` or
``router-timeout``. ``EventTreatmentEnd`` when the media server ends it (an
announcement played through).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemons.cluster.config import DnType
from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.call import Call, CallState, Leg, LegState
from daemons.sip_server.dialing import Dialing, done_future
from daemons.sip_server.session import ALLOW, CallControlError, ControllerHost
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import ParseError, SipError
from protocols.sip.message import Request, Response, make_response
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

__all__ = ["TREATMENT_USERS", "TreatmentControl", "continue_origin"]

#: AttributeTreatmentType -> (Request-URI user at the media server, the
#: AttributeTreatmentParms key naming the file it plays, if any)
TREATMENT_USERS: dict[str, tuple[str, str | None]] = {
    "Music": ("music", "MUSIC"),
    "RingBack": ("ringback", None),
    "Silence": ("silence", None),
    "Busy": ("busy", None),
    "FastBusy": ("fastbusy", None),
    "PlayAnnouncement": ("annc", "ANNOUNCEMENT"),
    "PlayApplication": ("annc", "APP_ID"),
}
#: seconds a media server has to answer the treatment's INVITE (the guide's
#: ``sip-invite-treatment-timeout`` = 15)
TREATMENT_INVITE_TIMEOUT = 15.0


def continue_origin(previous: bytes, new: bytes) -> bytes:
    """``new`` with the ``o=`` line of ``previous`` and its version raised by one:
    the node stays one SDP session towards the caller while the media behind it
    changes (RFC 3264 §8: only the version may change in a new offer)."""
    old = next((line for line in previous.decode("utf-8", "replace").split("\r\n")
                if line.startswith("o=")), None)
    if old is None:
        return new
    fields = old.split(" ")
    if len(fields) >= 6 and fields[2].isdigit():
        fields[2] = str(int(fields[2]) + 1)
    origin = " ".join(fields)
    lines = [origin if line.startswith("o=") else line
             for line in new.decode("utf-8", "replace").split("\r\n")]
    return "\r\n".join(lines).encode()


@dataclass(eq=False)
class Treatment:
    """One treatment a call hears (or is being set up)."""

    call: Call
    routing_point: str
    treatment_type: str
    parms: dict[str, Any]
    leg: Leg  # the media server's dialog (no party of the call: no events of its own)
    uri: str = ""
    playing: bool = False
    stopped: bool = False
    #: the treatment playing while this one is set up (stopped once this one plays)
    previous: Treatment | None = None

    def all(self) -> list[Treatment]:
        return [self] if self.previous is None else [self, self.previous]


class TreatmentControl(Dialing):
    """RequestApplyTreatment and the treatment legs of calls (see module doc)."""

    def __init__(self, server: ControllerHost) -> None:
        super().__init__(server)
        #: ConnID -> the treatment the caller hears (or that is being set up)
        self.treatments: dict[str, Treatment] = {}
        #: (Call-ID, our tag) of a treatment leg -> its treatment (BYE from the media server)
        self.treatment_legs: dict[tuple[str, str], Treatment] = {}
        #: the SDP the node last sent the caller, by ConnID (its o= continues)
        self._caller_sdp: dict[str, bytes] = {}
        m = server.metrics
        self.m_treatments = m.tally(
            "treatments", "RequestApplyTreatment outcomes, by treatment type and outcome "
            "(applied, replaced, routed, ended, abandoned, and the refusals' reasons)",
            ("treatment", "outcome"))

    # ------------------------------------------------------------------ the request

    def apply_treatment(self, conn: TLibConnection, request: RequestReceived) -> None:
        """RequestApplyTreatment: checked here, played by a task (module doc)."""
        msg = request.message
        rp: str = msg["AttributeThisDN"]
        conn_id: str = msg["AttributeConnID"]
        kind: str = msg["AttributeTreatmentType"]
        parms = msg.get("AttributeTreatmentParms") or {}
        try:
            call, caller, uris = self._treatment_checked(rp, conn_id, kind, parms)
        except CallControlError as exc:
            self._treatment_refused(conn, request, rp, conn_id, kind, exc.code, exc.text,
                                    notify=None)
            return
        treatment = Treatment(call, rp, kind, dict(parms), Leg(call, None, "treatment", True),
                              previous=self.treatments.get(conn_id))
        self.treatments[conn_id] = treatment
        self._spawn(self._play(conn, request, treatment, caller, uris))

    def _treatment_checked(self, rp: str, conn_id: str, kind: str, parms: dict[str, Any]
                           ) -> tuple[Call, Leg, list[str]]:
        call = self.calls.get(conn_id)
        if call is None:
            raise CallControlError(ErrorCode.UNKNOWN_CONNID, f"Unknown ConnID: {conn_id}")
        if self.server.routing.waiting(conn_id) != rp:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: call {conn_id} does not wait on "
                                   f"routing point {rp}")
        current = self.treatments.get(conn_id)
        if current is not None and not current.playing:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   "Invalid call state: a treatment is being applied")
        known = TREATMENT_USERS.get(kind)
        if known is None:
            raise CallControlError(ErrorCode.INVALID_ATTRIBUTE,
                                   f"Unknown treatment type: {kind} (known: "
                                   f"{', '.join(TREATMENT_USERS)})")
        user, key = known
        play = parms.get(key) if key is not None else None
        if key is not None and play is not None and not isinstance(play, str):
            raise CallControlError(ErrorCode.INVALID_ATTRIBUTE,
                                   f"AttributeTreatmentParms {key} must be a file name")
        if user == "annc" and not play:
            raise CallControlError(ErrorCode.INVALID_ATTRIBUTE,
                                   f"{kind} needs AttributeTreatmentParms {key}")
        caller = next((leg for leg in call.legs if not leg.outbound and leg.alive), None)
        if caller is None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   "Invalid call state: the caller left")
        if not caller.sdp:
            raise CallControlError(ErrorCode.TREATMENT_NOT_APPLIED,
                                   "Treatment not applied: the caller made no SDP offer")
        uris = self._media_server_uris(user, play)
        if not uris:
            raise CallControlError(ErrorCode.TREATMENT_NOT_APPLIED,
                                   "Treatment not applied: no media server (a VoIPService "
                                   'DN with service-type = "msml" and a contact)')
        return call, caller, uris

    def _media_server_uris(self, user: str, play: str | None) -> list[str]:
        """The Request-URIs of the treatment at each msml DN, this geo-location's first."""
        geo = self.config.applications[self.server.app_name].geo_location
        dns = [d for d in self.config.dns.values()
               if d.type is DnType.VOIP_SERVICE and d.service_type == "msml" and d.contact]
        dns.sort(key=lambda d: (d.geo_location != geo, d.number))
        uris = []
        for dn in dns:
            contact = str(dn.contact)
            if contact.startswith("sip:"):
                contact = contact[4:]
            hostport, _, params = contact.partition(";")
            uri = f"sip:{user}@{hostport}" + (f";{params}" if params else "")
            if play:
                uri += f";play={play}"
            uris.append(uri)
        return uris

    def _treatment_refused(self, conn: TLibConnection, request: RequestReceived | int,
                           rp: str, conn_id: str, kind: str, code: ErrorCode, text: str,
                           notify: Call | None) -> None:
        reason = {ErrorCode.UNKNOWN_CONNID: "unknown_connid",
                  ErrorCode.INVALID_CALL_STATE: "not_at_routing_point",
                  ErrorCode.INVALID_ATTRIBUTE: "unknown_treatment",
                  }.get(code, "not_applied")
        self.m_treatments.labels(kind if kind in TREATMENT_USERS else "unknown", reason).inc()
        self.log.warning("treatment_refused", conn_id=conn_id, rp=rp, treatment=kind,
                         code=int(code), reason=text)
        conn.answer_error(request, code, text, AttributeThisDN=rp, AttributeConnID=conn_id)
        if notify is not None and not notify.released:
            self._event(notify, "EventTreatmentNotApplied", Leg(notify, rp, rp, True),
                        role="Destination",
                        extra={"AttributeTreatmentType": kind, "AttributeErrorCode": int(code),
                               "AttributeErrorMessage": text})

    # ------------------------------------------------------------------ playing

    async def _play(self, conn: TLibConnection, request: RequestReceived,
                    treatment: Treatment, caller: Leg, uris: list[str]) -> None:
        call, rp, kind = treatment.call, treatment.routing_point, treatment.treatment_type
        resp: Response | None = None
        failures: list[str] = []
        for uri in uris:
            resp = await self._invite_media_server(treatment, caller, uri)
            if treatment.stopped or resp is None:
                break
            if 200 <= resp.status < 300:
                break
            failures.append(f"{uri}: {resp.status} {resp.reason}")
            self.log.info("treatment_media_server_failed", conn_id=call.conn_id, uri=uri,
                          status=resp.status)
            resp = None
        if treatment.stopped or resp is None or not caller.alive:
            self._restore(treatment)
            if treatment.stopped and not failures:
                self._treatment_refused(conn, request.reference_id, rp, call.conn_id, kind,
                                        ErrorCode.INVALID_CALL_STATE,
                                        "Invalid call state: the call left the routing point",
                                        notify=None)
            else:
                self._treatment_refused(conn, request.reference_id, rp, call.conn_id, kind,
                                        ErrorCode.TREATMENT_NOT_APPLIED,
                                        "Treatment not applied: "
                                        + ("; ".join(failures) or "no media server answered"),
                                        notify=call)
            return
        media_sdp = resp.body
        if caller.incoming is not None and not caller.incoming.final_sent:
            sent = self._answer_caller(caller, media_sdp)
        else:
            sent = await self._reoffer_caller(caller, media_sdp)
        if sent is None or treatment.stopped or self.server.routing.waiting(call.conn_id) != rp:
            self._restore(treatment)
            self._treatment_refused(conn, request.reference_id, rp, call.conn_id, kind,
                                    ErrorCode.INVALID_CALL_STATE,
                                    "Invalid call state: the caller did not take the "
                                    "treatment's media" if sent is None else
                                    "Invalid call state: the call left the routing point",
                                    notify=None)
            return
        treatment.playing = True
        previous, treatment.previous = treatment.previous, None
        if previous is not None:
            self.m_treatments.labels(previous.treatment_type, "replaced").inc()
            self._stop(previous)
        self.m_treatments.labels(kind, "applied").inc()
        self.log.info("treatment_applied", conn_id=call.conn_id, rp=rp, treatment=kind,
                      uri=treatment.uri)
        self.server.expect_answer(conn, request, rp, call.conn_id,
                                  frozenset({"EventTreatmentApplied"}))
        self._event(call, "EventTreatmentApplied", Leg(call, rp, rp, True),
                    other=caller.number, role="Destination",
                    extra={"AttributeTreatmentType": kind,
                           "AttributeTreatmentParms": treatment.parms})

    async def _invite_media_server(self, treatment: Treatment, caller: Leg, uri: str
                                   ) -> Response | None:
        """The treatment's INVITE (the caller's offer) to one media server; its final
        response, the media server's leg confirmed and ACKed when 2xx."""
        call = treatment.call
        leg = treatment.leg = Leg(call, None, "treatment", True)
        hop = self._destination(uri)
        user = uri[4:].split("@", 1)[0]
        try:
            invite = self._new_invite(leg, uri, caller.number, user, caller.sdp, hop=hop)
        except (SipError, ValueError) as exc:
            self.log.warning("treatment_uri_refused", conn_id=call.conn_id, uri=uri,
                             reason=str(exc))
            return None
        # not a party: the media server's BYE must not end the call (treatment_bye)
        key = (leg.call_id, leg.local_tag)
        self.legs.pop(key, None)
        self.treatment_legs[key] = treatment
        treatment.uri = uri
        try:
            resp, _ = await self._dial(call, leg, invite, TREATMENT_INVITE_TIMEOUT, None, hop)
        except (SipError, OSError) as exc:
            self.treatment_legs.pop(key, None)
            self._drop_leg(leg)
            return _failed(invite, str(exc))
        if not 200 <= resp.status < 300:
            self.treatment_legs.pop(key, None)
            self._drop_leg(leg)
            return resp
        invite = leg.invite or invite  # the INVITE answered (a 422 retry, RFC 4028)
        try:
            leg.dialog = Dialog.create_uac(invite, resp)
        except (DialogError, ParseError):
            leg.dialog = None
        leg.sdp = resp.body
        await self._ack(invite, resp)
        leg.move(LegState.ESTABLISHED)
        if treatment.stopped:
            self._stop(treatment)
        return resp

    def _answer_caller(self, caller: Leg, sdp: bytes) -> Response | None:
        """The first treatment: the caller's INVITE answered with the media server's SDP."""
        inc: IncomingRequest = caller.incoming
        flow = inc.flow
        headers = [*[("Record-Route", v) for v in inc.request.headers.get_lines("Record-Route")],
                   ("Contact", self._contact(flow.transport, flow.remote[0])),
                   ("Allow", ALLOW), ("Content-Type", "application/sdp")]
        sent = inc.respond(200, headers=headers, body=sdp)
        if sent is None:
            return None
        try:
            caller.dialog = Dialog.create_uas(inc.request, sent)
        except (DialogError, ParseError) as exc:
            self.log.warning("call_dialog_failed", conn_id=caller.call.conn_id, reason=str(exc))
            return None
        caller.move(LegState.ESTABLISHED)
        self._caller_sdp[caller.call.conn_id] = sdp
        return sent

    async def _reoffer_caller(self, caller: Leg, sdp: bytes, *, routed: bool = False
                              ) -> Response | None:
        """New media for an answered caller: re-INVITE offering ``sdp`` (RFC 3264 §8);
        the 2xx (ACKed) or None when the caller refused or is gone. ``routed``: the
        agent's answer, the end of the treatments."""
        dialog = caller.dialog
        conn_id = caller.call.conn_id
        if dialog is None or not caller.alive:
            return None
        offer = continue_origin(self._caller_sdp.get(conn_id, b""), sdp)
        # RFC 4028: a session refresh of the caller's leg; the treatments' answers had no
        # session timer (a caller's refresh has no party to go to while one plays), so
        # the re-INVITE of the routed call asks for one with the node's interval (after
        # the caller's 422, with its Min-SE)
        starts = routed and not self._timer_running(caller)
        headers = [("Contact", self._contact()), ("Allow", ALLOW),
                   ("Content-Type", "application/sdp")]
        try:
            out, resp = await self._session_request(caller, "INVITE", headers, offer,
                                                    offer_timer=starts)
        except (SipError, OSError, DialogError) as exc:
            self.log.info("treatment_reinvite_failed", conn_id=conn_id, reason=str(exc))
            return None
        if not 200 <= resp.status < 300:
            self.log.info("treatment_reinvite_refused", conn_id=conn_id, status=resp.status)
            return None
        await self._ack(out, resp)
        if starts:
            self._start_callee_timer(caller, resp)
        self._caller_sdp[conn_id] = offer
        return resp

    def _restore(self, treatment: Treatment) -> None:
        """A treatment that did not get to play: stopped; the one before it plays on."""
        if self.treatments.get(treatment.call.conn_id) is treatment:
            if treatment.previous is not None and not treatment.previous.stopped:
                self.treatments[treatment.call.conn_id] = treatment.previous
            else:
                del self.treatments[treatment.call.conn_id]
        treatment.previous = None
        self._stop(treatment)

    def _stop(self, treatment: Treatment) -> None:
        """End a treatment leg: BYE when confirmed, CANCEL while its INVITE is pending."""
        treatment.stopped = True
        leg = treatment.leg
        self.treatment_legs.pop((leg.call_id, leg.local_tag), None)
        if not leg.alive:
            return
        if leg.connected and leg.dialog is not None:
            self._spawn(self._send_in_dialog(leg, "BYE"))
        elif leg.invite is not None:
            leg.abandoned = True  # a 2xx that crosses the CANCEL gets ACK + BYE
            self.ep.cancel(leg.invite)
        self._drop_leg(leg)

    # ------------------------------------------------------------------ hooks

    def _treated(self, call: Call) -> bool:
        """Whether the caller was answered for a treatment (its media changes by re-INVITE)."""
        return call.conn_id in self._caller_sdp

    async def _leave_treatment(self, call: Call, caller: Leg, leg_b: Leg | None,
                               result: Response | int) -> None:
        """The routed call's outcome for a caller answered by a treatment (module doc):
        the treatment leg ends; the agent's answer reaches the caller by re-INVITE, or
        the caller gets BYE when the call went nowhere."""
        treatment = self.treatments.pop(call.conn_id, None)
        for each in treatment.all() if treatment is not None else ():
            self.m_treatments.labels(each.treatment_type, "routed").inc()
            self._stop(each)
        ok = leg_b is not None and isinstance(result, Response) and 200 <= result.status < 300
        if ok and not caller.alive:
            assert leg_b is not None and isinstance(result, Response)
            leg_b.abandoned = True
            self._late_final(leg_b, done_future(result))
            self._release(leg_b)
            return
        if not ok:
            if caller.alive:
                self.log.info("treated_call_not_routed", conn_id=call.conn_id,
                              status=result if isinstance(result, int) else result.status)
                self._hangup(caller, remote=False)
            return
        assert leg_b is not None and isinstance(result, Response) and leg_b.invite is not None
        leg_b.sdp = result.body
        try:
            leg_b.dialog = Dialog.create_uac(leg_b.invite, result)
        except (DialogError, ParseError):
            leg_b.dialog = None
        await self._ack(leg_b.invite, result)
        answer = await self._reoffer_caller(caller, result.body, routed=True)
        if answer is None:
            if caller.alive:
                self._hangup(caller, remote=False)
            elif leg_b.alive:
                self._hangup(leg_b, remote=False)
            return
        caller.sdp = answer.body
        leg_b.move(LegState.ESTABLISHED)
        call.move(CallState.CONNECTED)
        self._start_callee_timer(leg_b, result)
        self._caller_sdp.pop(call.conn_id, None)
        self.log.info("call_established", conn_id=call.conn_id, caller=caller.number,
                      callee=leg_b.number, after="treatment")
        self._event(call, "EventEstablished", leg_b, other=caller.number)
        self._event(call, "EventEstablished", caller, other=leg_b.number)
        caller.settle()
        leg_b.settle()

    def _treatment_bye(self, inc: IncomingRequest) -> Response | None:
        """BYE from a media server (an announcement played through): the treatment
        ends, the call keeps waiting; None when the BYE is not for a treatment leg."""
        request = inc.request
        treatment = self.treatment_legs.pop((request.call_id, request.to.tag or ""), None)
        if treatment is None:
            return None
        leg = treatment.leg
        if leg.dialog is not None:
            leg.dialog.terminate()
        self._drop_leg(leg)
        treatment.stopped = True
        call = treatment.call
        current = self.treatments.get(call.conn_id)
        if current is not None and current.previous is treatment:
            current.previous = None  # a new treatment is being set up: it follows
        elif current is treatment:
            del self.treatments[call.conn_id]
            self.m_treatments.labels(treatment.treatment_type, "ended").inc()
            self.log.info("treatment_ended", conn_id=call.conn_id, rp=treatment.routing_point,
                          treatment=treatment.treatment_type)
            if not call.released:
                self._event(call, "EventTreatmentEnd", Leg(call, treatment.routing_point,
                                                            treatment.routing_point, True),
                            role="Destination",
                            extra={"AttributeTreatmentType": treatment.treatment_type,
                                   "AttributeTreatmentParms": treatment.parms})
        return inc.response(200)

    def _finish(self, call: Call, outcome: str) -> None:
        """A call that ends takes its treatment leg with it."""
        treatment = self.treatments.pop(call.conn_id, None)
        self._caller_sdp.pop(call.conn_id, None)
        for each in treatment.all() if treatment is not None else ():
            self.m_treatments.labels(each.treatment_type, "abandoned").inc()
            self.log.info("treatment_released", conn_id=call.conn_id,
                          rp=each.routing_point, treatment=each.treatment_type,
                          outcome=outcome)
            self._stop(each)
        super()._finish(call, outcome)


def _failed(invite: Request, reason: str) -> Response:
    return make_response(invite, 503, reason[:60] or "Service Unavailable")
