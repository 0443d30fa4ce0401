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
* ``http-port``: ``/healthz``, ``/metrics`` and ``/status/director`` (JSON
  for wallboards: queues, agents per site, decision time);
* ``director-port`` (optional, T-Library): reporting clients get every
  virtual queue's ``EventQueued``, ``EventDiverted`` and ``EventAbandoned``.

Each node keeps routing on its own while the director is down: its routing
points go to ``default-dn`` after ``router-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
from collections.abc import Mapping
from typing import Any

from daemons.cluster.config import AppKind, Application, ClusterConfig
from daemons.director.cli import print_status
from daemons.director.router import CALL_START, Router
from daemons.director.strategy import read_director_config
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

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        node_sites = {a.name: a.geo_location for a in self.config.by_kind(AppKind.SIP_SERVER)
                      if a.geo_location}
        timeouts = {a.name: self.config.tserver_for(a.name).router_timeout
                    for a in self.config.by_kind(AppKind.SIP_SERVER)}
        self.router = Router(self.settings, self, log=self.log, metrics=self.metrics,
                             node_sites=node_sites, router_timeouts=timeouts,
                             report=self._report)
        port = self.app.port("director-port")
        if port is not None:
            self.reporting = TLibServer(_ReportingPort(self), application_name=self.app_name,
                                        port_name="director-port", metrics=self.metrics,
                                        logger=self.log)
            await self.reporting.listen(self.host, port)
        for app in self.config.by_kind(AppKind.SIP_SERVER):
            self._tasks.append(asyncio.create_task(self._node_loop(app)))
        self._tasks.append(asyncio.create_task(self._t_controller_loop()))
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

    def _health(self) -> tuple[bool, dict[str, Any]]:
        ok = bool(self.nodes) and self.t_controller is not None
        return ok, {"nodes": sorted(self.nodes), "t_controller": self.t_controller_name}

    def status(self) -> dict[str, Any]:
        assert self.router is not None
        return {"application": self.app_name, "nodes": sorted(self.nodes),
                "t-controller": self.t_controller_name, **self.router.status()}

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
            client.add_listener(functools.partial(self._node_event, app.name))
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
            client.add_listener(self._agent_event)
            self.t_controller, self.t_controller_name = client, app.name
            self.log.info("t_controller_linked", t_controller=app.name, peer=client.peer,
                          agent_dns=len(self.agent_dns))
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
