"""``sipcluster director``: routing without an outside router (docs/director.md;
guides: "Routing Principles", "Agent Reservation in SIP Cluster", Interaction
Director Monitored Server).

Wiring only (the policy is in :mod:`daemons.director.router`,
:mod:`daemons.director.queue` and :mod:`daemons.director.strategy`):

* a T-Library **routing client** of every sip-server's ``default-port``: it
  registers the strategies' routing points, takes their ``EventRouteRequest``
  and answers with ``RequestRouteCall``;
* a T-Library client of one t-controller's TCport (its own data centre's
  first, the others in turn when it is lost): it registers every agent DN
  (the events of the agents and of their calls come from the DNs' owners
  through the mesh) and sends ``RequestReserveAgent`` there, which reaches
  the DN's owner, the one authority;
* ``http-port``: ``/healthz``, ``/metrics``, ``/status/director`` (JSON
  for wallboards: queues, agents per site, monitored sites, decision time),
  the wallboard page and the strategies API (:mod:`daemons.director.web`);
* ``director-port`` (optional, T-Library): reporting clients get every
  virtual queue's ``EventQueued``, ``EventDiverted`` and ``EventAbandoned``;
  a Director Server's ``RequestQueryAddress`` gets this director's report as a
  Monitored Server (:mod:`daemons.director.sites`);
* a T-Library client of every ``monitored-servers`` entry's director-port,
  asking its report every ``report-interval``;
* the director store (:mod:`daemons.director.store`): strategies and skills
  changed through the HTTP API.

Each node keeps routing on its own while the director is down: its routing
points go to ``default-dn`` after ``router-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Mapping
from typing import Any

from daemons.cluster.config import AppKind, Application, ClusterConfig
from daemons.director.cli import print_status
from daemons.director.router import CALL_START, Router
from daemons.director.sites import ANY_SKILL, BadSiteReport, parse_report
from daemons.director.store import SKILLS, STRATEGY, Store, default_store, open_store
from daemons.director.strategy import (
    DirectorConfig,
    MonitoredServer,
    Strategy,
    read_director_config,
    read_skills,
    read_strategy,
    strategy_table,
)
from daemons.director.web import DirectorWeb, StoreRefused
from daemons.runtime.config import ConfigError, Section
from daemons.runtime.service import Service, add_daemon_arguments, cancel_and_wait, run_daemon
from daemons.runtime.tlib_client import TLibClient, TLibConnectionLost, TLibHandshakeError
from daemons.runtime.tlib_server import TLibConnection, TLibServer
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import RequestReceived

__all__ = ["Director", "add_parser", "run"]

#: Seconds between two connection attempts to a node or a t-controller.
RECONNECT_DELAY = 1.0
#: Seconds a request waits for its answer.
REQUEST_TIMEOUT = 5.0
#: seconds RequestApplyTreatment may take (the node's 15 s INVITE timeout, and a margin)
TREATMENT_TIMEOUT = 20.0
#: ADDP between the director and the daemons it watches (seconds).
ADDP_TIMEOUT, ADDP_REMOTE_TIMEOUT = 3.0, 5.0
_CALL_ENDS = frozenset({"EventReleased", "EventDiverted"})


class _ReportingPort:
    """TLibHandler of ``director-port``: reporting clients receive the virtual
    queues' events; they may register a queue's DN (answered), nothing else."""

    def __init__(self, director: Director) -> None:
        self.director = director

    def on_registered(self, conn: TLibConnection) -> None:
        self.director.reporting_clients.add(conn)

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        dn = request.message.get("AttributeThisDN")
        if request.name == "RequestQueryAddress":
            self.director.answer_site_query(conn, request)
            return
        if request.name in ("RequestRegisterAddress", "RequestUnregisterAddress"):
            if dn not in self.director.settings.strategies:
                conn.answer_error(request, ErrorCode.UNKNOWN_DN,
                                  f"Unknown DN: {str(dn)[:64]} is not a virtual queue of "
                                  "this director")
                return
            conn.answer(request, "EventRegistered" if request.name == "RequestRegisterAddress"
                        else "EventUnregistered", {"AttributeThisDN": dn})
            return
        conn.answer_error(request, ErrorCode.REQUEST_NOT_SUPPORTED,
                          f"Request not supported on this port: {request.name} (director-port "
                          "delivers the virtual queues' events)")

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        self.director.reporting_clients.discard(conn)


class Director(Service):
    """The director daemon (see module doc)."""

    kind = "director"

    def __init__(self, config: ClusterConfig, name: str) -> None:
        super().__init__(app_name=name)
        self.config = config
        self.app = config.application(name, AppKind.DIRECTOR)
        self.settings = read_director_config(config, self.app)
        #: the cluster file's strategies and skills, under the store's changes
        self.file_settings = self.settings
        self.store: Store | None = open_store(self.settings.store)
        self._store_lock = asyncio.Lock()
        self.web = DirectorWeb(self.metrics, app_name=name, status=self.status,
                               tables=self.tables, change=self.change, log=self.log)
        self.web.serve_on(self.management)
        self.host = self.app.host
        self.management_host = self.host
        self.management_port = self.app.port("http-port") or 0
        self.nodes: dict[str, TLibClient] = {}
        self.t_controller: TLibClient | None = None
        self.t_controller_name: str | None = None
        self.router: Router | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.agent_dns = sorted(d.number for d in config.agent_dns())
        self.reporting: TLibServer | None = None
        self.reporting_clients: set[TLibConnection] = set()
        m = self.metrics
        self.links_up = m.gauge("director_links_up", "T-Library links up, by kind", ("link",))
        self.site_reports = m.counter("director_site_reports", "Monitored servers' reports, "
                                      "by monitored server and outcome",
                                      ("monitored_server", "outcome"))

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self._open_store()
        node_sites = {a.name: a.geo_location for a in self.config.by_kind(AppKind.SIP_SERVER)
                      if a.geo_location}
        timeouts = {a.name: self.config.tserver_for(a.name).router_timeout
                    for a in self.config.by_kind(AppKind.SIP_SERVER)}
        self.router = Router(self.settings, self, log=self.log, metrics=self.metrics,
                             node_sites=node_sites, router_timeouts=timeouts,
                             report=self._report)
        port = self.app.port("director-port")
        if port is not None:
            # [switch.tserver]'s output bounds: a reporting client that does not read
            # is paused, then dropped, like a desktop on a node or a t-controller
            bounds = self.config.tserver_for(self.app_name)
            self.reporting = TLibServer(_ReportingPort(self), application_name=self.app_name,
                                        port_name="director-port", metrics=self.metrics,
                                        logger=self.log,
                                        output_high_water=bounds.tlib_output_high_water,
                                        max_output_bytes=bounds.tlib_max_output)
            await self.reporting.listen(self.host, port)
        for app in self.config.by_kind(AppKind.SIP_SERVER):
            self._tasks.append(asyncio.create_task(self._node_loop(app)))
        self._tasks.append(asyncio.create_task(self._t_controller_loop()))
        for monitored in self.settings.monitored_servers.values():
            self._tasks.append(asyncio.create_task(self._monitored_loop(monitored)))
        self.links_up.labels("node").set_function(lambda: float(len(self.nodes)))
        self.links_up.labels("t-controller").set_function(
            lambda: 1.0 if self.t_controller is not None else 0.0)
        self.management.add_health_check("links", self._health)
        self.management.add_status_page("/status/director", self.status)
        self.log.info("director_started", queues=sorted(self.settings.strategies),
                      routing_points=sorted(self.settings.by_routing_point),
                      agents=len(self.settings.skills))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        clients = [*self.nodes.values()]
        if self.t_controller is not None:
            clients.append(self.t_controller)
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        if self.router is not None:
            await self.router.close()
        if self.reporting is not None:
            await self.reporting.close()
        if self.store is not None:
            await self.store.close()

    def _health(self) -> tuple[bool, dict[str, Any]]:
        ok = bool(self.nodes) and self.t_controller is not None
        return ok, {"nodes": sorted(self.nodes), "t_controller": self.t_controller_name}

    def status(self) -> dict[str, Any]:
        assert self.router is not None
        return {"application": self.app_name, "nodes": sorted(self.nodes),
                "t-controller": self.t_controller_name, **self.router.status()}

    # -- the director store ---------------------------------------------------------------
    async def _open_store(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            await store.open()
            changes = await store.load()
        except Exception as exc:  # sqlite, asyncpg, OS: the store is unusable
            with contextlib.suppress(Exception):
                await store.close()
            self.store = None
            if self.settings.store != default_store(self.app_name):
                raise OSError(f"director store {self.settings.store}: {exc}") from exc
            self.log.warning("director_store_unavailable", store=self.settings.store,
                             error=str(exc))
            return
        tables = {q: strategy_table(s) for q, s in self.file_settings.strategies.items()}
        skills = {a: dict(v) for a, v in self.file_settings.skills.items()}
        skills.update({a: dict(v) for a, v in changes.skills.items()})
        for queue, body in changes.strategies.items():
            candidate = dict(tables)
            if body is None:
                candidate.pop(queue, None)
            else:
                candidate[queue] = dict(body)
            try:
                self.settings = self._build(candidate, skills)
                tables = candidate
            except ConfigError as exc:
                self.log.warning("director_stored_strategy_refused", queue=queue,
                                 reason=str(exc))
        self.settings = self._build(tables, skills)
        self.log.info("director_store_loaded", engine=store.engine,
                      strategies=len(changes.strategies), skills=len(changes.skills))

    def _build(self, tables: Mapping[str, Mapping[str, Any]],
               skills: Mapping[str, Mapping[str, int]]) -> DirectorConfig:
        """The settings with these strategy tables and skills, checked as the
        cluster file is (ConfigError names the table and the reason)."""
        levels = read_skills(Section(skills, file="director", path="skills"))
        strategies: dict[str, Strategy] = {}
        by_rp: dict[str, Strategy] = {}
        for queue, table in tables.items():
            strategy = read_strategy(
                self.config, Section(table, file="director", path=f"strategies.{queue}"),
                queue, levels, by_rp, app_name=self.app_name,
                monitored=bool(self.settings.monitored_servers))
            strategies[queue] = strategy
            by_rp.update(dict.fromkeys(strategy.routing_points, strategy))
        return self.settings.with_strategies(strategies, levels)

    def tables(self, kind: str) -> dict[str, Any]:
        """``GET /director/strategies`` and ``/director/skills``."""
        if kind == "skills":
            return {a: dict(v) for a, v in self.settings.skills.items()}
        return {q: strategy_table(s) for q, s in self.settings.strategies.items()}

    async def change(self, kind: str, name: str,
                     body: Mapping[str, Any] | None) -> Mapping[str, Any]:
        """A change from the HTTP API: checked, kept in the store, then in force."""
        if self.store is None:
            raise StoreRefused(503, f"no director store (store = {self.settings.store!r} "
                                    "could not be used): changes are refused")
        async with self._store_lock:
            tables = self.tables("strategies")
            skills = self.tables("skills")
            if kind == "skills":
                assert body is not None
                skills[name] = dict(body)
            elif body is None:
                if name not in tables:
                    raise StoreRefused(404, f"no strategy for virtual queue {name}")
                del tables[name]
            else:
                tables[name] = dict(body)
            try:
                settings = self._build(tables, skills)
            except ConfigError as exc:
                raise StoreRefused(400, str(exc)) from exc
            if kind == "skills":
                stored: Mapping[str, Any] | None = dict(settings.skills[name])
            else:
                stored = strategy_table(settings.strategies[name]) if body is not None else None
            try:
                await self.store.put(SKILLS if kind == "skills" else STRATEGY, name, stored,
                                     time.time())
            except Exception as exc:  # the change is not kept: not in force either
                self.log.error("director_store_failed", error=str(exc))
                raise StoreRefused(503, f"the director store failed: {exc}") from exc
            added = set(settings.by_routing_point) - set(self.settings.by_routing_point)
            self.settings = settings
            assert self.router is not None
            self.router.apply_config(settings)
            for client in self.nodes.values():
                for rp in sorted(added):
                    client.submit("RequestRegisterAddress", AttributeThisDN=rp)
            self.log.info("director_changed", kind=kind, name=name,
                          deleted=body is None and kind != "skills")
            return stored or {}

    # -- monitored servers ----------------------------------------------------------------
    def answer_site_query(self, conn: TLibConnection, request: RequestReceived) -> None:
        """``RequestQueryAddress`` from a Director Server: this site's report,
        for this application's name (the whole site) or one of its queues."""
        assert self.router is not None
        dn = request.message.get("AttributeThisDN")
        strategy = self.settings.strategies.get(dn) if isinstance(dn, str) else None
        if dn != self.app_name and strategy is None:
            conn.answer_error(request, ErrorCode.UNKNOWN_DN,
                              f"Unknown DN: {str(dn)[:64]} (ask for {self.app_name}, the "
                              "site, or one of its virtual queues)")
            return
        report = self.router.site_report()
        skill = (strategy.skill if strategy is not None else "") or ANY_SKILL
        conn.answer(request, "EventAddressInfo", {
            "AttributeThisDN": dn,
            "AttributeAddressInfoType": request.message.get(
                "AttributeAddressInfoType", "NumberOfAvailableAgentsInQueue"),
            "AttributeAddressInfoStatus": report.available.get(skill, 0),
            "AttributeExtensions": report.to_map()})

    async def _monitored_loop(self, monitored: MonitoredServer) -> None:
        """Ask one monitored server its report every ``report-interval``."""
        assert self.router is not None and self.router.sites is not None
        router, board = self.router, self.router.sites
        site = board.sites[monitored.name]
        interval = self.settings.report_interval
        while True:
            try:
                client = await TLibClient.connect(
                    monitored.host, monitored.port, self.app_name, "legacy",
                    addp_timeout=ADDP_TIMEOUT, addp_remote_timeout=ADDP_REMOTE_TIMEOUT,
                    connect_timeout=3.0, local_addr=(self.host, 0))
            except (OSError, TimeoutError, TLibHandshakeError, TLibConnectionLost):
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            site.link = True
            self.log.info("monitored_server_linked", monitored_server=monitored.name,
                          peer=client.peer)
            try:
                while True:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        answer = await client.request(
                            "RequestQueryAddress", AttributeThisDN=monitored.name,
                            AttributeAddressInfoType="NumberOfAvailableAgentsInQueue")
                    self._site_answer(monitored.name, answer)
                    await asyncio.sleep(interval)
            except (TLibConnectionLost, TimeoutError):
                pass
            finally:
                site.link = False
                await client.close()
            self.log.warning("monitored_server_link_lost", monitored_server=monitored.name,
                             reason=client.lost_reason)
            router.dispatch_soon()
            await asyncio.sleep(RECONNECT_DELAY)

    def _site_answer(self, name: str, answer: Mapping[str, Any]) -> None:
        assert self.router is not None and self.router.sites is not None
        try:
            if answer.get("message") != "EventAddressInfo":
                raise BadSiteReport(f"{answer.get('message')} "
                                    f"{answer.get('AttributeErrorCode', '')} "
                                    f"{answer.get('AttributeErrorMessage', '')}".strip())
            report = parse_report(answer.get("AttributeExtensions"))
        except BadSiteReport as exc:
            self.site_reports.labels(name, "refused").inc()
            self.router.sites.refused(name, str(exc))
            self.log.warning("site_report_refused", monitored_server=name, reason=str(exc))
            return
        self.site_reports.labels(name, "accepted").inc()
        self.router.on_site_report(name, report)

    def _report(self, name: str, attributes: dict[str, Any]) -> None:
        for conn in list(self.reporting_clients):
            conn.send_event(name, attributes)

    # -- the requests the router sends ------------------------------------------------
    async def reserve(self, dn: str, agent_id: str, conn_id: str,
                      priority: int) -> Mapping[str, Any]:
        client = self.t_controller
        if client is None:
            raise TLibConnectionLost("no t-controller link")
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await client.request(
                "RequestReserveAgent", AttributeThisDN=dn, AttributeAgentID=agent_id,
                AttributeConnID=conn_id, AttributePriority=priority)

    async def route(self, node: str, routing_point: str, conn_id: str,
                    dn: str) -> Mapping[str, Any]:
        client = self.nodes.get(node)
        if client is None:
            raise TLibConnectionLost(f"no link to {node}")
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await client.request("RequestRouteCall", AttributeThisDN=routing_point,
                                        AttributeConnID=conn_id, AttributeOtherDN=dn)

    async def apply_treatment(self, node: str, routing_point: str, conn_id: str,
                              treatment: str, parms: Mapping[str, str]) -> Mapping[str, Any]:
        client = self.nodes.get(node)
        if client is None:
            raise TLibConnectionLost(f"no link to {node}")
        # the node answers once the media server took the call (up to its
        # sip-invite-treatment-timeout): longer than a route
        async with asyncio.timeout(TREATMENT_TIMEOUT):
            return await client.request("RequestApplyTreatment", AttributeThisDN=routing_point,
                                        AttributeConnID=conn_id,
                                        AttributeTreatmentType=treatment,
                                        AttributeTreatmentParms=dict(parms))

    # -- links --------------------------------------------------------------------------
    async def _connect(self, app: Application, port_name: str) -> TLibClient | None:
        port = app.port(port_name)
        if port is None:
            return None
        try:
            return await TLibClient.connect(
                app.host, port, self.app_name, "legacy", addp_timeout=ADDP_TIMEOUT,
                addp_remote_timeout=ADDP_REMOTE_TIMEOUT, connect_timeout=3.0,
                local_addr=(self.host, 0))
        except (OSError, TimeoutError, TLibHandshakeError, TLibConnectionLost):
            return None

    async def _node_loop(self, app: Application) -> None:
        """Stay a routing client of one node's default port."""
        assert self.router is not None
        router = self.router
        rps = sorted(self.settings.by_routing_point)
        while True:
            client = await self._connect(app, "default-port")
            if client is None:
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            client.add_listener(functools.partial(self._node_event, app.name),
                                takes_unsolicited=True)
            try:
                for rp in rps:
                    answer = await asyncio.wait_for(
                        client.request("RequestRegisterAddress", AttributeThisDN=rp),
                        REQUEST_TIMEOUT)
                    if answer.get("message") != "EventRegistered":
                        self.log.warning("routing_point_refused", node=app.name, rp=rp,
                                         code=answer.get("AttributeErrorCode"),
                                         reason=answer.get("AttributeErrorMessage"))
                self.nodes[app.name] = client
                self.log.info("node_linked", node=app.name, peer=client.peer,
                              routing_points=rps)
                await client.wait_closed()
            except (TLibConnectionLost, TimeoutError):
                pass
            finally:
                self.nodes.pop(app.name, None)
                await client.close()
            self.log.warning("node_link_lost", node=app.name, reason=client.lost_reason)
            router.node_lost(app.name)
            await asyncio.sleep(RECONNECT_DELAY)

    def _node_event(self, node: str, event: Mapping[str, Any]) -> None:
        assert self.router is not None
        name = event.get("message")
        if name == "EventRouteRequest":
            self.router.on_route_request(node, event)
        elif name == "EventRouteUsed" and "AttributeReferenceID" not in event:
            self.router.on_route_used(event)
        elif name == "EventAbandoned":
            self.router.on_abandoned(event)

    def _t_controllers(self) -> list[Application]:
        """Its own data centre's t-controllers first."""
        tcs = list(self.config.by_kind(AppKind.T_CONTROLLER))
        geo = self.app.geo_location
        return sorted(tcs, key=lambda a: (a.geo_location != geo, a.name))

    async def _t_controller_loop(self) -> None:
        """Stay a client of one t-controller; the next one when it is lost."""
        assert self.router is not None
        router = self.router
        index = 0
        candidates = self._t_controllers()
        while True:
            app = candidates[index % len(candidates)]
            index += 1
            client = await self._connect(app, "tc-port")
            if client is None:
                await asyncio.sleep(RECONNECT_DELAY / len(candidates))
                continue
            index = candidates.index(app)  # once lost, the next one is tried first
            client.add_listener(self._agent_event, takes_unsolicited=True)
            self.t_controller, self.t_controller_name = client, app.name
            self.log.info("t_controller_linked", t_controller=app.name, peer=client.peer,
                          agent_dns=len(self.agent_dns))
            futures: list[asyncio.Future[Any]] = []
            try:
                futures = [client.submit("RequestRegisterAddress", AttributeThisDN=dn)
                           for dn in self.agent_dns]
                for future in futures:
                    router.on_registered(await asyncio.wait_for(future, REQUEST_TIMEOUT))
                await client.wait_closed()
            except (TLibConnectionLost, TimeoutError):
                pass
            finally:
                self.t_controller = None
                await client.close()
                # a link lost during the registrations fails every request still
                # waiting: those errors are this loss, already handled here
                for future in futures:
                    if not future.done():
                        future.cancel()
                    elif not future.cancelled():
                        future.exception()
            self.log.warning("t_controller_link_lost", t_controller=app.name,
                             reason=client.lost_reason)
            router.t_controller_lost()
            index += 1
            await asyncio.sleep(RECONNECT_DELAY)

    def _agent_event(self, event: Mapping[str, Any]) -> None:
        assert self.router is not None
        name = event.get("message")
        if not isinstance(name, str):
            return
        if name == "EventAgentReserved":
            if "AttributeReferenceID" not in event:  # not the answer to our own request
                self.router.on_reserved_elsewhere(event)
        elif name.startswith("EventAgent"):
            self.router.on_agent_event(name, event)
        elif name in CALL_START or name in _CALL_ENDS:
            self.router.on_call_event(name, event)
        elif name == "EventDNOutOfService":
            dn = event.get("AttributeThisDN")
            if isinstance(dn, str):
                self.router.pool.logout(dn)


# ---------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "director",
        help="run the director (virtual queues, skills, agent reservation), or ask its status",
        description=(
            "Routing without an outside router: a routing client of every node's default "
            "port that holds calls in virtual queues, picks agents by skill, idle time and "
            "site, reserves them at the t-controllers and routes. 'status' prints the "
            "running director's queues and agents."),
    )
    parser.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                        help="run the daemon (default) or print its status")
    add_daemon_arguments(parser, name_help="the director's application name in the cluster file")
    for action in parser._actions:
        if action.dest in ("config", "name"):
            # 'status' finds them on its own (the lab's cluster file, its one director)
            action.required = False
    parser.add_argument("--json", action="store_true", help="status: print the raw JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return print_status(args)
    if not args.config or not args.name:
        print("director: --config FILE and --name APP are required to run the daemon",
              file=sys.stderr)
        return 2
    return run_daemon(args, "director", lambda config: Director(config, args.name))
