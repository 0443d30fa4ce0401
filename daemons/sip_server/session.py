"""The Session Controller's shared state and plumbing (guide: "SIP Server in
Cluster Mode", "Session Controller"; docs/node.md).

:class:`ControllerHost` is the narrow interface to the sip-server daemon
(call and DN events, pending T-Library requests, the cluster file);
:class:`SessionBase` holds the calls, legs and bindings of the node and what
every concern of the controller uses: next-hop requests (RFC 3263 §4.1-§4.2
for IP-address hops), in-dialog requests, ACK, call events, the end of a leg
and of a call. The concerns build on it: :mod:`registration`,
:mod:`dialing`, :mod:`basic_call`, :mod:`transfer`, :mod:`third_party`;
:mod:`b2bua` joins them into the ``SessionController``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from daemons.cluster.config import AppKind, ClusterConfig, DnType, TServerOptions
from daemons.runtime.management import Metrics, TallyCounter
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.call import Call, CallState, Leg, LegState, new_conn_id
from daemons.sip_server.dialplan_client import DialPlanClient
from daemons.sip_server.outbound import OutboundProxies, PeerWatch, Trunks
from daemons.sip_server.registrar import Registrar
from daemons.sip_server.reservation import ReservedAgents
from daemons.sip_server.routing import RoutingPoints
from protocols.sip.dialog import Dialog, ack_route
from protocols.sip.digest import AlgorithmPolicy, DigestAuthenticator
from protocols.sip.errors import ParseError, SipError
from protocols.sip.headers import parse_name_addr
from protocols.sip.message import Request, Response, make_response
from protocols.sip.uri import SipUri, parse_uri
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

__all__ = [
    "AGENT_TYPES",
    "ALLOW",
    "AS_UNAVAILABLE",
    "CallControlError",
    "ControllerHost",
    "Ringing",
    "SessionBase",
]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, REFER, NOTIFY, INFO, UPDATE, PRACK"
AGENT_TYPES = (DnType.EXTENSION, DnType.ACD_POSITION)
_NO_CTI: frozenset[str] = frozenset()
#: Final statuses from the called side that the caller sees as 480.
AS_UNAVAILABLE = {503, 487, 481}

#: Called on each provisional response of an outgoing leg: (leg, 1xx, first of the leg).
Ringing = Callable[[Leg, Response, bool], None]


class ControllerHost(Protocol):
    """What the Session Controller needs from the sip-server daemon that runs it:
    the cluster file, the metrics and logger, the routing points, and the
    T-Library side (call and DN events, answers to pending requests)."""

    config: ClusterConfig
    tserver: TServerOptions
    log: Any
    metrics: Metrics
    app_name: str
    host: str
    primary_name: str | None
    routing: RoutingPoints
    reserved: ReservedAgents
    reserved_refusals: TallyCounter

    def call_event(self, call: Call, name: str, this_dn: str | None, *,
                   other: str | None = None, role: str | None = None,
                   third: str | None = None, extra: dict[str, Any] | None = None,
                   observers: tuple[str, ...] = ()) -> None: ...

    def dn_event(self, name: str, dn: str, extensions: dict[str, Any] | None = None
                 ) -> None: ...

    def send_dn_event_to(self, conn: TLibConnection, name: str, dn: str,
                         extensions: dict[str, Any]) -> None: ...

    def expect_answer(self, conn: TLibConnection, request: RequestReceived, dn: str,
                      conn_id: str, events: frozenset[str]) -> None: ...

    def fail_pending(self, conn_id: str, dn: str | None, code: ErrorCode, text: str
                     ) -> None: ...


class CallControlError(Exception):
    """A T-Library call-control request that cannot be carried out: EventError."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{int(code)} {text}")


