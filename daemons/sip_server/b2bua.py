"""The Session Controller of one node: registrar and back-to-back user agent
(guide: "SIP Server in Cluster Mode", "Session Controller"; docs/node.md).

:class:`SessionController` joins the concerns, each in its own module:
REGISTER and digest (:mod:`registration`), reaching a DN (:mod:`dialing`),
the basic call (:mod:`basic_call`), REFER and consultation transfer
(:mod:`transfer`), attended transfer by REFER with Replaces
(:mod:`attended`), third-party call control from T-Library
(:mod:`third_party`), INFO and UPDATE relayed end to end (:mod:`relay`),
stuck calls found and cleared (:mod:`cleanup`).
It starts and stops the SIP endpoint (and the watch on
the primary of an HA pair), dispatches SIP requests by method and T-Library
call-control requests by name. It talks to the sip-server daemon only through
:class:`ControllerHost`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from daemons.runtime.dns import SipResolver
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.attended import AttendedTransfer
from daemons.sip_server.basic_call import BasicCall
from daemons.sip_server.call import LegState
from daemons.sip_server.cleanup import CallCleanup
from daemons.sip_server.dialplan_client import DialPlanClient, dial_plan_urls
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
        return number in self.config.dns

    def status_calls(self) -> list[dict[str, Any]]:
        return [{"conn_id": c.conn_id, "state": c.state.value, "ani": c.ani, "dnis": c.dnis,
                 "legs": [{"number": leg.number, "state": leg.state.value}
                          for leg in c.legs]}
                for c in self.calls.values()]

    async def handle(self, inc: IncomingRequest) -> Response | None:
        method = inc.method
        try:
            if method == "REGISTER":
                return self._register(inc)
            if method == "INVITE":
                if inc.request.to.tag:
                    return await self._reinvite(inc)
                if inc.request.headers.get("Replaces") is not None:
                    return await self._invite_replaces(inc)  # RFC 3891
                return await self._invite(inc)
            if method == "ACK":
                self._ack_received(inc)
                return None
            if method == "BYE":
                return self._bye(inc)
            if method == "OPTIONS":
                if self.standby:
                    return inc.response(503, "Standby", headers=[("Retry-After", "5")])
                return inc.response(200, headers=[("Allow", ALLOW),
                                                  ("Accept", "application/sdp")])
            if method == "REFER":
                return self._refer(inc)
            if method in ("INFO", "UPDATE"):
                return await self._relay(inc)  # to the other party (RFC 6086, RFC 3311)
            if method in ("NOTIFY", "MESSAGE"):
                leg = self._leg_for(inc.request)
                if leg is None:
                    return self._refuse(inc, 481)
                return inc.response(200)
            if method in ("SUBSCRIBE", "PUBLISH", "PRACK"):
                return self._refuse(inc, 405, headers=[("Allow", ALLOW)])
            return self._refuse(inc, 501)
        except ParseError as exc:
            return self._refuse(inc, exc.status, exc.reason)

    def call_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        """Carry out one call-control request (docs/node.md); raise CallControlError."""
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
        if name in ("RequestAttachUserData", "RequestUpdateUserData",
                    "RequestDeleteUserData"):
            self._user_data(conn, request, call, dn)
            return
        if leg is None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {dn} is not in call {conn_id}")
        if name == "RequestReleaseCall":
            self.server.expect_answer(conn, request, dn, conn_id, frozenset({"EventReleased"}))
            self._hangup(leg, remote=False)
        elif name == "RequestAnswerCall":
            self._cti_notify(conn, request, leg, "talk", LegState.RINGING,
                             "EventEstablished", "remote answer")
        elif name == "RequestHoldCall":
            self._cti_notify(conn, request, leg, "hold", LegState.ESTABLISHED,
                             "EventHeld", "remote hold")
        elif name == "RequestRetrieveCall" and leg.held_by_node:
            self._retrieve_held(conn, request, call, leg)
        elif name == "RequestRetrieveCall":
            self._cti_notify(conn, request, leg, "talk", LegState.HELD,
                             "EventRetrieved", "remote retrieve")
        elif name == "RequestInitiateTransfer":
            self._initiate_transfer(conn, request, call, leg, msg["AttributeOtherDN"])
        elif name == "RequestCompleteTransfer":
            self._complete_transfer(conn, request, call, leg, msg["AttributeTransferConnID"])
        elif name == "RequestSingleStepTransfer":
            target: str = msg["AttributeOtherDN"]
            other = call.other(leg)
            if not leg.connected or other is None or not other.connected:
                raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                       f"Invalid call state: DN {dn} is not talking")
            if target not in self.config.dns:
                raise CallControlError(ErrorCode.UNKNOWN_DN, f"Unknown DN: {target}")
            self.server.expect_answer(conn, request, dn, conn_id, frozenset({"EventReleased"}))
            self._spawn(self._transfer(call, leg, target, via_refer=False))
        else:
            raise CallControlError(ErrorCode.REQUEST_NOT_SUPPORTED,
                                   f"Request not supported: {name}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
