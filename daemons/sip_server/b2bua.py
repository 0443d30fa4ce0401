"""The Session Controller of one node: registrar and back-to-back user agent
(guide: "SIP Server in Cluster Mode", "Session Controller"; docs/node.md).

:class:`SessionController` joins the concerns, each in its own module:
REGISTER and digest (:mod:`registration`), reaching a DN (:mod:`dialing`),
the basic call (:mod:`basic_call`), REFER and consultation transfer
(:mod:`transfer`), attended transfer by REFER with Replaces
(:mod:`attended`), third-party call control from T-Library
(:mod:`third_party`), INFO and UPDATE relayed end to end (:mod:`relay`),
reliable provisional responses and PRACK (:mod:`prack`), session timers
(:mod:`session_timer`), stuck calls found and cleared (:mod:`cleanup`).
It starts and stops the SIP endpoint (and the watch on
the primary of an HA pair), dispatches SIP requests by method and T-Library
call-control requests by name. It talks to the sip-server daemon only through
:class:`ControllerHost`.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from daemons.runtime.dns import SipResolver
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.attended import AttendedTransfer
from daemons.sip_server.basic_call import BasicCall
from daemons.sip_server.call import Call, Leg, LegState
from daemons.sip_server.cleanup import CallCleanup
from daemons.sip_server.dialplan_client import DialPlanClient, dial_plan_urls, is_dialable
from daemons.sip_server.outbound import OutboundProxies, PeerWatch, Trunks
from daemons.sip_server.relay import Relay
from daemons.sip_server.session import ALLOW, CallControlError
from daemons.sip_server.third_party import ThirdPartyCallControl
from protocols.sip.errors import ParseError
from protocols.sip.message import Response
from protocols.sip.oos import NodeState
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

__all__ = ["SessionController"]


class SessionController(BasicCall, AttendedTransfer, ThirdPartyCallControl, Relay,
                        CallCleanup):
    """Registrar + B2BUA of one node; call events go through ``server.call_event``."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> None:
        # RFC 3263 lookups leave from the node's address: a geo-aware DNS answers
        # with the proxies of the node's data centre first (docs/node.md)
        resolver = SipResolver(self.config.switch.dns_servers or None,
                               source=host if _is_ip(host) else None)
        self.endpoint = SipEndpoint(self.handle, metrics=self.server.metrics, logger=self.log,
                                    user_agent="sipcluster-sip-server", resolver=resolver)
        _, self.sip_port = await self.endpoint.listen_pair(host, port)
        self._expiry_task = asyncio.create_task(self._expire_loop())
        if self.tserver.periodic_check_tout > 0:
            self._cleanup_task = asyncio.create_task(self._cleanup_loop())
        proxy_dn = self.config.outbound_proxy
        if proxy_dn is not None:
            watch = PeerWatch(lambda: self.ep, name=self.server.app_name, host=host,
                              oos_check=float(proxy_dn.oos_check),
                              oos_force=float(proxy_dn.oos_force), log=self.log)
            self.outbound = OutboundProxies(proxy_dn.contact, resolver, watch, log=self.log)
            self.outbound.start()
        urls = dial_plan_urls(self.config, self.config.applications[self.server.app_name])
        if urls:
            self.dialplan = DialPlanClient(
                urls, geo_location=self.config.applications[self.server.app_name].geo_location,
                metrics=self.server.metrics, log=self.log)
        self.trunks = Trunks(self.config, self.server.app_name, lambda: self.ep, host=host,
                             log=self.log)
        self.trunks.start()
        primary = self.server.primary_name
        if primary is not None:
            # hot standby (guide: "Configuring SIP Servers"): answer OPTIONS with 503
            # while the primary answers, so the proxies route to the primary only
            p = self.config.applications[primary]
            check = float(proxy_dn.oos_check) if proxy_dn is not None else 5.0
            force = float(proxy_dn.oos_force) if proxy_dn is not None else 5.0
            self.ha_watch = PeerWatch(lambda: self.ep, name=self.server.app_name, host=host,
                                      oos_check=check, oos_force=force, log=self.log)
            self.ha_watch.watch([Destination("UDP", p.host, p.ports["sip-port"])])
            self._ha_task = asyncio.create_task(self._ha_loop())

    async def _ha_loop(self) -> None:
        assert self.ha_watch is not None
        loop = asyncio.get_running_loop()
        was = self.standby
        while True:
            await asyncio.sleep(self.ha_watch.step(loop.time()))
            if self.standby != was:
                was = self.standby
                self.log.warning("ha_role_changed", role="backup" if was else "primary",
                                 primary=self.server.primary_name)

    @property
    def standby(self) -> bool:
        """A backup whose primary is not known to be out of service stays standby."""
        if self.ha_watch is None:
            return False
        states = [h.state for h in self.ha_watch.monitor.nodes.values()]
        return any(s is not NodeState.OUT_OF_SERVICE for s in states)

    @property
    def listening(self) -> bool:
        return self.endpoint is not None and self.sip_port > 0

    async def stop(self) -> None:
        """End every call with BYE / CANCEL / 480, then close the sockets."""
        for call in list(self.calls.values()):
            for leg in call.live_legs():
                self._end_leg(leg)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
        if self.outbound is not None:
            await self.outbound.close()
        if self.trunks is not None:
            await self.trunks.close()
        if self.dialplan is not None:
            await self.dialplan.close()
        if self._ha_task is not None:
            self._ha_task.cancel()
        if self.ha_watch is not None:
            self.ha_watch.close()
        if self.endpoint is not None:
            await self.endpoint.close()

    # ------------------------------------------------------------------ dispatch

    def routable(self, number: str) -> bool:
        """Whether a router may send a call to ``number``: a DN of the switch, or,
        with a dial plan, an external number (routed like a dialled one)."""
        return number in self.config.dns or (self.dialplan is not None
                                             and is_dialable(number))

    def status_calls(self) -> list[dict[str, Any]]:
        return [{"conn_id": c.conn_id, "state": c.state.value, "ani": c.ani, "dnis": c.dnis,
                 "legs": [{"number": leg.number, "state": leg.state.value,
                           "session_timer": self._session_status(leg)}
                          for leg in c.legs]}
                for c in self.calls.values()]

    async def handle(self, inc: IncomingRequest) -> Response | None:
        """One SIP request, by method (:data:`SIP_METHODS`); 501 for others."""
        handler = SIP_METHODS.get(inc.method, SessionController._sip_not_implemented)
        try:
            answer = handler(self, inc)
            if inspect.isawaitable(answer):
                return await answer
            return answer
        except ParseError as exc:
            return self._refuse(inc, exc.status, exc.reason)

    def _sip_invite(self, inc: IncomingRequest) -> Awaitable[Response | None]:
        if inc.request.to.tag:
            return self._reinvite(inc)
        if inc.request.headers.get("Replaces") is not None:
            return self._invite_replaces(inc)  # RFC 3891
        return self._invite(inc)

    def _sip_ack(self, inc: IncomingRequest) -> None:
        self._ack_received(inc)

    def _sip_options(self, inc: IncomingRequest) -> Response:
        if self.standby:
            return inc.response(503, "Standby", headers=[("Retry-After", "5")])
        return inc.response(200, headers=[("Allow", ALLOW), ("Accept", "application/sdp")])

    def _sip_in_dialog(self, inc: IncomingRequest) -> Response:
        """NOTIFY, MESSAGE: 200 inside a call we hold, else 481."""
        if self._leg_for(inc.request) is None:
            return self._refuse(inc, 481)
        return inc.response(200)

    def _sip_not_allowed(self, inc: IncomingRequest) -> Response:
        return self._refuse(inc, 405, headers=[("Allow", ALLOW)])

    def _sip_not_implemented(self, inc: IncomingRequest) -> Response:
        return self._refuse(inc, 501)

    def call_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        """Carry out one call-control request (docs/node.md); raise CallControlError.

        RequestMakeCall needs no call; the user-data requests need the call;
        the others (:data:`CALL_REQUESTS`) a leg of ``AttributeThisDN`` in it.
        """
        name, msg = request.name, request.message
        dn: str = msg["AttributeThisDN"]
        if name == "RequestMakeCall":
            self._make_call(conn, request, dn, msg["AttributeOtherDN"],
                            msg.get("AttributeUserData"))
            return
        conn_id: str = msg["AttributeConnID"]
        call = self.calls.get(conn_id)
        if call is None:
            raise CallControlError(ErrorCode.UNKNOWN_CONNID, f"Unknown ConnID: {conn_id}")
        leg = call.leg_of(dn)
        if name in USER_DATA_REQUESTS:
            self._user_data(conn, request, call, dn)
            return
        if leg is None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {dn} is not in call {conn_id}")
        handler = CALL_REQUESTS.get(name)
        if handler is None:
            raise CallControlError(ErrorCode.REQUEST_NOT_SUPPORTED,
                                   f"Request not supported: {name}")
        handler(self, conn, request, call, leg)

    def _request_release(self, conn: TLibConnection, request: RequestReceived, call: Call,
                         leg: Leg) -> None:
        self.server.expect_answer(conn, request, request.message["AttributeThisDN"],
                                  call.conn_id, frozenset({"EventReleased"}))
        self._hangup(leg, remote=False)

    def _request_answer(self, conn: TLibConnection, request: RequestReceived, call: Call,
                        leg: Leg) -> None:
        self._cti_notify(conn, request, leg, "talk", LegState.RINGING,
                         "EventEstablished", "remote answer")

    def _request_hold(self, conn: TLibConnection, request: RequestReceived, call: Call,
                      leg: Leg) -> None:
        self._cti_notify(conn, request, leg, "hold", LegState.ESTABLISHED,
                         "EventHeld", "remote hold")

    def _request_retrieve(self, conn: TLibConnection, request: RequestReceived, call: Call,
                          leg: Leg) -> None:
        if leg.held_by_node:
            self._retrieve_held(conn, request, call, leg)
        else:
            self._cti_notify(conn, request, leg, "talk", LegState.HELD,
                             "EventRetrieved", "remote retrieve")

    def _request_initiate_transfer(self, conn: TLibConnection, request: RequestReceived,
                                   call: Call, leg: Leg) -> None:
        self._initiate_transfer(conn, request, call, leg, request.message["AttributeOtherDN"])

    def _request_complete_transfer(self, conn: TLibConnection, request: RequestReceived,
                                   call: Call, leg: Leg) -> None:
        self._complete_transfer(conn, request, call, leg,
                                request.message["AttributeTransferConnID"])

    def _request_single_step_transfer(self, conn: TLibConnection, request: RequestReceived,
                                      call: Call, leg: Leg) -> None:
        target: str = request.message["AttributeOtherDN"]
        other = call.other(leg)
        if not leg.connected or other is None or not other.connected:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {leg.dn} is not talking")
        if target not in self.config.dns:
            raise CallControlError(ErrorCode.UNKNOWN_DN, f"Unknown DN: {target}")
        self.server.expect_answer(conn, request, request.message["AttributeThisDN"],
                                  call.conn_id, frozenset({"EventReleased"}))
        self._spawn(self._transfer(call, leg, target, via_refer=False))