class SessionBase:
    """The Session Controller's state (calls, legs, bindings, the SIP endpoint) and
    what every concern uses: requests to a next hop, call events, the end of a leg
    and of a call."""

    def __init__(self, server: ControllerHost) -> None:
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
        self._cleanup_task: asyncio.Task[None] | None = None
        #: the SIP Proxies (SIP Outbound Proxy DN), for phones this node has no binding of
        self.outbound: OutboundProxies | None = None
        #: the feature-servers' dial plan (docs/feature-server.md), None without a Dial Plan DN
        self.dialplan: DialPlanClient | None = None
        #: the switch's Trunk and Trunk Group DNs, their service state
        self.trunks: Trunks | None = None
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

    def _extension_headers(self) -> list[tuple[str, str]]:
        """Supported option tags, and the Session-Expires the node asks for, of an
        INVITE the node sends (RFC 3262 §4, RFC 4028 §7.1)."""
        ts = self.tserver
        tags = [tag for tag, on in (("100rel", ts.sip_enable_100rel),
                                    ("timer", ts.sip_session_expires > 0)) if on]
        headers = [("Supported", ", ".join(tags))] if tags else []
        if ts.sip_session_expires > 0:
            headers.append(("Session-Expires", str(max(ts.sip_session_expires, ts.sip_min_se))))
        return headers

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

    def _agent_dn(self, number: str | None) -> str | None:
        entry = self.config.dns.get(number or "")
        return entry.number if entry is not None and entry.type in AGENT_TYPES else None

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

    def _leg_for(self, request: Request) -> Leg | None:
        leg = self.legs.get((request.call_id, request.to.tag or ""))
        if leg is not None:
            leg.call.last_activity = self._now()  # a party still knows the call
        return leg

    def _new_call(self, ani: str, dnis: str, caller_dn: str | None) -> Call:
        dest_known = dnis in self.config.dns
        call_type = "Internal" if caller_dn and dest_known else (
            "Inbound" if not caller_dn else "Outbound")
        now = self._now()
        call = Call(new_conn_id(), ani, dnis, call_type, created=now, last_activity=now)
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
            for timers in (leg.reliable, leg.session_timer):
                if timers is not None:
                    timers.close()  # RFC 3262 retransmissions, RFC 4028 refresh / expiry
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
            answer: Response | None = None
            if self._first_route_out_of_service(request):
                answer = await self._via_another_proxy(request)
            response = answer or await self._request(request)
            if answer is None and response.status in (408, 503):
                response = await self._via_another_proxy(request) or response
        except SipError as exc:
            self.log.info("sip_in_dialog_failed", method=method, reason=str(exc))
            return make_response(request, 503)
        except OSError as exc:
            self.log.info("sip_in_dialog_failed", method=method, reason=str(exc))
            return make_response(request, 503)
        if method != "BYE":
            dialog.receive_response(response)
        return response

    def _first_route_out_of_service(self, request: Request) -> bool:
        """The first Route is a SIP Proxy the node's checks (oos-check / oos-force)
        found out of service: do not wait for its timers."""
        first = _first_route(request)
        if first is None or self.outbound is None:
            return False
        return self.outbound.out_of_service(first.host, first.port or 5060)

    async def _via_another_proxy(self, request: Request) -> Response | None:
        """The SIP Proxy the dialog was record-routed through did not answer (it died):
        the same request through the cluster's other proxies, this data centre's first.
        The proxy that takes it sees the dead proxy's Route, takes the dialog over and
        delivers it (the sip-proxy's dead-peer take-over). None when the first Route is
        no proxy of the cluster, or no other proxy answered."""
        first = _first_route(request)
        if first is None:
            return None
        proxies = self.config.by_kind(AppKind.SIP_PROXY)
        dead = [p for p in proxies if p.host == first.host
                and p.port("sip-port") == (first.port or 5060)]
        if not dead:
            return None
        me = self.config.applications.get(self.server.app_name)
        geo = me.geo_location if me is not None else None
        others = sorted((p for p in proxies if p not in dead and p.port("sip-port")),
                        key=lambda p: p.geo_location != geo)
        transport = (first.params.get("transport") or "udp").upper()
        answer: Response | None = None
        for proxy in others:
            retry = Request(request.method, request.uri, headers=request.headers.copy(),
                            body=request.body)
            retry.headers.remove_first("Via")
            port = proxy.port("sip-port")
            assert port is not None
            self.log.info("sip_in_dialog_via_another_proxy", method=request.method,
                          call_id=request.call_id, dead=dead[0].name, via=proxy.name)
            answer = await self.ep.request(retry, Destination(transport, proxy.host, port))
            if answer.status not in (408, 503):
                return answer
        return answer

    async def _ack(self, invite: Request, response: Response, body: bytes = b"") -> None:
        try:
            _, hop = ack_route(invite, response)
            dest = self._destination(hop, invite.top_via.transport)
            await self.ep.send_ack(invite, response, body=body, destination=dest)
        except (SipError, OSError) as exc:
            self.log.warning("sip_ack_failed", call_id=invite.call_id, reason=str(exc))


def _first_route(request: Request) -> SipUri | None:
    """The URI of ``request``'s first Route, None without one (or unreadable)."""
    routes = request.headers.get_all("Route")
    if not routes:
        return None
    try:
        return parse_name_addr(routes[0]).sip_uri
    except (ParseError, ValueError):
        return None
