"""``sipcluster sip-server``: a cluster node's Session Controller and
Interaction Proxy (docs/node.md; guide: "SIP Server in Cluster Mode").

Listeners, from the application's entry in the cluster file:

* ``sip-port`` (UDP + TCP): phones, SBCs and proxies -- registrar and B2BUA
  (:mod:`daemons.sip_server.b2bua`);
* ``default-port`` (T-Library): routing clients and the paired t-controller
  (recognised by its application name);
* ``ip-port`` (T-Library, IPport): reporting clients
  (:mod:`daemons.sip_server.reporting`);
* ``http-port``: ``/healthz`` (every listener up), ``/metrics``,
  ``/status/calls``, ``/status/registrations``, ``/status/ipport``,
  ``/status/trunks`` (trunks' service state, the dial-plan URLs).

This module holds the T-Library side: who gets which event, the answers to
requests (docs/node.md, "Call control from desktops": exactly one answer per
request, carrying its ReferenceID), and the DN service state for the
t-controller.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from dataclasses import dataclass
from typing import Any

from daemons.cluster.config import AppKind, ClusterConfig, DnType
from daemons.runtime.config import ConfigError
from daemons.runtime.service import Service, add_daemon_arguments, run_daemon
from daemons.runtime.tlib_server import TLibConnection, TLibServer
from daemons.sip_server.b2bua import SessionController
from daemons.sip_server.call import Call
from daemons.sip_server.dialplan_client import dial_plan_urls
from daemons.sip_server.reporting import InteractionProxy
from daemons.sip_server.reservation import HeldAgent, ReservedAgents
from daemons.sip_server.routing import RouteDecision, RoutingPoints
from daemons.sip_server.session import CallControlError
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

__all__ = ["SipServer", "add_parser", "run"]

#: Requests a routing client or the t-controller may send on the default port.
CALL_REQUESTS = frozenset({
    "RequestMakeCall", "RequestAnswerCall", "RequestReleaseCall", "RequestHoldCall",
    "RequestRetrieveCall", "RequestSingleStepTransfer", "RequestInitiateTransfer",
    "RequestCompleteTransfer", "RequestAttachUserData", "RequestUpdateUserData",
    "RequestDeleteUserData",
})
#: Generation-0 threshold of the garbage collector once the node is up (default 700).
GC_THRESHOLD_GEN0 = 20_000
#: Seconds a request waits for the event that answers it before EventError.
ANSWER_TIMEOUT = 10.0
#: Seconds a route to an agent reserved for another router waits for the owner's
#: grant to this router before EventError 62 (SipServer._await_grant)
GRANT_GRACE = 1.0


@dataclass
class PendingAnswer:
    """A request whose answer is the next event on ``dn`` of call ``conn_id``."""

    conn: TLibConnection
    reference_id: int
    dn: str
    conn_id: str
    events: frozenset[str]
    handle: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _WaitingRoute:
    """A RequestRouteCall waiting for the owner's grant of its agent (GRANT_GRACE)."""

    conn: TLibConnection
    request: RequestReceived
    rp: str
    conn_id: str
    dn: str
    timer: asyncio.TimerHandle | None = None


class _DefaultPort:
    """TLibHandler of the default port."""

    def __init__(self, server: SipServer) -> None:
        self.server = server

    def on_registered(self, conn: TLibConnection) -> None:
        self.server.on_default_registered(conn)

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        self.server.on_default_request(conn, request)

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        self.server.on_default_closed(conn, reason)


class _IPPort:
    """TLibHandler of the IPport (reporting clients receive, they do not ask)."""

    def __init__(self, server: SipServer) -> None:
        self.server = server

    def on_registered(self, conn: TLibConnection) -> None:
        last = conn.session.client_extensions.get("last-seq")
        last_seq = last if isinstance(last, int) and not isinstance(last, bool) else None
        replayed = self.server.ipproxy.connected(conn, last_seq)
        self.server.log.info("ipport_client_connected", application=conn.application,
                             peer=conn.peer, replayed=replayed, last_seq=last_seq)

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                          f"Request not supported on this port: {request.name} (IPport "
                          "delivers call events only)")

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        self.server.ipproxy.disconnected(conn)
        self.server.log.info("ipport_client_disconnected", application=conn.application,
                             reason=reason)


