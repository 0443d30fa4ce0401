"""Third-party call control of phones from T-Library (RFC 3725; guide:
"Session Controller"; docs/node.md).

RequestMakeCall uses flow I (§4.1): INVITE the agent's phone without SDP,
send its offer to the destination in a second INVITE, and return the
destination's answer in the ACK to the phone. RequestAnswerCall /
RequestHoldCall / RequestRetrieveCall send ``NOTIFY`` with ``Event: talk`` /
``hold`` (the BroadSoft / Polycom convention) to phones whose
``sip-cti-control`` allows it. RequestAttachUserData / RequestUpdateUserData /
RequestDeleteUserData change the call's user data.
"""

from __future__ import annotations

from typing import Any

from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.call import Call, CallState, Leg, LegState
from daemons.sip_server.dialing import Dialing
from daemons.sip_server.outbound import NODE_HEADER
from daemons.sip_server.session import CallControlError
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import ParseError
from protocols.sip.message import Response
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

__all__ = ["ThirdPartyCallControl"]


class ThirdPartyCallControl(Dialing):
    """RequestMakeCall, CTI answer / hold / retrieve, user data."""

    def _user_data(self, conn: TLibConnection, request: RequestReceived, call: Call,
                   dn: str) -> None:
        msg = request.message
        if request.name == "RequestDeleteUserData":
            key = msg.get("AttributeKey")
            if key is None:
                call.user_data.clear()
            else:
                call.user_data.pop(key, None)
        elif request.name == "RequestAttachUserData":
            for key, value in msg["AttributeUserData"].items():
                call.user_data.setdefault(key, value)
        else:
            call.user_data.update(msg["AttributeUserData"])
        self.server.expect_answer(conn, request, dn, call.conn_id,
                                  frozenset({"EventAttachedDataChanged"}))
        self.server.call_event(call, "EventAttachedDataChanged", dn)

    def _early_dialog(self, leg: Leg) -> Dialog | None:
        """The early dialog of a ringing leg (RFC 3261 §12.1.2), from its first 1xx
        with a To tag; built on first use (only CTI answer needs it)."""
        if leg.early_dialog is None and leg.early_response is not None \
                and leg.invite is not None:
            try:
                leg.early_dialog = Dialog.create_uac(leg.invite, leg.early_response)
            except (DialogError, ParseError):
                leg.early_response = None
        return leg.early_dialog

    def _cti_notify(self, conn: TLibConnection, request: RequestReceived, leg: Leg,
                    event: str, needed: LegState, answer: str, what: str) -> None:
        dn = leg.number
        if event not in leg.cti:
            raise CallControlError(
                ErrorCode.REQUEST_NOT_SUPPORTED,
                f"The phone of DN {dn} does not support {what} (sip-cti-control "
                f"has no '{event}')")
        if leg.state is not needed:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {dn} is {leg.state.value}")
        dialog = leg.dialog if leg.state is not LegState.RINGING else self._early_dialog(leg)
        if dialog is None or (leg.state is LegState.RINGING and not leg.outbound):
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: no dialog with the phone of DN {dn}")
        self.server.expect_answer(conn, request, dn, leg.call.conn_id, frozenset({answer}))

        async def notify() -> None:
            resp = await self._send_in_dialog(leg, "NOTIFY", dialog=dialog, headers=[
                ("Event", event), ("Subscription-State", "terminated"),
                ("Contact", self._contact())])
            if resp.status >= 300:
                self.server.fail_pending(
                    leg.call.conn_id, dn, ErrorCode.REQUEST_NOT_SUPPORTED,
                    f"The phone of DN {dn} refused {what}: {resp.status} {resp.reason}")
        self._spawn(notify())

    def _make_call(self, conn: TLibConnection, request: RequestReceived, dn: str, dest: str,
                   user_data: dict[str, Any] | None) -> None:
        if self._agent_dn(dn) is None:
            raise CallControlError(ErrorCode.UNKNOWN_DN,
                                   f"Unknown DN: {dn} is not an extension")
        if not self._reachable_here(dn):
            raise CallControlError(ErrorCode.DN_OUT_OF_SERVICE,
                                   f"DN out of service: {dn} has no registered phone")
        call = self._new_call(dn, dest, dn)
        if user_data:
            call.user_data.update(user_data)
        leg_a = call.add_leg(dn, dn, outbound=True, cti=self._cti(dn))
        # answered by EventDialing once the phone took the call and the node dials
        # the destination, or by EventError when the phone refuses (docs/node.md)
        self.server.expect_answer(conn, request, dn, call.conn_id, frozenset({"EventDialing"}))
        self._spawn(self._make_call_flow(call, leg_a, dest))

    def _make_call_failed(self, call: Call, leg_a: Leg, code: ErrorCode, text: str,
                          outcome: str) -> None:
        leg_a.move(LegState.RELEASED)
        self.legs.pop((leg_a.call_id, leg_a.local_tag), None)
        self.server.fail_pending(call.conn_id, leg_a.number, code, text)
        self._finish(call, outcome)

    async def _make_call_flow(self, call: Call, leg_a: Leg, dest: str) -> None:
        """RFC 3725 flow I (§4.1): phone first, without SDP; its offer to ``dest``.

        The phone is reached like the destination of an inbound call
        (:meth:`_locate`): through its binding's Path when it registered
        through this node, else through the SIP Proxies, which hold every
        binding of the cluster. EventDialing on the origination DN comes when
        the call really dials: the phone answered and the INVITE to ``dest``
        goes out. A phone that does not answer makes no call at all: the
        request gets EventError; a DN the proxies find registered nowhere
        (404 / 480 from them) gets EventError "DN out of service"."""
        located = await self._locate(call, leg_a.number)
        if located is None:
            self._make_call_failed(
                call, leg_a, ErrorCode.DN_OUT_OF_SERVICE,
                f"DN out of service: {leg_a.number} has no registered phone", "failed_480")
            return
        contact, path, hop = located
        extra = [("Call-Info", f"<sip:{self.server.host}>;answer-after=0")] \
            if "talk" in leg_a.cti else []
        if hop is not None:
            extra.append((NODE_HEADER, self.server.app_name))  # pins the dialog here
        invite_a = self._new_invite(leg_a, contact, dest, leg_a.number, b"", path, extra, hop)
        resp_a, _ = await self._dial(call, leg_a, invite_a, self.tserver.extn_no_answer_timeout,
                                     None, hop)
        invite_a = leg_a.invite or invite_a  # the INVITE answered (a 422 retry, RFC 4028)
        if resp_a.status >= 300 or not leg_a.alive:
            if leg_a.alive:
                if hop is not None and resp_a.status in (404, 480):
                    code, text = (ErrorCode.DN_OUT_OF_SERVICE,
                                  f"DN out of service: {leg_a.number} is registered nowhere "
                                  f"in the cluster ({resp_a.status} {resp_a.reason})")
                else:
                    code, text = (ErrorCode.INVALID_CALL_STATE,
                                  f"The phone of DN {leg_a.number} did not take the call: "
                                  f"{resp_a.status} {resp_a.reason}")
                self._make_call_failed(call, leg_a, code, text, f"failed_{resp_a.status}")
            return
        try:
            leg_a.dialog = Dialog.create_uac(invite_a, resp_a)
        except (DialogError, ParseError):
            leg_a.dialog = None
        self._start_callee_timer(leg_a, resp_a)  # RFC 4028 on the phone's leg
        leg_a.sdp = resp_a.body
        leg_a.move(LegState.ESTABLISHED)
        self._event(call, "EventDialing", leg_a, other=dest, role="Origination")

        def ringing(leg: Leg, resp: Response, first: bool) -> None:
            if first:
                self._event(call, "EventRinging", leg, other=leg_a.number)

        leg_b, result = await self._reach(call, leg_a, dest, resp_a.body, ringing)
        if leg_b is None or not isinstance(result, Response) or result.status >= 300:
            await self._ack(invite_a, resp_a)
            if leg_a.alive:
                self._hangup(leg_a, remote=False)
            return
        resp_b = result
        assert leg_b.invite is not None
        try:
            leg_b.dialog = Dialog.create_uac(leg_b.invite, resp_b)
        except (DialogError, ParseError):
            leg_b.dialog = None
        await self._ack(leg_b.invite, resp_b)
        await self._ack(invite_a, resp_a, resp_b.body)
        leg_b.sdp = resp_b.body
        if leg_a.state is LegState.RELEASED:  # released (T-Library) while the target rang
            self._end_leg(leg_b)
            self._finish(call, "released")
            return
        leg_b.move(LegState.ESTABLISHED)
        call.move(CallState.CONNECTED)
        self._start_callee_timer(leg_b, resp_b)
        self._event(call, "EventEstablished", leg_b, other=leg_a.number)
        self._event(call, "EventEstablished", leg_a, other=leg_b.number, role="Origination")
