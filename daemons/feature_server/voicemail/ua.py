"""The SIP user agent of voicemail: requests dispatched by method (one table).

INVITE reaches a mailbox in one of these forms (docs/feature-server.md):

* ``sip:{mailbox}@fs;vm=deposit`` — busy / no-answer forwarding by the
  sip-server (From is the original caller);
* ``sip:{mailbox}@fs;vm=retrieve`` — the access number dialled by the
  mailbox's owner;
* ``sip:{access-number}@fs`` — retrieval, the mailbox is the From user;
* ``sip:{mailbox}@fs`` with Diversion or History-Info, or plain — deposit.

The offer is answered with PCMU or PCMA (RFC 3264); a malformed offer gets
400, one without PCMU/PCMA 488, an unknown mailbox 404, a full one 486. BYE,
INFO (DTMF fallback: ``application/dtmf-relay`` and ``application/dtmf``) and
re-INVITE work within the call; SUBSCRIBE goes to the MWI notifier.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from daemons.feature_server.voicemail.call import VoicemailCall
from daemons.feature_server.voicemail.ivr import Mode
from daemons.feature_server.voicemail.mwi import record_route
from daemons.runtime.rtp import open_rtp_session
from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.runtime.sip_transport import TransportError
from protocols.rtp.telephone_event import DIGITS
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import SipError
from protocols.sip.message import Response
from protocols.sip.sdp import NotAcceptable, SdpError, answer_audio, parse_sdp

if TYPE_CHECKING:
    from daemons.feature_server.voicemail.service import VoicemailService

__all__ = ["ALLOW", "VoicemailUserAgent"]

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, SUBSCRIBE"

Handler = Callable[["VoicemailUserAgent", IncomingRequest], Awaitable[Response | None]]


def info_digit(content_type: str, body: bytes) -> str | None:
    """The key of a SIP INFO DTMF body, None when there is none."""
    text = body.decode("utf-8", "replace").strip()
    if content_type == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                text = value.strip()
                break
        else:
            return None
    if len(text) == 1 and text.upper() in DIGITS:
        return text.upper()
    return None


class VoicemailUserAgent:
    """The voicemail service's SIP requests (see module doc)."""

    def __init__(self, service: VoicemailService) -> None:
        self.service = service
        self.calls: dict[str, VoicemailCall] = {}

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        handler = HANDLERS.get(incoming.method)
        if handler is None:
            return incoming.response(405, headers=[("Allow", ALLOW)])
        return await handler(self, incoming)

    def _refuse(self, incoming: IncomingRequest, status: int, reason: str,
                *, headers: list[tuple[str, str]] | None = None, **log: Any) -> Response:
        self.service.refused.labels(reason).inc()
        self.service.log.info("voicemail_call_refused", status=status, why=reason,
                              call_id=incoming.request.call_id, **log)
        return incoming.response(status, headers=headers or [])

    # ---------------------------------------------------------------- INVITE
    def classify(self, incoming: IncomingRequest) -> tuple[Mode, str]:
        request = incoming.request
        uri = request.ruri
        user = uri.user or ""
        vm = uri.params.get("vm")
        if vm == "deposit":
            return Mode.DEPOSIT, user
        if vm == "retrieve":
            return Mode.RETRIEVE, user
        if user == self.service.access_number:
            return Mode.RETRIEVE, request.from_.sip_uri.user or ""
        return Mode.DEPOSIT, user

    async def _invite(self, incoming: IncomingRequest) -> Response | None:
        request = incoming.request
        if request.to.tag:
            return self._reinvite(incoming)
        svc = self.service
        try:
            mode, number = self.classify(incoming)
        except SipError:
            return self._refuse(incoming, 400, "bad_uri")
        mailbox = await svc.store.get_mailbox(number) if number else None
        if mailbox is None:
            return self._refuse(incoming, 404, "no_mailbox", mailbox=number)
        if mode is Mode.RETRIEVE and svc.pin_guard.locked(number, asyncio.get_running_loop()
                                                          .time()):
            return self._refuse(incoming, 403, "mailbox_locked", mailbox=number)
        if mode is Mode.DEPOSIT:
            new, old = await svc.store.counts(number)
            if new + old >= mailbox.max_messages:
                return self._refuse(incoming, 486, "mailbox_full", mailbox=number)
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not request.body or content_type != "application/sdp":
            return self._refuse(incoming, 488, "no_offer", headers=[("Accept",
                                                                     "application/sdp")])
        try:
            offer = parse_sdp(request.body)
        except SdpError as exc:
            return self._refuse(incoming, 400, "malformed_sdp", detail=str(exc))
        try:
            rtp = await open_rtp_session(svc.host, svc.rtp_ports, svc.new_rtp_session)
        except OSError as exc:
            return self._refuse(incoming, 503, "no_rtp_port", detail=str(exc))
        try:
            answer = answer_audio(offer, address=svc.host, port=rtp.local_address[1],
                                  session_id=rtp.ssrc)
        except (NotAcceptable, SdpError) as exc:
            rtp.close()
            status = 488 if isinstance(exc, NotAcceptable) else 400
            return self._refuse(incoming, status,
                                "unknown_codec" if status == 488 else "malformed_sdp",
                                detail=str(exc), headers=[("Warning", '304 - "codecs"')]
                                if status == 488 else None)
        rtp.remote = (answer.remote_address, answer.remote_port)
        rtp.payload_type = answer.payload_type
        transport = incoming.flow.transport
        response = incoming.response(200, headers=[
            *record_route(request),
            ("Contact", f"<{svc.endpoint.contact_uri(transport, user=number)}>"),
            ("Allow", ALLOW), ("Content-Type", "application/sdp")],
            body=answer.sdp.serialize())
        try:
            dialog = Dialog.create_uas(request, response, transport=transport)
        except DialogError as exc:
            rtp.close()
            return self._refuse(incoming, 400, "no_dialog", detail=str(exc))
        messages = []
        if mode is Mode.RETRIEVE:
            messages = [m.id for m in await svc.store.list_messages(number)]
        if incoming.cancelled.is_set():
            rtp.close()
            return None
        caller = str(request.from_.sip_uri.user or request.from_.uri)
        call = VoicemailCall(svc, mode=mode, mailbox=mailbox, caller=caller, dialog=dialog,
                             rtp=rtp, answer=answer, transport=transport, messages=messages,
                             loop=asyncio.get_running_loop())
        self.calls[request.call_id] = call
        svc.calls_started.labels(mode.value).inc()
        call.log.info("voicemail_call_answered", caller=caller, codec=answer.codec,
                      dtmf="rfc4733" if answer.event_payload_type is not None else "info")
        call.start()
        return response

    def _reinvite(self, incoming: IncomingRequest) -> Response:
        """A new offer within the call (hold, resume, a new address; RFC 3264
        §8): answered with the call's codec and the next SDP version; without
        an offer, the current answer is offered again."""
        request = incoming.request
        call = self.calls.get(request.call_id)
        if call is None:
            return self._refuse(incoming, 481, "no_call")
        try:
            call.dialog.receive_request(request)
        except DialogError:
            return incoming.response(500)
        answer = call.answer
        if request.body:
            try:
                answer = answer_audio(
                    parse_sdp(request.body), address=self.service.host,
                    port=call.rtp.local_address[1], codecs=(call.answer.codec,),
                    session_id=call.answer.sdp.session_id,
                    version=call.answer.sdp.session_version + 1)
            except NotAcceptable as exc:
                return self._refuse(incoming, 488, "unknown_codec", detail=str(exc))
            except SdpError as exc:
                return self._refuse(incoming, 400, "malformed_sdp", detail=str(exc))
            call.update_media(answer)
        return incoming.response(200, headers=[
            *record_route(request),
            ("Contact", f"<{self.service.endpoint.contact_uri(call.transport)}>"),
            ("Content-Type", "application/sdp")], body=answer.sdp.serialize())

    # ---------------------------------------------------------------- in the call
    async def _ack(self, incoming: IncomingRequest) -> None:
        return None

    async def _bye(self, incoming: IncomingRequest) -> Response:
        call = self.calls.pop(incoming.request.call_id, None)
        if call is None:
            return self._refuse(incoming, 481, "no_call")
        call.log.info("voicemail_call_ended", by="caller")
        call.remote_hangup()
        return incoming.response(200)

    async def _info(self, incoming: IncomingRequest) -> Response:
        request = incoming.request
        call = self.calls.get(request.call_id)
        if call is None:
            return self._refuse(incoming, 481, "no_call")
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in ("application/dtmf-relay", "application/dtmf"):
            return incoming.response(415, headers=[
                ("Accept", "application/dtmf-relay, application/dtmf")])
        digit = info_digit(content_type, request.body)
        if digit is None:
            self.service.refused.labels("bad_info").inc()
            call.log.info("voicemail_bad_info", body=request.body[:40].decode("utf-8", "replace"))
            return incoming.response(400)
        if not call.info_digit(digit):
            call.log.warning("dtmf_flood", source="info")
            return incoming.response(403, "Too Many Digits")
        return incoming.response(200)

    async def _options(self, incoming: IncomingRequest) -> Response:
        return incoming.response(200, headers=[("Allow", ALLOW),
                                               ("Accept", "application/sdp")])

    async def _subscribe(self, incoming: IncomingRequest) -> Response:
        number = incoming.request.ruri.user or ""
        exists = bool(number) and await self.service.store.get_mailbox(number) is not None
        return await self.service.mwi.subscribe(incoming, exists)

    # ---------------------------------------------------------------- our hang-up
    async def hangup(self, call: VoicemailCall) -> None:
        """Send BYE for a call the menu ended."""
        self.calls.pop(call.dialog.id.call_id, None)
        call.close()
        call.log.info("voicemail_call_ended", by="voicemail")
        try:
            bye = call.dialog.create_request("BYE")
            await self.service.endpoint.request(bye)
        except (TransportError, DialogError, OSError) as exc:
            call.log.info("voicemail_bye_failed", reason=str(exc))

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await self.hangup(call)
            await call.finished()


HANDLERS: dict[str, Handler] = {
    "INVITE": VoicemailUserAgent._invite,
    "ACK": VoicemailUserAgent._ack,
    "BYE": VoicemailUserAgent._bye,
    "INFO": VoicemailUserAgent._info,
    "OPTIONS": VoicemailUserAgent._options,
    "SUBSCRIBE": VoicemailUserAgent._subscribe,
}