class SipServer(Service):
    """The sip-server daemon (see module doc)."""

    kind = "sip_server"

    def __init__(self, config: ClusterConfig, name: str, *, backlog_window: float = 60.0,
                 host: str | None = None) -> None:
        super().__init__(app_name=name)
        self.config = config
        self.app = config.application(name, AppKind.SIP_SERVER)
        self.tserver = config.tserver_for(name)
        self.host = host or self.app.host
        self.management_host = self.host
        self.management_port = self.app.port("http-port") or 0
        try:
            self.t_controller_name: str | None = config.t_controller_for(name).name
        except ConfigError:
            self.t_controller_name = None
        #: the primary this sip-server is the hot-standby backup of (HA pair), if any
        self.primary_name: str | None = next(
            (a.name for a in config.by_kind(AppKind.SIP_SERVER) if a.backup == name), None)
        dial_plan_urls(config, self.app)  # a Dial Plan DN the node cannot use is refused here
        self.routing = RoutingPoints()
        #: the agents reserved for routers, as the t-controller passes them on
        self.reserved = ReservedAgents()
        self.ipproxy = InteractionProxy(self._monotonic, backlog_window=backlog_window)
        self.controller = SessionController(self)
        self.default_server: TLibServer | None = None
        self.ip_server: TLibServer | None = None
        self.tc_conn: TLibConnection | None = None
        #: default-port clients registered per DN
        self.dn_clients: dict[str, set[TLibConnection]] = {}
        self.pending: list[PendingAnswer] = []
        self.bound: dict[str, int] = {}
        m = self.metrics
        self.events_sent = m.counter("tlib_events_sent", "T-Library events sent", ("port",))
        self._sent_default = self.events_sent.labels("default-port")
        self._sent_ip = self.events_sent.labels("ip-port")
        self.requests = m.counter("tlib_requests", "T-Library requests received",
                                  ("port", "request"))
        self.reserved_refusals = m.tally(
            "routes_to_reserved_agents",
            "Routes to an agent reserved for another call, by what the node did "
            "(refused: RequestRouteCall answered EventError 62; granted-late: the route "
            "waited for the owner's grant to this router and went ahead; held: a default "
            "routing waits for the reservation to end)", ("outcome",))
        #: routes to a reserved agent waiting for the owner's grant, by DN
        self._routes_awaiting_grant: dict[str, list[_WaitingRoute]] = {}

    def _monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        sip_port = self.app.port("sip-port") or 0
        await self.controller.start(self.host, sip_port)
        self.bound["sip-port"] = self.controller.sip_port
        bounds = {"output_high_water": self.tserver.tlib_output_high_water,
                  "max_output_bytes": self.tserver.tlib_max_output}
        self.default_server = TLibServer(
            _DefaultPort(self), application_name=self.app_name, port_name="default-port",
            metrics=self.metrics, logger=self.log, **bounds)
        _, self.bound["default-port"] = await self.default_server.listen(
            self.host, self.app.port("default-port") or 0)
        if "ip-port" in self.app.ports:
            self.ip_server = TLibServer(
                _IPPort(self), application_name=self.app_name, port_name="ip-port",
                metrics=self.metrics, logger=self.log, **bounds)
            _, self.bound["ip-port"] = await self.ip_server.listen(
                self.host, self.app.port("ip-port") or 0)
        self.management.add_health_check("listeners", self._health)
        self.management.add_status_page("/status/calls", self.controller.status_calls)
        self.management.add_status_page("/status/registrations",
                                        self.controller.status_registrations)
        self.management.add_status_page("/status/ipport", self.ipproxy.status)
        self.management.add_status_page("/status/ports", lambda: dict(self.bound))
        self.management.add_status_page("/status/outbound", self._outbound_status)
        self.management.add_status_page("/status/trunks", self._trunks_status)
        self.management.add_status_page(
            "/status/reservations",
            lambda: {"reserved": self.reserved.status(self._monotonic()),
                     "ended": dict(self.reserved.ended)})
        self.log.info("sip_server_listening", **{k.replace("-", "_"): v
                                                 for k, v in self.bound.items()})
        # Long-lived state (config, registrations, code objects) leaves the
        # collector's view, and young collections run less often: every call
        # makes thousands of short-lived objects and no cycles worth chasing
        # at that rate (docs/sip-stack.md, "Transactions").
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD_GEN0, 50, 100)

    def _outbound_status(self) -> dict[str, Any]:
        ctl = self.controller
        return {"role": "backup" if ctl.standby else "primary",
                "primary": self.primary_name,
                "proxies": ctl.outbound.status() if ctl.outbound is not None else None}

    def _trunks_status(self) -> dict[str, Any]:
        ctl = self.controller
        return {"trunks": ctl.trunks.status() if ctl.trunks is not None else [],
                "dial_plan": ctl.dialplan.status() if ctl.dialplan is not None else None}

    def _health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.controller.listening and bool(self.default_server and
                                                 self.default_server.serving)
        if self.ip_server is not None:
            ok = ok and self.ip_server.serving
        return ok, {"ports": dict(self.bound), "calls": len(self.controller.calls),
                    "t_controller": self.tc_conn is not None}

    async def stop(self) -> None:
        await self.controller.stop()
        for server in (self.default_server, self.ip_server):
            if server is not None:
                await server.close()

    # ------------------------------------------------------------------ default port

    def on_default_registered(self, conn: TLibConnection) -> None:
        if self.t_controller_name is not None and conn.application == self.t_controller_name:
            if self.tc_conn is not None and self.tc_conn is not conn:
                self.tc_conn.close()
            self.tc_conn = conn
            self.log.info("t_controller_linked", peer=conn.peer, application=conn.application)
            self.controller.announce_registrations(conn)

    def on_default_closed(self, conn: TLibConnection, reason: str) -> None:
        if conn is self.tc_conn:
            self.tc_conn = None
            self.log.warning("t_controller_link_lost", reason=reason)
        for clients in self.dn_clients.values():
            clients.discard(conn)
        for pending in [p for p in self.pending if p.conn is conn]:
            self._drop_pending(pending)

    def on_default_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        name = request.name
        self.requests.labels("default-port", name).inc()
        msg = request.message
        dn = msg.get("AttributeThisDN")
        if name == "RequestRegisterAddress":
            assert isinstance(dn, str)
            if dn not in self.config.dns:
                conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn}",
                                  AttributeThisDN=dn)
                return
            self.dn_clients.setdefault(dn, set()).add(conn)
            conn.answer(request, "EventRegistered", {"AttributeThisDN": dn})
            return
        if name == "RequestUnregisterAddress":
            assert isinstance(dn, str)
            clients = self.dn_clients.get(dn)
            if clients is None or conn not in clients:
                conn.answer_error(request, ErrorCode.UNKNOWN_DN,
                                  f"DN not registered by this client: {dn}",
                                  AttributeThisDN=dn)
                return
            clients.discard(conn)
            conn.answer(request, "EventUnregistered", {"AttributeThisDN": dn})
            return
        if name == "RequestQueryAddress":
            assert isinstance(dn, str)
            if dn not in self.config.dns:
                conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn}")
                return
            conn.answer(request, "EventAddressInfo", {
                "AttributeThisDN": dn, "AttributeAddressInfoType": "DNStatus",
                "AttributeAddressInfoStatus": 1 if self.controller.is_registered(dn) else 0})
            return
        if name == "RequestRouteCall":
            self._route_call(conn, request)
            return
        if name == "RequestReserveAgent":
            self._reservation_noted(conn, request)
            return
        if name == "RequestApplyTreatment":
            self.controller.apply_treatment(conn, request)  # docs/node.md, "Treatments"
            return
        if name in CALL_REQUESTS:
            self._call_request(conn, request)
            return
        conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                          f"Request not supported on this port: {name} (agent requests go "
                          "to the t-controller)")

    def _route_call(self, conn: TLibConnection, request: RequestReceived) -> None:
        msg = request.message
        rp, conn_id, dest = (msg["AttributeThisDN"], msg["AttributeConnID"],
                             msg["AttributeOtherDN"])
        if self.routing.waiting(conn_id) is None:
            conn.answer_error(request, ErrorCode.UNKNOWN_CONNID,
                              f"Unknown ConnID: {conn_id} is not waiting on a routing point",
                              AttributeThisDN=rp, AttributeConnID=conn_id)
            return
        if msg.get("AttributeRouteType") != "Reject" and dest not in self.config.dns \
                and not self.controller.routable(dest):
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dest}",
                              AttributeThisDN=rp, AttributeConnID=conn_id)
            return
        held = self.reserved.conflict(dest, conn_id, conn.application, self._monotonic()) \
            if msg.get("AttributeRouteType") != "Reject" else None
        if held is not None:
            self._await_grant(conn, request, rp, conn_id, held)
            return
        self._route_decided(conn, request, rp, conn_id, dest)

    def _route_decided(self, conn: TLibConnection, request: RequestReceived, rp: str,
                       conn_id: str, dest: str) -> None:
        msg = request.message
        decision = RouteDecision(dest, False, msg.get("AttributeUserData"),
                                 msg.get("AttributeRouteType"), (conn, request))
        if not self.routing.route(conn_id, rp, decision):
            conn.answer_error(request, ErrorCode.UNKNOWN_CONNID,
                              f"ConnID {conn_id} does not wait on routing point {rp}",
                              AttributeThisDN=rp, AttributeConnID=conn_id)

    def _await_grant(self, conn: TLibConnection, request: RequestReceived, rp: str,
                     conn_id: str, held: HeldAgent) -> None:
        """A route to an agent this node keeps reserved for another router waits up
        to ``GRANT_GRACE`` for the owner's grant to this router: the owner answers
        the router before its grant has come through the mesh and the node link,
        and the reservation kept here may be one the owner already counts as used
        up on another node. Refused (EventError 62) when no such grant comes."""
        waiting = _WaitingRoute(conn, request, rp, conn_id, held.dn)
        waiting.timer = asyncio.get_running_loop().call_later(
            GRANT_GRACE, self._grant_not_come, waiting)
        self._routes_awaiting_grant.setdefault(held.dn, []).append(waiting)
        self.log.info("route_awaits_reservation_grant", conn_id=conn_id, rp=rp, dn=held.dn,
                       router=conn.application, holder=held.holder)

    def _grant_not_come(self, waiting: _WaitingRoute) -> None:
        self._retry_route(waiting, final=True)

    def _unpark(self, waiting: _WaitingRoute) -> None:
        if waiting.timer is not None:
            waiting.timer.cancel()
        parked = self._routes_awaiting_grant.get(waiting.dn, [])
        if waiting in parked:
            parked.remove(waiting)
        if not parked:
            self._routes_awaiting_grant.pop(waiting.dn, None)

    def _retry_route(self, waiting: _WaitingRoute, *, final: bool) -> None:
        """The route of ``waiting`` again, now that a grant came or time is up; it
        keeps waiting (its timer running) while it still conflicts before then."""
        conn, request, rp, conn_id = waiting.conn, waiting.request, waiting.rp, waiting.conn_id
        held = self.reserved.conflict(waiting.dn, conn_id, conn.application, self._monotonic())
        if held is not None and not final and not conn.closed:
            return
        self._unpark(waiting)
        if conn.closed:
            return
        if self.routing.waiting(conn_id) is None:
            conn.answer_error(request, ErrorCode.UNKNOWN_CONNID,
                              f"Unknown ConnID: {conn_id} is not waiting on a routing point",
                              AttributeThisDN=rp, AttributeConnID=conn_id)
            return
        if held is None:
            self.reserved_refusals.labels("granted-late").inc()
            self.log.info("route_to_reserved_agent_granted_late", conn_id=conn_id, rp=rp,
                          dn=waiting.dn, router=conn.application)
            self._route_decided(conn, request, rp, conn_id, waiting.dn)
        else:
            self._refuse_reserved(conn, request, rp, conn_id, held)

    def _refuse_reserved(self, conn: TLibConnection, request: RequestReceived, rp: str,
                         conn_id: str, held: HeldAgent) -> None:
        """A route to an agent kept for another call: EventError 62; the call
        keeps waiting on its routing point for another route or router-timeout."""
        self.reserved_refusals.labels("refused").inc()
        self.log.info("route_to_reserved_agent_refused", conn_id=conn_id, rp=rp, dn=held.dn,
                      router=conn.application, holder=held.holder, reserved_for=held.conn_id)
        conn.answer_error(request, ErrorCode.AGENT_RESERVATION_CONFLICT,
                          f"Agent reservation conflict: the agent of DN {held.dn} is reserved "
                          f"for {held.holder}", AttributeThisDN=rp, AttributeConnID=conn_id)

    def _reservation_noted(self, conn: TLibConnection, request: RequestReceived) -> None:
        """The paired t-controller passes on a reservation its owner granted
        (module :mod:`daemons.sip_server.reservation`); routers reserve at the
        t-controllers, never here."""
        msg = request.message
        dn = msg["AttributeThisDN"]
        if conn is not self.tc_conn:
            conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                              "Request not supported on this port: RequestReserveAgent "
                              "(routers reserve agents at the t-controller)",
                              AttributeThisDN=dn)
            return
        ext = msg.get("AttributeExtensions") or {}
        holder = ext.get("holder") if isinstance(ext, dict) else None
        conn_id, agent_id = msg.get("AttributeConnID"), msg.get("AttributeAgentID")
        timeout = msg.get("AttributeTimeout")
        held = self.reserved.note(
            dn, holder=holder if isinstance(holder, str) else "?",
            conn_id=conn_id if isinstance(conn_id, str) else None,
            agent_id=agent_id if isinstance(agent_id, str) else None,
            seconds=float(timeout) if isinstance(timeout, (int, float)) else 0.0,
            now=self._monotonic())
        self.log.info("agent_reservation_noted", dn=dn, holder=held.holder,
                      reserved_for=held.conn_id, agent_id=held.agent_id, seconds=timeout)
        conn.answer(request, "EventACK", {"AttributeThisDN": dn})
        for waiting in list(self._routes_awaiting_grant.get(dn, [])):
            self._retry_route(waiting, final=False)

    def _call_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        msg = request.message
        dn = msg["AttributeThisDN"]
        if dn not in self.config.dns:
            conn.answer_error(request, ErrorCode.UNKNOWN_DN, f"Unknown DN: {dn}",
                              AttributeThisDN=dn)
            return
        try:
            self.controller.call_request(conn, request)
        except CallControlError as exc:
            conn.answer_error(request, exc.code, exc.text, AttributeThisDN=dn,
                              **({"AttributeConnID": msg["AttributeConnID"]}
                                 if "AttributeConnID" in msg else {}))

    # ------------------------------------------------------------------ answers

    def expect_answer(self, conn: TLibConnection, request: RequestReceived, dn: str,
                      conn_id: str, events: frozenset[str]) -> None:
        """The next of ``events`` on ``dn`` in call ``conn_id`` answers ``request``."""
        pending = PendingAnswer(conn, request.reference_id, dn, conn_id, events)
        pending.handle = asyncio.get_running_loop().call_later(
            ANSWER_TIMEOUT, self._answer_timeout, pending, request.name)
        self.pending.append(pending)

    def _answer_timeout(self, pending: PendingAnswer, name: str) -> None:
        if pending in self.pending:
            self.pending.remove(pending)
            pending.conn.answer_error(
                pending.reference_id, ErrorCode.INVALID_CALL_STATE,
                f"{name}: no reaction from the phone of DN {pending.dn} within "
                f"{ANSWER_TIMEOUT:g} s", AttributeThisDN=pending.dn,
                AttributeConnID=pending.conn_id)

    def fail_pending(self, conn_id: str, dn: str | None, code: ErrorCode, text: str) -> None:
        """Answer the requests still waiting on a call (or one DN of it) with EventError."""
        for pending in [p for p in self.pending if p.conn_id == conn_id
                        and (dn is None or p.dn == dn)]:
            self._drop_pending(pending)
            pending.conn.answer_error(pending.reference_id, code, text,
                                      AttributeThisDN=pending.dn, AttributeConnID=conn_id)

    def _drop_pending(self, pending: PendingAnswer) -> None:
        if pending.handle is not None:
            pending.handle.cancel()
        if pending in self.pending:
            self.pending.remove(pending)

    # ------------------------------------------------------------------ events

    def call_event(self, call: Call, name: str, this_dn: str | None, *,
                   other: str | None = None, role: str | None = None,
                   third: str | None = None, extra: dict[str, Any] | None = None,
                   observers: tuple[str, ...] = ()) -> None:
        """One call event on ``this_dn`` to the t-controller, the default-port
        clients registered on the DN (and on the ``observers`` DNs: the other
        party of a hold / retrieve) and the call's IPport client."""
        if this_dn is None or this_dn not in self.config.dns:
            return
        attrs: dict[str, Any] = {
            "AttributeThisDN": this_dn, "AttributeConnID": call.conn_id,
            "AttributeCallUUID": call.call_uuid, "AttributeCallType": call.call_type,
        }
        if call.ani:
            attrs["AttributeANI"] = call.ani
        if call.dnis:
            attrs["AttributeDNIS"] = call.dnis
        if other:
            attrs["AttributeOtherDN"] = other
        if role:
            attrs["AttributeThisDNRole"] = role
        if third:
            attrs["AttributeThirdPartyDN"] = third
        if call.user_data:
            attrs["AttributeUserData"] = dict(call.user_data)
        if extra:
            attrs.update(extra)
        answered: dict[TLibConnection, int] = {}
        for pending in list(self.pending):
            if pending.conn_id == call.conn_id and pending.dn == this_dn \
                    and name in pending.events and pending.conn not in answered:
                answered[pending.conn] = pending.reference_id
                self._drop_pending(pending)
        targets: list[TLibConnection] = []
        if self.tc_conn is not None:
            targets.append(self.tc_conn)
        for dn in (this_dn, *observers):
            for conn in self.dn_clients.get(dn, ()):
                if conn not in targets:
                    targets.append(conn)
        for conn in answered:
            if conn not in targets:
                targets.append(conn)
        for conn in targets:
            event = attrs
            if conn in answered:
                event = {**attrs, "AttributeReferenceID": answered[conn]}
            if conn.send_event(name, event, trusted=True) is not None:
                self._sent_default.inc()
        if self.ip_server is not None:
            call.ipport_client = self.ipproxy.assign(call.ipport_client, call.conn_id)
            if self.ipproxy.send(call.ipport_client, name, attrs, call.conn_id) is not None:
                self._sent_ip.inc()
        self.log.debug("tlib_call_event", tlib_event=name, dn=this_dn, conn_id=call.conn_id)

    def dn_event(self, name: str, dn: str, extensions: dict[str, Any] | None = None) -> None:
        """EventDNBackInService / EventDNOutOfService to the paired t-controller."""
        if self.tc_conn is None:
            return
        attrs: dict[str, Any] = {"AttributeThisDN": dn}
        if extensions:
            attrs["AttributeExtensions"] = extensions
        if self.tc_conn.send_event(name, attrs) is not None:
            self._sent_default.inc()

    def send_dn_event_to(self, conn: TLibConnection, name: str, dn: str,
                         extensions: dict[str, Any]) -> None:
        if conn.send_event(name, {"AttributeThisDN": dn,
                                  "AttributeExtensions": extensions}) is not None:
            self._sent_default.inc()

    def dn_type(self, dn: str) -> DnType | None:
        entry = self.config.dns.get(dn)
        return entry.type if entry is not None else None


# ---------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sip-server",
        help="run a cluster node's sip-server (Session Controller + Interaction Proxy)",
        description=(
            "A SIP Cluster node: registrar and B2BUA on sip-port, T-Library for routing "
            "clients and the t-controller on default-port, reporting clients on ip-port, "
            "health and metrics on http-port. Ports, DNs and options come from the "
            "cluster file."),
    )
    add_daemon_arguments(parser,
                         name_help="this sip-server's application name in the cluster file")
    parser.add_argument("--backlog-window", type=float, default=60.0, metavar="SECONDS",
                        help="how long IPport keeps events for a disconnected client")


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, "sip-server", lambda config: SipServer(
        config, args.name, backlog_window=args.backlog_window))
