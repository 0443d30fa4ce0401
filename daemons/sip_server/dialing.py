"""How the Session Controller reaches a DN (docs/node.md, "Reaching phones",
"Routing points") or anything else the dial plan knows (docs/feature-server.md).

An outgoing leg's INVITE, its provisional responses and no-answer timer
(``extn-`` / ``posn-no-answer-timeout``, then the ``-no-answer-overflow``
DNs), a 2xx that comes after the node gave up (ACK + BYE), routing points
(EventRouteRequest, ``router-timeout``, ``default-dn``), and where an agent
DN's phone is: its binding's Path (RFC 3327 §5.3), a fixed contact, or the
SIP Proxies. A number that is not a DN of the switch goes to the dial plan
(an extension, a routing point, a trunk, voicemail or a reject code); a busy
or unanswered DN is forwarded as its calling profile says.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable

from daemons.cluster.config import DnType
from daemons.runtime.sip_endpoint import Destination
from daemons.sip_server.call import Call, CallState, Leg, LegState
from daemons.sip_server.dialplan_client import DialPlanAnswer
from daemons.sip_server.outbound import NODE_HEADER, answered
from daemons.sip_server.prack import ReliableProvisionals
from daemons.sip_server.roaming import roam
from daemons.sip_server.routing import RouteDecision, route_extensions
from daemons.sip_server.session import AGENT_TYPES, ALLOW, Ringing
from daemons.sip_server.session_timer import SessionTimers
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.errors import ParseError
from protocols.sip.headers import Headers
from protocols.sip.message import Request, Response, make_response
from protocols.sip.uri import parse_uri

__all__ = ["Dialing", "done_future"]

#: DNs that are not parties: a call "to" one leaves through it (default-dn)
TRUNK_TYPES = (DnType.TRUNK, DnType.TRUNK_GROUP)
#: dial-plan answers one call may follow (a plan that maps A to B and B to A)
MAX_DIAL_PLAN_STEPS = 4
#: seconds between looks at a reservation a default routing waits for
RESERVATION_RECHECK = 1.0


class Dialing(ReliableProvisionals, SessionTimers):
    """Outgoing legs: reaching a DN for a call."""

    def _new_invite(self, leg: Leg, target: str, from_number: str, to_number: str,
                    body: bytes, path: Iterable[str] = (),
                    extra: Iterable[tuple[str, str]] = (),
                    hop: Destination | None = None) -> Request:
        call_id = secrets.token_hex(12) + "@" + self.server.host
        local_tag = secrets.token_hex(6)
        dest = hop or self._destination(target)
        if dest is not None:
            transport, host = dest.transport, dest.host
        else:
            uri = parse_uri(target)
            transport, host = (uri.params.get("transport") or "udp").upper(), uri.host
        headers = Headers()
        for route in path:
            headers.add("Route", f"<{route}>")
        headers.add("From", f"<sip:{from_number}@{self.domain}>;tag={local_tag}")
        headers.add("To", f"<sip:{to_number}@{self.domain}>")
        headers.add("Call-ID", call_id)
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self._contact(transport, host))
        headers.add("Allow", ALLOW)
        for name, value in self._extension_headers():  # 100rel, timer (RFC 3262, 4028)
            headers.add(name, value)
        for name, value in extra:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", "application/sdp")
        leg.call_id, leg.local_tag = call_id, local_tag
        self.legs[(call_id, local_tag)] = leg
        return Request("INVITE", target, headers=headers, body=body)

    async def _dial(self, call: Call, leg: Leg, invite: Request, timeout: float | None,
                    ringing: Ringing | None, hop: Destination | None = None
                    ) -> tuple[Response, bool]:
        """Send ``invite`` to ``leg``; the final response and whether no-answer fired.
        After a 422 retry (RFC 4028 §8.2) ``leg.invite`` is the INVITE answered."""
        leg.invite = invite

        def provisional(resp: Response) -> None:
            if not leg.alive or resp.status == 100:
                return
            if not self._reliable_in_order(leg, resp):
                return  # RFC 3262 §4: a reliable 18x repeated or out of order
            if resp.to.tag and leg.early_response is None:
                leg.early_response = resp  # its early dialog is built when needed
            first = leg.state is LegState.CALLING
            leg.move(LegState.RINGING)
            if call.state is CallState.SETUP:
                call.move(CallState.ALERTING)
            if ringing is not None:
                ringing(leg, resp, first)
            self._prack_unless_relayed(leg, resp)  # prack.py

        task = self._spawn(self._invite_final(leg, hop, provisional))
        task.add_done_callback(lambda t: self._late_final(leg, t))
        try:
            if timeout:
                return await asyncio.wait_for(asyncio.shield(task), timeout), False
            return await asyncio.shield(task), False
        except TimeoutError:
            leg.abandoned = True
            self.ep.cancel(leg.invite or invite)
            self.log.info("call_no_answer", conn_id=call.conn_id, dn=leg.dn, timeout=timeout)
            return make_response(invite, 480, "No Answer"), True

    async def _invite_final(self, leg: Leg, hop: Destination | None,
                            provisional: Callable[[Response], None] | None) -> Response:
        """The final response to ``leg.invite``; a callee's 422 gets the INVITE again
        with its Min-SE (RFC 4028 §8.2, :meth:`_invite_again`), ``leg.invite`` then
        being the retry."""
        tried: set[int] = set()
        while True:
            invite = leg.invite
            assert invite is not None
            resp = await self._request(invite, hop, on_provisional=provisional)
            if leg.abandoned or not leg.alive:
                return resp
            retry = self._invite_again(invite, resp, tried)
            if retry is None:
                return resp
            leg.early_response = None  # the retry's provisional responses make its own
            leg.invite = retry

    def _late_final(self, leg: Leg, task: asyncio.Future[Response]) -> None:
        """A 2xx for a leg the node gave up on (no answer, caller gone): ACK + BYE."""
        if task.cancelled() or task.exception() is not None:
            return
        resp = task.result()
        if not 200 <= resp.status < 300 or not leg.abandoned:
            return
        invite = leg.invite
        assert invite is not None

        async def ack_and_bye() -> None:
            await self._ack(invite, resp)
            try:
                dialog = Dialog.create_uac(invite, resp)
            except (DialogError, ParseError):
                return
            await self._send_in_dialog(leg, "BYE", dialog=dialog)
        self._spawn(ack_and_bye())

    async def _reach(self, call: Call, origin: Leg, dest: str, offer: bytes,
                     ringing: Ringing | None) -> tuple[Leg | None, Response | int]:
        """Reach ``dest`` for ``origin``: routing points, bindings, no-answer handling.

        Returns the answering leg and its 2xx, or ``None`` and the failure
        status (or the failing response).
        """
        tried: set[str] = set()
        forwarded_all: set[str] = set()  # DNs whose forward-all was asked for this call
        asked = 0
        while True:
            entry = self.config.dns.get(dest)
            if entry is None or entry.type in TRUNK_TYPES:
                # not a DN of ours: the dial plan says where it goes; a trunk named as
                # the destination (a default-dn) takes the call with its dialled number
                asked += 1
                if asked > MAX_DIAL_PLAN_STEPS:
                    self.log.warning("dial_plan_loop", conn_id=call.conn_id, dest=dest)
                    return None, 482
                if entry is not None:
                    return await self._via_trunk(call, origin, call.dnis, entry.number, offer,
                                                 ringing)
                roamed = await roam(self, call, origin, dest, dn_here=False)  # roaming.py
                if roamed is not None and roamed.dn is not None and roamed.dn not in tried:
                    dest = roamed.dn
                    continue
                if roamed is not None and roamed.trunk is not None:
                    return await self._via_trunk(call, origin, dest, roamed.trunk, offer,
                                                 ringing)
                step = await self._dial_plan(call, origin, dest, offer, ringing)
                if isinstance(step, str):
                    dest = step
                    continue
                return step
            if entry.type is DnType.ROUTING_POINT:
                if dest in call.visited_routing_points:
                    return None, 480
                target = await self._route(call, origin, dest)
                if target is None:
                    return None, 480
                dest = target
                continue
            if entry.type not in AGENT_TYPES:
                return None, 404
            if self.dialplan is not None and dest not in forwarded_all and origin.alive \
                    and self.dialplan.available():
                # the DN's calling profile may forward every call before it rings
                # (forward-all); a DN reached by forwarding is asked once per call.
                # While every feature-server failed lately the DN rings unasked.
                forwarded_all.add(dest)
                forwarded = await self._forward(call, origin, dest, "all", offer, ringing)
                if isinstance(forwarded, str):
                    if forwarded not in tried and forwarded != dest:
                        tried.add(dest)
                        dest = forwarded
                        continue
                elif forwarded is not None:
                    return forwarded
            if not self.registrar.bindings(dest, self._now()):
                # no phone here: its user may be logged on at another site (roaming.py)
                roamed = await roam(self, call, origin, dest, dn_here=True)
                if roamed is not None and roamed.trunk is not None:
                    return await self._via_trunk(call, origin, dest, roamed.trunk, offer,
                                                 ringing)
            located = await self._locate(call, dest)
            if located is None:
                fallback = self.server.routing.supervision.unreachable(
                    call.conn_id, dest, self.config, self.tserver, self.server.metrics)
                if fallback is not None and fallback not in tried and origin.alive:
                    self.log.warning("route_target_unreachable", conn_id=call.conn_id,
                                     dn=dest, to=fallback)
                    tried.add(dest)
                    dest = fallback  # no call lost: the routing point's default-dn
                    continue
                return None, 480
            contact, path, hop = located
            tried.add(dest)
            self.server.reserved.offered(dest)  # this call uses up a reservation of the agent
            leg = call.add_leg(dest, dest, outbound=True, cti=self._cti(dest))
            extra: list[tuple[str, str]] = []
            if hop is not None:
                extra.append((NODE_HEADER, self.server.app_name))  # pins the dialog here
            invite = self._new_invite(leg, contact, origin.number, dest, offer, path, extra,
                                      hop)
            timeout = (self.tserver.posn_no_answer_timeout
                       if entry.type is DnType.ACD_POSITION
                       else self.tserver.extn_no_answer_timeout)
            supervision = self.server.routing.supervision  # agent-no-answer-* of routed calls
            timeout = supervision.timeout(call.conn_id, dest, self.tserver, timeout)
            resp, no_answer = await self._dial(call, leg, invite, timeout, ringing, hop)
            if 200 <= resp.status < 300:
                return leg, resp
            rang = leg.state is LegState.RINGING
            nas = supervision.after(call.conn_id, dest, no_answer=no_answer, status=resp.status,
                                    options=self.tserver, tried=tried)
            if leg.alive:
                leg.move(LegState.RELEASED)
                self.legs.pop((leg.call_id, leg.local_tag), None)
                if rang or nas is not None:
                    self._event(call, "EventReleased", leg, other=origin.number,
                                extra={"AttributeReason": nas.reason} if nas else None)
            if nas is not None and nas.next_dn is not None and origin.alive:
                self.log.info("agent_no_answer", conn_id=call.conn_id, dn=dest, to=nas.next_dn,
                              **nas.reason)
                if call.state is CallState.ALERTING:
                    call.move(CallState.SETUP)
                if nas.recall and nas.next_dn in call.visited_routing_points:
                    call.visited_routing_points.remove(nas.next_dn)  # routed again
                dest = nas.next_dn
                continue
            overflow = next((d for d in self._overflow(entry.type) if d not in tried), None)
            if no_answer and overflow is not None and origin.alive:
                self.log.info("call_no_answer_overflow", conn_id=call.conn_id, to=overflow)
                if call.state is CallState.ALERTING:
                    call.move(CallState.SETUP)
                dest = overflow
                continue
            reason = "no-answer" if no_answer else "busy" if resp.status in (486, 600) else None
            if reason is not None and origin.alive and self.dialplan is not None:
                # the called DN's calling profile: forward-busy / forward-no-answer
                if call.state is CallState.ALERTING:
                    call.move(CallState.SETUP)
                forwarded = await self._forward(call, origin, dest, reason, offer, ringing)
                if isinstance(forwarded, str) and forwarded not in tried:
                    dest = forwarded
                    continue
                if isinstance(forwarded, tuple):
                    if forwarded[0] is not None:
                        return forwarded
                    # voicemail or the trunk refused too: the caller learns why the DN
                    # itself did not take the call
                    self.log.info("call_forward_failed", conn_id=call.conn_id, dn=dest,
                                  reason=reason, status=_status(forwarded[1]))
            return None, resp

    async def _dial_plan(self, call: Call, origin: Leg, dest: str, offer: bytes,
                         ringing: Ringing | None) -> str | tuple[Leg | None, Response | int]:
        """Ask the feature-server about ``dest`` and obey: a DN of the switch to reach
        next (returned as text), or the outcome of a trunk, voicemail or reject."""
        if self.dialplan is None:
            return None, 404
        trunk = group = None
        if origin.dn is None and origin.incoming is not None and self.trunks is not None:
            source = origin.incoming.flow.remote[0]
            came_in = self.trunks.by_address(source)
            trunk = came_in.name if came_in is not None else None
            came_in = self.trunks.by_address(source, DnType.TRUNK_GROUP)
            group = came_in.name if came_in is not None else None
        # the calling profiles of the objects the call passed: its trunk or trunk
        # group, the routing point that routed it (guide: "Calling profiles and
        # its associations"; the feature-server picks the most specific)
        answer = await self.dialplan.query(dest, caller=origin.number, trunk=trunk,
                                           trunk_group=group,
                                           routing_point=call.routing_point,
                                           conn_id=call.conn_id)
        if answer is None:
            return None, 503  # every feature-server down: logged and counted by the client
        if answer.action == "reject":
            return None, answer.code or 404
        if answer.action == "voicemail":
            mailbox = origin.dn or origin.number
            return await self._voicemail(call, origin, answer, mailbox, "retrieve", offer,
                                         ringing)
        if answer.action == "route" and answer.number:
            if answer.via:
                return await self._via_trunk(call, origin, answer.number, answer.via, offer,
                                             ringing)
            if answer.number != dest and answer.number in self.config.dns:
                return answer.number
        return None, 404

    async def _forward(self, call: Call, origin: Leg, dn: str, reason: str, offer: bytes,
                       ringing: Ringing | None) -> str | tuple[Leg | None, Response | int] | None:
        """Forwarding of ``dn`` per its calling profile on ``reason``: ``all`` (before
        it rings: forward-all), ``busy``, ``no-answer``. The next DN (text), the
        outcome of a voicemail, trunk call or reject, or None (nothing to do, or
        no feature-server answered: the DN rings as if it had no profile)."""
        assert self.dialplan is not None
        answer = await self.dialplan.query(dn, caller=origin.number, reason=reason,
                                           conn_id=call.conn_id)
        if answer is None or answer.action == "none":
            return None
        self.log.info("call_forwarded", conn_id=call.conn_id, dn=dn, reason=reason,
                      action=answer.action, to=answer.number)
        if answer.action == "voicemail":
            return await self._voicemail(call, origin, answer, dn, "deposit", offer, ringing)
        if answer.action == "reject":
            return None, answer.code or 486  # e.g. do-not-disturb as forward-all
        if answer.action == "route" and answer.number:
            if answer.via:
                return await self._via_trunk(call, origin, answer.number, answer.via, offer,
                                             ringing)
            if answer.number in self.config.dns:
                return answer.number
        return None

    async def _voicemail(self, call: Call, origin: Leg, answer: DialPlanAnswer, mailbox: str,
                         mode: str, offer: bytes, ringing: Ringing | None
                         ) -> tuple[Leg | None, Response | int]:
        """The call goes to the feature-server's voicemail: ``sip:MAILBOX@FS;vm=MODE``
        (deposit after busy / no-answer forwarding, retrieve at the access number);
        From keeps the original caller."""
        if not answer.sip:
            self.log.warning("voicemail_unavailable", conn_id=call.conn_id, mailbox=mailbox)
            return None, 503
        uri = f"sip:{mailbox}@{answer.sip};vm={mode}"
        dest = self._destination(uri)
        leg = call.add_leg(None, mailbox, outbound=True)
        invite = self._new_invite(leg, uri, origin.number, mailbox, offer, hop=dest)
        self.log.info("call_to_voicemail", conn_id=call.conn_id, mailbox=mailbox, mode=mode,
                      uri=uri)
        resp, _ = await self._dial(call, leg, invite, None, ringing, dest)
        if 200 <= resp.status < 300:
            return leg, resp
        self._drop_leg(leg)
        return None, resp

    async def _via_trunk(self, call: Call, origin: Leg, number: str, via: str, offer: bytes,
                         ringing: Ringing | None) -> tuple[Leg | None, Response | int]:
        """A call to an external ``number`` through the trunks (``via``: ``trunk`` or a
        Trunk / Trunk Group DN), in :meth:`Trunks.candidates` order: a trunk that
        does not answer (408) or fails (5xx) passes the call to the next one."""
        candidates = self.trunks.candidates(number, via) if self.trunks is not None else []
        if not candidates:
            self.log.warning("call_no_trunk", conn_id=call.conn_id, number=number, via=via)
            return None, 503
        last: Response | int = 503
        for trunk in candidates:
            if not origin.alive:
                return None, 487
            leg = call.add_leg(None, number, outbound=True)
            uri = trunk.uri(number)
            invite = self._new_invite(leg, uri, origin.number, number, offer,
                                      hop=trunk.destination)
            self.log.info("call_via_trunk", conn_id=call.conn_id, trunk=trunk.name,
                          number=number, geo_location=trunk.geo_location)
            resp, _ = await self._dial(call, leg, invite, None, ringing, trunk.destination)
            if 200 <= resp.status < 300:
                return leg, resp
            self._drop_leg(leg)
            last = resp
            if resp.status == 408 or resp.status >= 500 or not answered(resp):
                assert self.trunks is not None
                self.trunks.failed(trunk, resp.status, self._now())
                continue
            return None, resp
        return None, last

    def _drop_leg(self, leg: Leg) -> None:
        if leg.alive:
            leg.move(LegState.RELEASED)
        self.legs.pop((leg.call_id, leg.local_tag), None)

    def _reachable_here(self, dn: str) -> bool:
        """Whether :meth:`_locate` may find a way to ``dn``'s phone: a usable binding
        on this node, a fixed contact, or the SIP Proxies (docs/node.md, "Reaching
        phones")."""
        bindings = self.registrar.bindings(dn, self._now())
        if bindings and not self._path_down(bindings[0].path):
            return True
        entry = self.config.dns.get(dn)
        return entry is not None and (bool(entry.contact) or self.outbound is not None)

    async def _locate(self, call: Call, dn: str
                      ) -> tuple[str, tuple[str, ...], Destination | None] | None:
        """Where an INVITE to agent DN ``dn``'s phone goes (docs/node.md, "Reaching
        phones"): Request-URI, Route set (the binding's Path, RFC 3327 §5.3) and
        the SIP Proxy to send it to (None: resolve the Request-URI); None when the
        DN cannot be reached from this node."""
        entry = self.config.dns[dn]
        bindings = self.registrar.bindings(dn, self._now())
        if bindings and not self._path_down(bindings[0].path):
            # registered through this node: the Path (RFC 3327 §5.3) leads back
            return bindings[0].contact, bindings[0].path, None
        if entry.contact and entry.contact != "*":
            contact = entry.contact
            if not contact.startswith(("sip:", "sips:")):
                contact = f"sip:{dn}@{contact}"
            return contact, (), None
        if self.outbound is not None and (hop := await self.outbound.choose()):
            # registered through another node (or its proxy is down): the proxies
            # hold every binding of the cluster and deliver to the phone
            self.log.info("call_via_outbound_proxy", conn_id=call.conn_id, dn=dn,
                          proxy=f"{hop.host}:{hop.port}", transport=hop.transport)
            return f"sip:{dn}@{self.domain}", (), hop
        self.log.info("call_dn_unavailable", conn_id=call.conn_id, dn=dn)
        return None

    def _path_down(self, path: tuple[str, ...]) -> bool:
        """The first Path hop is a SIP Proxy known to be out of service."""
        if not path or self.outbound is None:
            return False
        try:
            first = parse_uri(path[0])
        except ParseError:
            return False
        return self.outbound.out_of_service(first.host, first.port or 5060)

    def _overflow(self, dn_type: DnType) -> tuple[str, ...]:
        """Where an unanswered call goes next (``extn-`` / ``posn-no-answer-overflow``)."""
        if dn_type is DnType.ACD_POSITION:
            return self.tserver.posn_no_answer_overflow
        return self.tserver.extn_no_answer_overflow

    async def _route(self, call: Call, origin: Leg, rp: str) -> str | None:
        """Wait on routing point ``rp`` (docs/node.md, "Routing points")."""
        call.routing_point = rp
        call.visited_routing_points.append(rp)
        call.move(CallState.ROUTING)
        rp_leg = Leg(call, rp, rp, True)  # the routing point as a party, for events only
        flow = getattr(origin.incoming, "flow", None)
        ext = {"AttributeExtensions": route_extensions(
            self.config.dns, rp, self.config.applications[self.server.app_name].geo_location,
            flow.remote[0] if flow else None)}
        self._event(call, "EventQueued", rp_leg, other=origin.number, role="Destination",
                    extra=ext)
        self._event(call, "EventRouteRequest", rp_leg, other=origin.number, role="Destination",
                    extra=ext)
        entry = self.config.dns[rp]
        default = entry.options.get("default-dn") or self.tserver.default_dn
        try:
            decision = await self.server.routing.wait(
                call.conn_id, rp, self.tserver.router_timeout,
                default if isinstance(default, str) else None)
            decision = await self._default_not_reserved(call, rp, decision, default)
        except asyncio.CancelledError:  # the caller hung up while the call waited
            self._event(call, "EventAbandoned", rp_leg, other=origin.number, role="Destination")
            raise
        if decision.user_data:
            call.user_data.update(decision.user_data)
        if decision.requester is not None:
            conn, request = decision.requester
            self.server.expect_answer(conn, request, rp, call.conn_id,
                                      frozenset({"EventRouteUsed"}))
        extra = {"AttributeReason": {"route": "default"}} if decision.default else None
        if decision.destination is None:
            self.log.warning("route_no_default", conn_id=call.conn_id, rp=rp)
            return None
        self._event(call, "EventRouteUsed", rp_leg, other=decision.destination,
                    role="Destination", extra=extra)
        self._event(call, "EventDiverted", rp_leg, other=decision.destination,
                    role="Destination")
        self.log.info("call_routed", conn_id=call.conn_id, rp=rp, to=decision.destination,
                      default=decision.default)
        call.move(CallState.SETUP)
        if decision.route_type == "Reject":
            return None
        return decision.destination

    async def _default_not_reserved(self, call: Call, rp: str, decision: RouteDecision,
                                    default: object) -> RouteDecision:
        """A default routing to an agent reserved for another call waits on the
        routing point until the reservation ends (docs/node.md, "Reserved
        agents"); a router may still route the call meanwhile."""
        reserved = self.server.reserved
        logged = False
        while decision.default and decision.destination is not None:
            now = self._now()
            held = reserved.conflict(decision.destination, call.conn_id, None, now)
            if held is None:
                break
            if not logged:
                logged = True
                self.server.reserved_refusals.labels("held").inc()
                self.log.info("default_route_waits_for_reservation", conn_id=call.conn_id,
                              rp=rp, dn=held.dn, holder=held.holder,
                              reserved_for=held.conn_id)
            decision = await self.server.routing.wait(
                call.conn_id, rp, min(RESERVATION_RECHECK, max(0.05, held.expires - now)),
                default if isinstance(default, str) else None)
        return decision


def _status(result: Response | int) -> int:
    return result if isinstance(result, int) else result.status


def done_future(resp: Response) -> asyncio.Future[Response]:
    future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    future.set_result(resp)
    return future  # a finished "task" for _late_final
