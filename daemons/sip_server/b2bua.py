"""The Session Controller's SIP side: registrar and back-to-back user agent
(guide: "SIP Server in Cluster Mode", "Session Controller"; docs/node.md).

* **REGISTER** (RFC 3261 §10.3): digest authentication against the DN's
  password in the switch realm (RFC 7616 / 8760), the same 401 for an unknown
  DN and a wrong password, ``sip-enable-strict-auth`` refusing empty passwords
  and passwords equal to the DN; bindings in :class:`Registrar`; the DN's
  service state goes to the paired t-controller.
* **Calls**: every call is two (or more) dialogs joined by the node; SDP is
  copied from one leg to the other, RTP never reaches the node. INVITEs from
  phones are challenged with 407 when ``sip-enable-strict-auth`` applies to
  the calling DN. Basic call, CANCEL, busy, unreachable, no answer
  (``extn-no-answer-timeout``, then the ``extn-no-answer-overflow`` DN when
  the cluster file gives one, else 480), hold / retrieve by re-INVITE
  (RFC 3264 §8.4), single-step transfer by REFER (RFC 3515) or
  RequestSingleStepTransfer, routing points.
* **Third-party call control** (RFC 3725): RequestMakeCall uses flow I
  (§4.1): INVITE the agent's phone without SDP, send its offer to the
  destination in a second INVITE, and return the destination's answer in the
  ACK to the phone. RequestAnswerCall / RequestHoldCall / RequestRetrieveCall
  send ``NOTIFY`` with ``Event: talk`` / ``hold`` (the BroadSoft / Polycom
  convention) to phones whose ``sip-cti-control`` allows it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from daemons.cluster.config import DnType
from daemons.runtime.dns import SipResolver
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.call import (
    Call,
    CallState,
    Leg,
    LegState,
    hold_sdp,
    new_conn_id,
    sdp_direction,
)
from daemons.sip_server.outbound import NODE_HEADER, OutboundProxies, PeerWatch
from daemons.sip_server.registrar import RegisterError, Registrar
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.digest import AlgorithmPolicy, DigestAuthenticator
from protocols.sip.errors import ParseError, SipError
from protocols.sip.headers import Headers, parse_name_addr
from protocols.sip.message import Request, Response, make_response
from protocols.sip.oos import NodeState
from protocols.sip.uri import parse_uri
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

if TYPE_CHECKING:
    from daemons.sip_server.service import SipServer

__all__ = ["ALLOW", "CallControlError", "SessionController"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, REFER, NOTIFY, INFO"
_AGENT_TYPES = (DnType.EXTENSION, DnType.ACD_POSITION)
_NO_CTI: frozenset[str] = frozenset()
#: Final statuses from the called side that the caller sees as 480.
_AS_UNAVAILABLE = {503, 487, 481}

Ringing = Callable[[Leg, Response, bool], None]


class CallControlError(Exception):
    """A T-Library call-control request that cannot be carried out: EventError."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{int(code)} {text}")