#: SIP requests by method (RFC 3261 §8.2.1: 405 for a method we know but do
#: not take, 501 for any other).
SIP_METHODS: dict[str, Callable[[SessionController, IncomingRequest],
                                Response | Awaitable[Response | None] | None]] = {
    "REGISTER": SessionController._register,
    "INVITE": SessionController._sip_invite,
    "ACK": SessionController._sip_ack,
    "BYE": SessionController._bye,
    "OPTIONS": SessionController._sip_options,
    "REFER": SessionController._refer,
    # carried to the other party (RFC 6086, RFC 3311)
    "INFO": SessionController._relay,
    "UPDATE": SessionController._relay,
    "NOTIFY": SessionController._sip_in_dialog,
    "MESSAGE": SessionController._sip_in_dialog,
    "SUBSCRIBE": SessionController._sip_not_allowed,
    "PUBLISH": SessionController._sip_not_allowed,
    "PRACK": SessionController._prack,  # RFC 3262
}

USER_DATA_REQUESTS = frozenset({"RequestAttachUserData", "RequestUpdateUserData",
                                "RequestDeleteUserData"})

#: T-Library call-control requests on a leg of a call, by message name.
CALL_REQUESTS: dict[str, Callable[[SessionController, TLibConnection, RequestReceived, Call,
                                   Leg], None]] = {
    "RequestReleaseCall": SessionController._request_release,
    "RequestAnswerCall": SessionController._request_answer,
    "RequestHoldCall": SessionController._request_hold,
    "RequestRetrieveCall": SessionController._request_retrieve,
    "RequestInitiateTransfer": SessionController._request_initiate_transfer,
    "RequestCompleteTransfer": SessionController._request_complete_transfer,
    "RequestSingleStepTransfer": SessionController._request_single_step_transfer,
}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