class SessionController:
    """Registrar + B2BUA of one node; call events go through ``server.call_event``."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.config = server.config
        self.tserver = server.tserver
        self.log = server.log
        self.registrar = Registrar()
        realm = self.config.switch.realm
        self.domain = self.config.switch.domain
        # One nonce key for the whole switch (docs/configuration.md, digest-secret): a
        # phone that a proxy moves to another node keeps its nonce (RFC 7616 §3.3).
        if not self.config.switch.digest_secret:
            self.log.warning("digest_secret_derived", switch=self.config.switch.name,
                             realm=realm, hint="set [switch] digest-secret: the derived "
                             "key is guessable from the cluster file")
        # RFC 8760 offer (SHA-256 first) except to clients known to break on it,
        # narrowed per account (docs/configuration.md, "Digest algorithms")
        switch = self.config.switch
        self.auth = DigestAuthenticator(realm, switch.nonce_secret(),
                                        algorithms=switch.digest_algorithms)
        self.auth_policy = AlgorithmPolicy(switch.digest_algorithms, switch.digest_user_agents)
        self.endpoint: SipEndpoint | None = None
        self.sip_port = 0
        self.calls: dict[str, Call] = {}
        self.legs: dict[tuple[str, str], Leg] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: next-hop URI text -> Destination when its host is an IP address
        self._destinations: dict[tuple[str, str], Destination | None] = {}
        #: our Contact per (transport, remote host): the listening address does not move
        self._contacts: dict[tuple[str, str], str] = {}
        #: sip-cti-control events -> the one set every leg with them shares
        self._cti_sets: dict[tuple[str, ...], frozenset[str]] = {}
        self._expiry_task: asyncio.Task[None] | None = None
        #: the SIP Proxies (SIP Outbound Proxy DN), for phones this node has no binding of
        self.outbound: OutboundProxies | None = None
        #: a backup's watch on its primary (HA pair), None on a primary
        self.ha_watch: PeerWatch | None = None
        self._ha_task: asyncio.Task[None] | None = None
        m = server.metrics
        self.m_registrations = m.counter("registrations", "REGISTER outcomes", ("outcome",))
        self.m_registered = m.gauge("registered_dns", "DNs with at least one binding")
        self.m_calls_active = m.gauge("calls_active", "Calls in progress")
        self.m_calls_active.set_function(lambda: len(self.calls))
        self.m_calls = m.tally("calls", "Finished calls by outcome", ("outcome",))
        self.m_refused = m.counter("sip_requests_refused", "Requests answered with an error",
                                   ("method", "status"))
        self.m_auth_failures = m.counter("auth_failures", "Digest failures", ("method", "reason"))

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
        proxy_dn = self.config.outbound_proxy
        if proxy_dn is not None:
            watch = PeerWatch(lambda: self.ep, name=self.server.app_name, host=host,
                              oos_check=float(proxy_dn.oos_check),
                              oos_force=float(proxy_dn.oos_force), log=self.log)
            self.outbound = OutboundProxies(proxy_dn.contact, resolver, watch, log=self.log)
            self.outbound.start()
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
        if self.outbound is not None:
            await self.outbound.close()
        if self._ha_task is not None:
            self._ha_task.cancel()
        if self.ha_watch is not None:
            self.ha_watch.close()
        if self.endpoint is not None:
            await self.endpoint.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("sip_server_task_failed", error=repr(task.exception()))

    def _destination(self, uri: str, transport: str = "UDP") -> Destination | None:
        """The destination of a next-hop URI whose host is an IP address (RFC 3263
        §4.1-§4.2: no DNS, transport from the URI else ``transport``, port from the
        URI else 5060 / 5061), ``None`` when it needs the resolver. Cached: phones
        and the node keep talking to the same few contacts."""
        key = (uri, transport)
        cache = self._destinations
        if key in cache:
            return cache[key]
        dest: Destination | None = None
        try:
            parsed = parse_uri(uri)
            ipaddress.ip_address(parsed.host)
        except (ParseError, ValueError):
            parsed = None
        if parsed is not None and parsed.is_sip and "maddr" not in parsed.params:
            proto = (parsed.params.get("transport") or transport).upper()
            if parsed.scheme == "sips" and proto == "TCP":
                proto = "TLS"
            port = parsed.port or (5061 if proto == "TLS" else 5060)
            dest = Destination(proto, parsed.host, port)
        if len(cache) >= 10_000:
            cache.clear()
        cache[key] = dest
        return dest

    async def _request(self, request: Request, destination: Destination | None = None,
                       **kwargs: Any) -> Response:
        """``SipEndpoint.request`` to ``destination``, else the next hop (§8.1.2:
        first Route, else the Request-URI) resolved from the cache when it is an
        IP address."""
        if destination is None:
            routes = request.headers.get("Route")
            hop = parse_name_addr(routes.split(",")[0]).uri if routes else request.uri
            destination = self._destination(hop)
        return await self.ep.request(request, destination, **kwargs)

    @property
    def ep(self) -> SipEndpoint:
        assert self.endpoint is not None
        return self.endpoint

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ helpers

    def _agent_dn(self, number: str | None) -> str | None:
        entry = self.config.dns.get(number or "")
        return entry.number if entry is not None and entry.type in _AGENT_TYPES else None

    def _cti(self, dn: str | None) -> frozenset[str]:
        """The DN's ``sip-cti-control`` events, one shared set per distinct list: every
        leg holds its set for the whole call."""
        entry = self.config.dns.get(dn or "")
        events = entry.options.get("sip-cti-control") if entry is not None else None
        if not events:
            return _NO_CTI
        key = tuple(events)
        cti = self._cti_sets.get(key)
        if cti is None:
            cti = self._cti_sets[key] = frozenset(key)
        return cti

    def is_registered(self, dn: str) -> bool:
        return bool(self.registrar.bindings(dn, self._now()))

    def routable(self, number: str) -> bool:
        return number in self.config.dns

    def _contact(self, transport: str = "UDP", remote: str = "127.0.0.1") -> str:
        key = (transport, remote)
        contact = self._contacts.get(key)
        if contact is None:
            if len(self._contacts) >= 1_000:
                self._contacts.clear()
            contact = self._contacts[key] = \
                f"<{self.ep.contact_uri(transport, remote_host=remote)}>"
        return contact

    def _refuse(self, inc: IncomingRequest, status: int, reason: str | None = None,
                headers: Iterable[tuple[str, str]] = ()) -> Response:
        self.m_refused.labels(inc.method, str(status)).inc()
        self.log.info("sip_request_refused", method=inc.method, status=status,
                      call_id=inc.request.call_id, reason=reason)
        return inc.response(status, reason, headers=headers)

    # ------------------------------------------------------------------ dispatch

    async def handle(self, inc: IncomingRequest) -> Response | None:
        method = inc.method
        try:
            if method == "REGISTER":
                return self._register(inc)
            if method == "INVITE":
                if inc.request.to.tag:
                    return await self._reinvite(inc)
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
            if method in ("INFO", "NOTIFY", "UPDATE", "MESSAGE"):
                leg = self._leg_for(inc.request)
                if leg is None:
                    return self._refuse(inc, 481)
                return inc.response(200)
            if method in ("SUBSCRIBE", "PUBLISH", "PRACK"):
                return self._refuse(inc, 405, headers=[("Allow", ALLOW)])
            return self._refuse(inc, 501)
        except ParseError as exc:
            return self._refuse(inc, exc.status, exc.reason)

    def _leg_for(self, request: Request) -> Leg | None:
        return self.legs.get((request.call_id, request.to.tag or ""))

    # ------------------------------------------------------------------ registrar

    def _password(self, dn: str) -> str | None:
        entry = self.config.dns.get(dn)
        if entry is None or entry.type not in _AGENT_TYPES:
            return None
        password = entry.password
        if self.config.strict_auth(dn, self.server.app_name) and (
                not password or password == dn):
            return None  # sip-enable-strict-auth: such a password never matches
        return password

    def _needs_auth(self, dn: str) -> bool:
        entry = self.config.dns.get(dn)
        if entry is None or entry.type not in _AGENT_TYPES:
            return True  # unknown: challenge like any DN, never accept
        return bool(entry.password) or self.config.strict_auth(dn, self.server.app_name)

    def _authenticate(self, inc: IncomingRequest, dn: str, header: str) -> bool | None:
        """True when authenticated, None when challenged/refused (response already chosen)."""
        value = inc.request.headers.get(header)
        if value is None:
            return None
        result = self.auth.verify(inc.method, value, now=time.time(),
                                  password_lookup=lambda user: self._password(dn)
                                  if user == dn else None,
                                  algorithms=self._accepted_algorithms(dn))
        if not result.ok:
            reason = result.reason.value if result.reason is not None else "unknown"
            self.m_auth_failures.labels(inc.method, reason).inc()
            self.log.info("sip_auth_failed", method=inc.method, dn=dn, reason=reason,
                          peer=f"{inc.flow.remote[0]}:{inc.flow.remote[1]}")
            inc.request.headers.set("X-Stale", "true" if result.stale else "false")
            return None
        return True

    def _accepted_algorithms(self, dn: str) -> tuple[str, ...]:
        entry = self.config.dns.get(dn)
        narrowed = entry.digest_algorithms if entry is not None else None
        return narrowed or self.auth.algorithms

    def _challenge(self, inc: IncomingRequest, status: int, dn: str) -> Response:
        stale = inc.request.headers.get("X-Stale") == "true"
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        self.m_refused.labels(inc.method, str(status)).inc()
        offer = self.auth_policy.offer(inc.request.headers.get("User-Agent"),
                                       self._accepted_algorithms(dn))
        return inc.response(status, headers=[
            (name, v) for v in self.auth.challenge(time.time(), stale, offer)])

    def _register(self, inc: IncomingRequest) -> Response:
        req = inc.request
        dn = req.to.sip_uri.user or ""
        if self._needs_auth(dn):
            ok = dn in self.config.dns and self._authenticate(inc, dn, "Authorization")
            if not ok:
                self.m_registrations.labels("challenged").inc()
                return self._challenge(inc, 401, dn)
        entry = self.config.dns[dn]
        now = self._now()
        try:
            result = self.registrar.apply(
                dn, req.contacts, req.expires, now, call_id=req.call_id, cseq=req.cseq.number,
                path=[p.uri for p in _path(req)])
        except RegisterError as exc:
            self.m_registrations.labels("refused").inc()
            headers = [("Min-Expires", str(exc.min_expires))] if exc.min_expires else []
            return self._refuse(inc, exc.status, exc.reason, headers)
        self.m_registrations.labels("ok").inc()
        self.m_registered.set(len(self.registrar.table))
        self.log.info("sip_registered", dn=dn, bindings=len(result.bindings),
                      peer=f"{inc.flow.remote[0]}:{inc.flow.remote[1]}")
        if entry.contact == "*":
            if result.came_in_service:
                b = result.bindings[0]
                self.server.dn_event("EventDNBackInService", dn, {
                    "contact": b.contact, "expires": b.expires_in(now), "ownership": "sip"})
            elif result.went_out_of_service:
                self.server.dn_event("EventDNOutOfService", dn, {"ownership": "sip"})
        headers = [("Contact", f"<{b.contact}>;expires={b.expires_in(now)}")
                   for b in result.bindings]
        headers.append(("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())))
        return inc.response(200, headers=headers)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for dn in self.registrar.expire(self._now()):
                self.log.info("sip_registration_expired", dn=dn)
                entry = self.config.dns.get(dn)
                if entry is not None and entry.contact == "*":
                    self.server.dn_event("EventDNOutOfService", dn, {"ownership": "sip"})
            self.m_registered.set(len(self.registrar.table))

    def announce_registrations(self, conn: TLibConnection) -> None:
        """Right after the t-controller link comes up: one EventDNBackInService per DN."""
        now = self._now()
        for dn in self.registrar.registered(now):
            entry = self.config.dns.get(dn)
            if entry is None or entry.contact != "*":
                continue
            b = self.registrar.bindings(dn, now)[0]
            self.server.send_dn_event_to(conn, "EventDNBackInService", dn, {
                "contact": b.contact, "expires": b.expires_in(now), "ownership": "sip"})

    def status_registrations(self) -> dict[str, Any]:
        now = self._now()
        return {dn: [{"contact": b.contact, "expires": b.expires_in(now)}
                     for b in self.registrar.bindings(dn, now)]
                for dn in self.registrar.registered(now)}

    def status_calls(self) -> list[dict[str, Any]]:
        return [{"conn_id": c.conn_id, "state": c.state.value, "ani": c.ani, "dnis": c.dnis,
                 "legs": [{"number": leg.number, "state": leg.state.value}
                          for leg in c.legs]}
                for c in self.calls.values()]

    # ------------------------------------------------------------------ calls: common

    def _new_call(self, ani: str, dnis: str, caller_dn: str | None) -> Call:
        dest_known = dnis in self.config.dns
        call_type = "Internal" if caller_dn and dest_known else (
            "Inbound" if not caller_dn else "Outbound")
        call = Call(new_conn_id(), ani, dnis, call_type, created=self._now())
        self.calls[call.conn_id] = call
        return call

    def _finish(self, call: Call, outcome: str) -> None:
        if call.conn_id not in self.calls:
            return
        call.move(CallState.RELEASED)
        del self.calls[call.conn_id]
        if call.consult_of is not None and call.consult_of.consult is call:
            call.consult_of.consult = None
        for leg in call.legs:
            self.legs.pop((leg.call_id, leg.local_tag), None)
        self.server.routing.abandon(call.conn_id)
        self.server.fail_pending(call.conn_id, None, ErrorCode.INVALID_CALL_STATE,
                                 "Invalid call state: the call was released")
        self.m_calls.labels(outcome).inc()
        self.log.info("call_finished", conn_id=call.conn_id, outcome=outcome)

    def _event(self, call: Call, name: str, leg: Leg | None, *, other: str | None = None,
               role: str | None = None, third: str | None = None,
               extra: dict[str, Any] | None = None, observers: tuple[str, ...] = ()) -> None:
        if leg is None or leg.dn is None:
            return
        if role is None:
            role = "Origination" if not leg.outbound else "Destination"
        self.server.call_event(call, name, leg.dn, other=other, role=role, third=third,
                               extra=extra, observers=observers)

    def _release(self, leg: Leg, other: str | None = None) -> bool:
        """Mark ``leg`` released and report EventReleased; False if it already was."""
        if not leg.alive:
            return False
        leg.move(LegState.RELEASED)
        self.legs.pop((leg.call_id, leg.local_tag), None)
        if other is None:
            peer = leg.call.other(leg)
            other = peer.number if peer is not None else None
        self._event(leg.call, "EventReleased", leg, other=other)
        return True

    def _end_leg(self, leg: Leg, status: int = 480) -> None:
        """End one party's dialog from the node's side (BYE, CANCEL or a final response)."""
        if leg.shared_with is not None and leg.shared_with.alive:
            pass  # the phone's dialog carries the other call of a consultation: keep it
        elif leg.connected and leg.dialog is not None:
            self._spawn(self._send_in_dialog(leg, "BYE"))
        elif leg.incoming is not None and not leg.incoming.final_sent:
            leg.incoming.respond(status)
        elif leg.invite is not None and not leg.connected:
            leg.abandoned = True
            self.ep.cancel(leg.invite)
        other_number = None
        peer = leg.call.other(leg)
        if peer is not None:
            other_number = peer.number
        self._release(leg, other_number)

    def _hangup(self, leg: Leg, *, remote: bool) -> None:
        """``leg`` leaves the call; a two-party call ends for the other parties too."""
        call = leg.call
        if not remote:
            self._end_leg(leg)
        else:
            self._release(leg)
        if leg.transferred:
            return
        for other in call.live_legs():
            self._end_leg(other)
        self._finish(call, "completed" if remote else "released")

    async def _send_in_dialog(self, leg: Leg, method: str, *, headers: Iterable[
            tuple[str, str]] = (), body: bytes = b"", dialog: Dialog | None = None) -> Response:
        dialog = dialog or leg.dialog
        assert dialog is not None
        request = dialog.create_request(method, headers=list(headers), body=body)
        if method == "BYE":
            dialog.terminate()
        try:
            response = await self._request(request)
        except SipError as exc:
            self.log.info("sip_in_dialog_failed", method=method, reason=str(exc))
            return make_response(request, 503)
        except OSError as exc:
            self.log.info("sip_in_dialog_failed", method=method, reason=str(exc))
            return make_response(request, 503)
        if method != "BYE":
            dialog.receive_response(response)
        return response

    async def _ack(self, invite: Request, response: Response, body: bytes = b"") -> None:
        try:
            # §12.1.2: the route set is the Record-Route reversed, else the Contact
            rr = response.headers.get_all("Record-Route")
            contacts = response.contacts
            hop = parse_name_addr(rr[-1]).uri if rr else contacts[0].uri if contacts else None
            dest = self._destination(hop, invite.top_via.transport) if hop else None
            await self.ep.send_ack(invite, response, body=body, destination=dest)
        except (SipError, OSError) as exc:
            self.log.warning("sip_ack_failed", call_id=invite.call_id, reason=str(exc))

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
        """Send ``invite`` to ``leg``; the final response and whether no-answer fired."""
        leg.invite = invite

        def provisional(resp: Response) -> None:
            if not leg.alive or resp.status == 100:
                return
            if resp.to.tag and leg.early_response is None:
                leg.early_response = resp  # its early dialog is built when needed
            first = leg.state is LegState.CALLING
            leg.move(LegState.RINGING)
            if call.state is CallState.SETUP:
                call.move(CallState.ALERTING)
            if ringing is not None:
                ringing(leg, resp, first)

        task = self._spawn(self._request(invite, hop, on_provisional=provisional))
        task.add_done_callback(lambda t: self._late_final(leg, t))
        try:
            if timeout:
                return await asyncio.wait_for(asyncio.shield(task), timeout), False
            return await asyncio.shield(task), False
        except TimeoutError:
            leg.abandoned = True
            self.ep.cancel(invite)
            self.log.info("call_no_answer", conn_id=call.conn_id, dn=leg.dn, timeout=timeout)
            return make_response(invite, 480, "No Answer"), True

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
        while True:
            entry = self.config.dns.get(dest)
            if entry is not None and entry.type is DnType.ROUTING_POINT:
                if dest in call.visited_routing_points:
                    return None, 480
                target = await self._route(call, origin, dest)
                if target is None:
                    return None, 480
                dest = target
                continue
            if entry is None or entry.type not in _AGENT_TYPES:
                return None, 404
            located = await self._locate(call, dest)
            if located is None:
                return None, 480
            contact, path, hop = located
            tried.add(dest)
            leg = call.add_leg(dest, dest, outbound=True, cti=self._cti(dest))
            extra: list[tuple[str, str]] = []
            if hop is not None:
                extra.append((NODE_HEADER, self.server.app_name))  # pins the dialog here
            invite = self._new_invite(leg, contact, origin.number, dest, offer, path, extra,
                                      hop)
            timeout = (self.tserver.posn_no_answer_timeout
                       if entry.type is DnType.ACD_POSITION
                       else self.tserver.extn_no_answer_timeout)
            resp, no_answer = await self._dial(call, leg, invite, timeout, ringing, hop)
            if 200 <= resp.status < 300:
                return leg, resp
            rang = leg.state is LegState.RINGING
            if leg.alive:
                leg.move(LegState.RELEASED)
                self.legs.pop((leg.call_id, leg.local_tag), None)
                if rang:
                    self._event(call, "EventReleased", leg, other=origin.number)
            overflow = next((d for d in self._overflow(entry.type) if d not in tried), None)
            if no_answer and overflow is not None and origin.alive:
                self.log.info("call_no_answer_overflow", conn_id=call.conn_id, to=overflow)
                if call.state is CallState.ALERTING:
                    call.move(CallState.SETUP)
                dest = overflow
                continue
            return None, resp

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
        self._event(call, "EventQueued", rp_leg, other=origin.number, role="Destination")
        self._event(call, "EventRouteRequest", rp_leg, other=origin.number, role="Destination")
        entry = self.config.dns[rp]
        default = entry.options.get("default-dn") or self.tserver.default_dn
        decision = await self.server.routing.wait(call.conn_id, rp, self.tserver.router_timeout,
                                                  default if isinstance(default, str) else None)
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

    # ------------------------------------------------------------------ inbound INVITE

    async def _invite(self, inc: IncomingRequest) -> Response | None:
        req = inc.request
        # parse_uri, not ``.sip_uri``: the From / To headers become the dialog's remote /
        # local party for the whole call, and ``.sip_uri`` would cache a parsed URI on them
        caller = parse_uri(req.from_.uri).user or ""
        caller_dn = self._agent_dn(caller)
        if caller_dn is not None and self.config.strict_auth(caller_dn, self.server.app_name):
            if not self._authenticate(inc, caller_dn, "Proxy-Authorization"):
                return self._challenge(inc, 407, caller_dn)
        dest = req.ruri.user or parse_uri(req.to.uri).user or ""
        if not dest:
            return self._refuse(inc, 404, "No Destination")
        # no explicit 100 Trying: the transaction sends it after 200 ms unless the
        # 180 relayed from the callee came first (RFC 3261 §17.2.1)
        call = self._new_call(caller, dest, caller_dn)
        leg_a = call.add_leg(caller_dn, caller, outbound=False, cti=self._cti(caller_dn))
        leg_a.incoming, leg_a.sdp = inc, req.body
        leg_a.call_id, leg_a.local_tag = req.call_id, inc.to_tag
        self.legs[(leg_a.call_id, leg_a.local_tag)] = leg_a
        self.log.info("call_started", conn_id=call.conn_id, call_id=req.call_id, ani=caller,
                      dnis=dest)
        self._event(call, "EventDialing", leg_a, other=dest)
        try:
            await self._connect_inbound(call, leg_a, dest)
        except asyncio.CancelledError:
            self._caller_cancelled(call, leg_a)
            raise
        return None

    def _caller_cancelled(self, call: Call, leg_a: Leg) -> None:
        self.log.info("call_cancelled", conn_id=call.conn_id)
        self._release(leg_a, call.dnis)
        for leg in call.live_legs():
            self._end_leg(leg)
        self._finish(call, "cancelled")

    async def _connect_inbound(self, call: Call, leg_a: Leg, dest: str) -> None:
        inc: IncomingRequest = leg_a.incoming
        flow = inc.flow
        # §12.1.1: the proxies that record-routed stay in the dialog (they pin its
        # in-dialog requests to this node)
        record_route = [("Record-Route", v) for v in inc.request.headers.get_lines(
            "Record-Route")]

        def ringing(leg: Leg, resp: Response, first: bool) -> None:
            if first:
                self._event(call, "EventRinging", leg, other=leg_a.number)
            if first or (resp.body and resp.status == 183):
                status = resp.status if resp.status in (180, 183) else 180
                headers = [*record_route,
                           ("Contact", self._contact(flow.transport, flow.remote[0]))]
                if resp.body:
                    headers.append(("Content-Type", "application/sdp"))
                inc.respond(status, headers=headers, body=resp.body)

        leg_b, result = await self._reach(call, leg_a, dest, leg_a.sdp, ringing)
        if leg_b is None or not isinstance(result, Response) or result.status >= 300:
            status = result if isinstance(result, int) else result.status
            if status in _AS_UNAVAILABLE:
                status = 480
            if leg_a.alive:
                self._release(leg_a, dest)
                inc.respond(status)
                self._finish(call, f"failed_{status}")
            return
        resp = result
        leg_b.sdp = resp.body
        try:
            leg_b.dialog = Dialog.create_uac(leg_b.invite, resp)  # type: ignore[arg-type]
        except (DialogError, ParseError):
            leg_b.dialog = None
        if not leg_a.alive:
            leg_b.abandoned = True
            self._late_final(leg_b, _done(resp))
            self._release(leg_b)
            return
        if leg_a.sdp:
            await self._ack(leg_b.invite, resp)  # type: ignore[arg-type]
        else:
            leg_b.pending_response = resp  # late offer: the caller's ACK holds the answer
        headers = [*record_route, ("Contact", self._contact(flow.transport, flow.remote[0])),
                   ("Allow", ALLOW)]
        if resp.body:
            headers.append(("Content-Type", "application/sdp"))
        sent = inc.respond(200, headers=headers, body=resp.body)
        if sent is None or not leg_a.alive:
            self._hangup(leg_a, remote=True)
            return
        try:
            leg_a.dialog = Dialog.create_uas(inc.request, sent)
        except (DialogError, ParseError) as exc:
            self.log.warning("call_dialog_failed", conn_id=call.conn_id, reason=str(exc))
        leg_a.move(LegState.ESTABLISHED)
        leg_b.move(LegState.ESTABLISHED)
        call.move(CallState.CONNECTED)
        self.log.info("call_established", conn_id=call.conn_id, caller=leg_a.number,
                      callee=leg_b.number)
        self._event(call, "EventEstablished", leg_b, other=leg_a.number)
        self._event(call, "EventEstablished", leg_a, other=leg_b.number)
        leg_a.settle()
        leg_b.settle()

    def _ack_received(self, inc: IncomingRequest) -> None:
        leg = self._leg_for(inc.request)
        if leg is None:
            return
        for other in leg.call.legs:
            if other.pending_response is not None and other.invite is not None:
                resp, other.pending_response = other.pending_response, None
                self._spawn(self._ack(other.invite, resp, inc.request.body))
                if other.connected:
                    other.settle()

    # ------------------------------------------------------------------ in-dialog

    def _bye(self, inc: IncomingRequest) -> Response:
        leg = self._leg_for(inc.request)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        if leg.dialog is not None:
            leg.dialog.terminate()
        leg.dialog = None
        self.log.info("call_bye", conn_id=leg.call.conn_id, dn=leg.number)
        shared = leg.shared_with
        self._hangup(leg, remote=True)
        if shared is not None and shared.alive:  # the phone left both calls of a consultation
            shared.dialog = None
            self._hangup(shared, remote=True)
        return inc.response(200)

    async def _reinvite(self, inc: IncomingRequest) -> Response | None:
        """Hold / retrieve / media change (RFC 3264 §8.4): relayed to the other leg."""
        req = inc.request
        leg = self._leg_for(req)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        call = leg.call
        other = call.other(leg)
        if not leg.connected or other is None or not other.connected or other.dialog is None:
            return self._refuse(inc, 491)
        if leg.dialog is not None:
            try:
                leg.dialog.receive_request(req)
            except DialogError as exc:
                return self._refuse(inc, exc.status, exc.reason)
        inc.respond(100)
        headers = [("Contact", self._contact()), ("Allow", ALLOW)]
        if req.body:
            headers.append(("Content-Type", "application/sdp"))
        out = other.dialog.create_request("INVITE", headers=headers, body=req.body)
        resp = await self._request(out)
        other.dialog.receive_response(resp)
        if resp.status >= 300:
            return inc.response(resp.status if resp.status not in _AS_UNAVAILABLE else 488)
        await self._ack(out, resp)
        leg.sdp, other.sdp = req.body, resp.body
        answer_headers = [("Contact", self._contact(inc.flow.transport, inc.flow.remote[0])),
                          ("Allow", ALLOW)]
        if resp.body:
            answer_headers.append(("Content-Type", "application/sdp"))
        sent = inc.respond(200, headers=answer_headers, body=resp.body)
        if req.body and sent is not None:
            direction = sdp_direction(req.body)
            # the held party's observers learn it too (its DN gets no event of its own)
            seen = (other.dn,) if other.dn else ()
            if direction in ("sendonly", "inactive") and leg.state is LegState.ESTABLISHED:
                leg.move(LegState.HELD)
                self._event(call, "EventHeld", leg, other=other.number, observers=seen)
            elif direction in ("sendrecv", "recvonly") and leg.state is LegState.HELD:
                leg.move(LegState.ESTABLISHED)
                self._event(call, "EventRetrieved", leg, other=other.number, observers=seen)
        return None

    def _refer(self, inc: IncomingRequest) -> Response:
        """RFC 3515: REFER within a call = single-step transfer of the other party."""
        req = inc.request
        leg = self._leg_for(req)
        if leg is None or not leg.alive:
            return self._refuse(inc, 481)
        refer_to = req.headers.get("Refer-To")
        if refer_to is None:
            return self._refuse(inc, 400, "Missing Refer-To")
        try:
            target = parse_name_addr(refer_to).sip_uri.user or ""
        except (ParseError, ValueError):
            return self._refuse(inc, 400, "Bad Refer-To")
        other = leg.call.other(leg)
        if not target or not leg.connected or other is None or not other.connected:
            return self._refuse(inc, 488 if target else 400)
        self._spawn(self._transfer(leg.call, leg, target, via_refer=True))
        return inc.response(202)

    async def _notify_refer(self, leg: Leg, status: int, reason: str, final: bool) -> None:
        if leg.dialog is None or not leg.alive:
            return
        state = "terminated;reason=noresource" if final else "active;expires=60"
        await self._send_in_dialog(leg, "NOTIFY", headers=[
            ("Event", "refer"), ("Subscription-State", state),
            ("Content-Type", "message/sipfrag;version=2.0"),
            ("Contact", self._contact())], body=f"SIP/2.0 {status} {reason}\r\n".encode())

    async def _transfer(self, call: Call, transferor: Leg, target: str, *,
                        via_refer: bool) -> None:
        """Single-step transfer: the other party of ``transferor`` is connected to
        ``target`` (late offer to the target, re-INVITE to the party that stays,
        as in RFC 3725 §4.1)."""
        keep = call.other(transferor)
        if keep is None or keep.dialog is None:
            return
        call.move(CallState.TRANSFERRING)
        transferor.transferred = True
        if via_refer:
            await self._notify_refer(transferor, 100, "Trying", False)
        else:
            self._end_leg(transferor)

        def ringing(leg: Leg, resp: Response, first: bool) -> None:
            if first:
                self._event(call, "EventRinging", leg, other=keep.number,
                            third=transferor.number)

        self.log.info("call_transfer", conn_id=call.conn_id, transferor=transferor.number,
                      target=target)
        leg_c, result = await self._reach(call, keep, target, b"", ringing)
        if leg_c is None or not isinstance(result, Response) or result.status >= 300:
            status = result if isinstance(result, int) else result.status
            self.log.info("call_transfer_failed", conn_id=call.conn_id, status=status)
            if via_refer and transferor.alive:
                transferor.transferred = False
                call.move(CallState.CONNECTED)
                await self._notify_refer(transferor, status, "Failed", True)
            elif keep.alive:
                self._hangup(keep, remote=False)
            return
        resp = result
        assert leg_c.invite is not None
        try:
            leg_c.dialog = Dialog.create_uac(leg_c.invite, resp)
        except (DialogError, ParseError):
            leg_c.dialog = None
        if not keep.alive or keep.dialog is None:
            leg_c.abandoned = True
            self._late_final(leg_c, _done(resp))
            self._release(leg_c)
            self._finish(call, "released")
            return
        headers = [("Contact", self._contact()), ("Allow", ALLOW)]
        if resp.body:
            headers.append(("Content-Type", "application/sdp"))
        out = keep.dialog.create_request("INVITE", headers=headers, body=resp.body)
        answer = await self._request(out)
        keep.dialog.receive_response(answer)
        if answer.status >= 300:
            await self._ack(leg_c.invite, resp)
            self._end_leg(leg_c)
            self._hangup(keep, remote=False)
            return
        await self._ack(out, answer)
        await self._ack(leg_c.invite, resp, answer.body)
        leg_c.sdp, keep.sdp = resp.body, answer.body
        leg_c.move(LegState.ESTABLISHED)
        call.move(CallState.CONNECTED)
        self._event(call, "EventEstablished", leg_c, other=keep.number, third=transferor.number)
        self._event(call, "EventPartyChanged", keep, other=leg_c.number,
                    third=transferor.number)
        if via_refer and transferor.alive:
            await self._notify_refer(transferor, 200, "OK", True)
            await asyncio.sleep(2.0)  # the transferor normally sends BYE itself (RFC 5589)
            if transferor.alive:
                self._end_leg(transferor)
        self.log.info("call_transferred", conn_id=call.conn_id, to=leg_c.number)

    # ------------------------------------------------------------------ T-Library control

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

    # ------------------------------------------------------------------ consultation transfer

    def _initiate_transfer(self, conn: TLibConnection, request: RequestReceived, call: Call,
                           leg: Leg, target: str) -> None:
        """RequestInitiateTransfer: hold the call, consultation call from the same phone."""
        other = call.other(leg)
        if leg.state is not LegState.ESTABLISHED or other is None or not other.connected \
                or other.dialog is None or leg.dialog is None or call.consult is not None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {leg.number} is not talking")
        if target not in self.config.dns:
            raise CallControlError(ErrorCode.UNKNOWN_DN, f"Unknown DN: {target}")
        self.server.expect_answer(conn, request, leg.number, call.conn_id,
                                  frozenset({"EventHeld"}))
        self._spawn(self._consultation(call, leg, other, target,
                                       request.message.get("AttributeUserData")))

    async def _reinvite_leg(self, leg: Leg, body: bytes) -> tuple[Request, Response]:
        """A re-INVITE to ``leg`` (an offer, or none for a late offer, RFC 3725 §4.1)."""
        assert leg.dialog is not None
        headers = [("Contact", self._contact()), ("Allow", ALLOW)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        out = leg.dialog.create_request("INVITE", headers=headers, body=body)
        resp = await self._request(out)
        leg.dialog.receive_response(resp)
        return out, resp

    async def _consultation(self, call: Call, leg_a: Leg, other: Leg, target: str,
                            user_data: dict[str, Any] | None) -> None:
        """Classic T-Library consultation: EventHeld on the agent's DN (the other party
        is re-INVITEd with ``a=inactive``), then a consultation call (its own ConnID)
        over the agent's same dialog: late-offer re-INVITE to the agent's phone, its
        offer to ``target``, the target's answer in the ACK (RFC 3725 §4.1)."""
        dn = leg_a.number
        call.move(CallState.TRANSFERRING)
        out, resp = await self._reinvite_leg(other, hold_sdp(leg_a.sdp) if leg_a.sdp else b"")
        if resp.status >= 300 or not leg_a.alive or not other.alive:
            if call.state is CallState.TRANSFERRING:
                call.move(CallState.CONNECTED)
            self.server.fail_pending(call.conn_id, dn, ErrorCode.INVALID_CALL_STATE,
                                     f"The phone of DN {other.number} refused the hold: "
                                     f"{resp.status} {resp.reason}")
            return
        await self._ack(out, resp)
        leg_a.move(LegState.HELD)
        leg_a.held_by_node = True
        self._event(call, "EventHeld", leg_a, other=other.number,
                    observers=(other.dn,) if other.dn else ())
        consult = self._new_call(dn, target, leg_a.dn)
        if user_data:
            consult.user_data.update(user_data)
        call.consult, consult.consult_of = consult, call
        leg_c = consult.add_leg(leg_a.dn, dn, outbound=False, cti=leg_a.cti)
        leg_c.dialog, leg_c.shared_with, leg_a.shared_with = leg_a.dialog, leg_a, leg_c
        self.log.info("call_consultation", conn_id=call.conn_id, consult=consult.conn_id,
                      dn=dn, target=target)
        out_a, resp_a = await self._reinvite_leg(leg_a, b"")
        if resp_a.status >= 300 or not resp_a.body or not leg_c.alive:
            if resp_a.status < 300:
                await self._ack(out_a, resp_a, other.sdp)
            self._end_consultation(call, consult, "failed_offer")
            return
        self._event(consult, "EventDialing", leg_c, other=target, role="Origination",
                    extra={"AttributeTransferConnID": call.conn_id})

        def ringing(leg: Leg, resp: Response, first: bool) -> None:
            if first:
                self._event(consult, "EventRinging", leg, other=dn)

        leg_b, result = await self._reach(consult, leg_c, target, resp_a.body, ringing)
        if leg_b is None or not isinstance(result, Response) or result.status >= 300:
            # the agent's phone gets back the media of the held party (still on hold)
            await self._ack(out_a, resp_a, other.sdp)
            if leg_c.alive:
                self._release(leg_c, target)
            self._end_consultation(call, consult, "failed")
            return
        assert leg_b.invite is not None
        try:
            leg_b.dialog = Dialog.create_uac(leg_b.invite, result)
        except (DialogError, ParseError):
            leg_b.dialog = None
        await self._ack(leg_b.invite, result)
        await self._ack(out_a, resp_a, result.body)
        leg_b.sdp, leg_a.sdp = result.body, resp_a.body
        if leg_c.state is LegState.RELEASED:  # the agent left while the target rang
            self._end_leg(leg_b)
            self._end_consultation(call, consult, "released")
            return
        leg_c.move(LegState.ESTABLISHED)
        leg_b.move(LegState.ESTABLISHED)
        consult.move(CallState.CONNECTED)
        self._event(consult, "EventEstablished", leg_b, other=dn)
        self._event(consult, "EventEstablished", leg_c, other=leg_b.number, role="Origination")

    def _retrieve_held(self, conn: TLibConnection, request: RequestReceived, call: Call,
                       leg: Leg) -> None:
        """RequestRetrieveCall for a call the node held for a consultation: the agent's
        phone and the held party are joined again (late offer from the phone)."""
        other = call.other(leg)
        if call.consult is not None or other is None or not other.connected \
                or leg.dialog is None or other.dialog is None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {leg.number} still consults or "
                                   "has no party to return to")
        self.server.expect_answer(conn, request, leg.number, call.conn_id,
                                  frozenset({"EventRetrieved"}))

        async def reconnect() -> None:
            out_a, resp_a = await self._reinvite_leg(leg, b"")
            if resp_a.status >= 300 or not resp_a.body:
                if resp_a.status < 300:
                    await self._ack(out_a, resp_a, other.sdp)
                self.server.fail_pending(call.conn_id, leg.number, ErrorCode.INVALID_CALL_STATE,
                                         f"The phone of DN {leg.number} refused the retrieve: "
                                         f"{resp_a.status} {resp_a.reason}")
                return
            out_o, resp_o = await self._reinvite_leg(other, resp_a.body)
            await self._ack(out_a, resp_a, resp_o.body if resp_o.status < 300 else other.sdp)
            if resp_o.status >= 300:
                self.server.fail_pending(call.conn_id, leg.number, ErrorCode.INVALID_CALL_STATE,
                                         f"The phone of DN {other.number} refused the "
                                         f"retrieve: {resp_o.status} {resp_o.reason}")
                return
            await self._ack(out_o, resp_o)
            leg.sdp, other.sdp = resp_a.body, resp_o.body
            leg.held_by_node = False
            leg.shared_with = None
            leg.move(LegState.ESTABLISHED)
            if call.state is CallState.TRANSFERRING:
                call.move(CallState.CONNECTED)
            self._event(call, "EventRetrieved", leg, other=other.number,
                        observers=(other.dn,) if other.dn else ())
        self._spawn(reconnect())

    def _end_consultation(self, call: Call, consult: Call, outcome: str) -> None:
        for leg in consult.live_legs():
            self._end_leg(leg)
        call.consult = None
        for leg in call.legs:
            leg.shared_with = None
        self._finish(consult, outcome)

    def _complete_transfer(self, conn: TLibConnection, request: RequestReceived, call: Call,
                           leg_a: Leg, consult_id: str) -> None:
        """RequestCompleteTransfer: ConnID is the held call, TransferConnID the consultation."""
        consult = call.consult
        if consult is None or consult.conn_id != consult_id or consult.released:
            raise CallControlError(ErrorCode.UNKNOWN_CONNID,
                                   f"Unknown ConnID: {consult_id} is not a consultation of "
                                   f"{call.conn_id}")
        leg_c = consult.leg_of(leg_a.number)
        other = call.other(leg_a)
        leg_b = consult.other(leg_c) if leg_c is not None else None
        if leg_a.state is not LegState.HELD or leg_c is None or leg_b is None \
                or not leg_b.connected or other is None or not other.connected \
                or leg_b.dialog is None or other.dialog is None:
            raise CallControlError(ErrorCode.INVALID_CALL_STATE,
                                   f"Invalid call state: DN {leg_a.number} has no held call "
                                   "and connected consultation to join")
        self.server.expect_answer(conn, request, leg_a.number, call.conn_id,
                                  frozenset({"EventReleased"}))
        self._spawn(self._join(call, consult, leg_a, leg_c, other, leg_b))

    async def _join(self, call: Call, consult: Call, leg_a: Leg, leg_c: Leg, other: Leg,
                    leg_b: Leg) -> None:
        """Connect the held party and the target (late offer from the held party, RFC
        3725 §4.1), release the agent from both calls; the consultation merges into
        the held call, which keeps its ConnID."""
        dn = leg_a.number
        out_o, resp_o = await self._reinvite_leg(other, b"")
        if resp_o.status >= 300 or not resp_o.body:
            if resp_o.status < 300:
                await self._ack(out_o, resp_o, hold_sdp(leg_a.sdp))
            self.server.fail_pending(call.conn_id, dn, ErrorCode.INVALID_CALL_STATE,
                                     f"The phone of DN {other.number} refused the transfer: "
                                     f"{resp_o.status} {resp_o.reason}")
            return
        out_b, resp_b = await self._reinvite_leg(leg_b, resp_o.body)
        if resp_b.status >= 300:
            await self._ack(out_o, resp_o, hold_sdp(leg_a.sdp))
            self.server.fail_pending(call.conn_id, dn, ErrorCode.INVALID_CALL_STATE,
                                     f"The phone of DN {leg_b.number} refused the transfer: "
                                     f"{resp_b.status} {resp_b.reason}")
            return
        await self._ack(out_b, resp_b)
        await self._ack(out_o, resp_o, resp_b.body)
        other.sdp, leg_b.sdp = resp_o.body, resp_b.body
        # the agent leaves: one BYE for the one dialog, EventReleased in both calls
        leg_a.shared_with = leg_c.shared_with = None
        if leg_a.dialog is not None and leg_a.alive:
            self._spawn(self._send_in_dialog(leg_a, "BYE"))
        self._release(leg_c, leg_b.number)
        self._release(leg_a, other.number)
        consult.legs.remove(leg_b)
        leg_b.call = call
        call.legs.append(leg_b)
        call.consult = None
        call.move(CallState.CONNECTED)
        self._finish(consult, "transferred")
        self._event(call, "EventPartyChanged", other, other=leg_b.number, third=dn)
        self._event(call, "EventPartyChanged", leg_b, other=other.number, third=dn,
                    extra={"AttributePreviousConnID": consult.conn_id})
        self.log.info("call_transferred", conn_id=call.conn_id, to=leg_b.number,
                      consult=consult.conn_id)

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
        self._event(call, "EventEstablished", leg_b, other=leg_a.number)
        self._event(call, "EventEstablished", leg_a, other=leg_b.number, role="Origination")


def _path(request: Request) -> list[Any]:
    """Path header values (RFC 3327 §5.3): the route back to the registering phone."""
    out = []
    for value in request.headers.get_all("Path"):
        out.append(parse_name_addr(value))
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _done(resp: Response) -> asyncio.Future[Response]:
    future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    future.set_result(resp)
    return future  # a finished "task" for _late_final
