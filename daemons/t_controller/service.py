"""``sipcluster t-controller``: the T-Controller beside one cluster node
(docs/node.md; guide: "T-Controller", "Smart Proxy").

Listeners, from the application's entry in the cluster file:

* ``tc-port`` (T-Library, TCport): agent desktops and smart clients
  (:mod:`daemons.t_controller.tcport`);
* ``smart-proxy-port`` (T-Library, legacy clients only): monitoring clients
  (:mod:`daemons.t_controller.smart_proxy`), when the entry has one;
* ``tc-tls-port``: TCport over TLS for desktops that ask for it, when the
  entry has one, with the certificate ``certs/NAME.pem`` beside the cluster
  file (``sipcluster certs issue NAME``);
* ``http-port``: ``/healthz`` (TCport listening, node link up), ``/metrics``,
  ``/status/peers`` (mesh links and latency polls),
  ``/status/dns``.

It connects to the ``default-port`` of its sip-server (the node link,
:mod:`daemons.t_controller.node_link`).
"""

from __future__ import annotations

import argparse
import ssl
from typing import Any

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.runtime.certs import CertError, certs_dir_for
from daemons.runtime.config import ConfigError
from daemons.runtime.service import Service, add_daemon_arguments, run_daemon
from daemons.runtime.tlib_server import TLibServer, tls_server_context
from daemons.t_controller.controller import TController
from daemons.t_controller.mesh import Mesh
from daemons.t_controller.node_link import NodeLink
from daemons.t_controller.peers import MeshOptions
from daemons.t_controller.requests import Requests
from daemons.t_controller.smart_proxy import ACCEPTED_CLIENT_TYPES, SmartProxy
from daemons.t_controller.status_publisher import StatusPublisher
from daemons.t_controller.tcport import TCPort

__all__ = ["TControllerService", "add_parser", "run"]


class TControllerService(Service):
    """One t-controller process."""

    kind = "t-controller"

    def __init__(self, config: ClusterConfig, name: str, *,
                 resync_grace: float | None = None,
                 mesh_options: dict[str, Any] | None = None) -> None:
        super().__init__(name)
        self.config = config
        self.app = config.application(name, AppKind.T_CONTROLLER)
        self.sip_server = config.sip_server_for(name)
        #: its node's [TServer] options (the T-Library output bounds of its ports)
        self.tserver = config.tserver_for(name)
        self.management_host = self.app.host
        self.management_port = self.app.port("http-port") or 0
        self._resync_grace = resync_grace
        self._mesh_options = dict(mesh_options or {})
        #: TCport over TLS for desktops that ask for it: the installation's
        #: certificate of this t-controller (``sipcluster certs issue NAME``)
        self.tls_context: ssl.SSLContext | None = None
        if self.app.port("tc-tls-port") is not None:
            try:
                self.tls_context = tls_server_context(certs_dir_for(config.file), name)
            except CertError as exc:
                raise ConfigError(config.file, f"applications.{name}.tc-tls-port",
                                  str(exc)) from exc
        self.tls_server: TLibServer | None = None
        self.tls_address: tuple[str, int] | None = None
        self.mesh: Mesh | None = None
        self.controller: TController | None = None
        self.node_link: NodeLink | None = None
        self.tcport: TCPort | None = None
        self.smart_proxy: SmartProxy | None = None
        self.tc_server: TLibServer | None = None
        self.sp_server: TLibServer | None = None
        self.tc_address: tuple[str, int] | None = None
        self.smart_proxy_address: tuple[str, int] | None = None
        self.status_publisher: StatusPublisher | None = None

    async def start(self) -> None:
        nodes = self.config.nodes
        kwargs: dict[str, Any] = {}
        if self._resync_grace is not None:
            kwargs["resync_grace"] = self._resync_grace
        mesh_options = MeshOptions.from_config(nodes, **self._mesh_options)
        controller = TController(self.config, self.app_name, metrics=self.metrics,
                                 mesh_options=mesh_options, **kwargs)
        self.controller = controller
        node_port = self.sip_server.port("default-port")
        assert node_port is not None  # required by the cluster file
        self.node_link = NodeLink(
            controller,
            host=self.sip_server.host,
            port=node_port,
            application_name=self.app_name,
            addp_timeout=float(nodes.addp_timeout),
            addp_remote_timeout=float(nodes.addp_remote_timeout),
        )
        requests = Requests(controller, self.node_link,
                            log=controller.log.bind(port_name="tc-port"),
                            metrics=self.metrics)
        self.mesh = Mesh(controller)
        self.tcport = TCPort(controller, requests, self.mesh)
        bounds = {"output_high_water": self.tserver.tlib_output_high_water,
                  "max_output_bytes": self.tserver.tlib_max_output}
        self.tc_server = TLibServer(
            self.tcport, application_name=self.app_name, port_name="tc-port",
            metrics=self.metrics, logger=self.log, **bounds)
        self.tc_address = await self.tc_server.listen(self.app.host, self.app.ports["tc-port"])
        tls_port = self.app.port("tc-tls-port")
        if tls_port is not None and self.tls_context is not None:
            self.tls_server = TLibServer(
                self.tcport, application_name=self.app_name, port_name="tc-tls-port",
                metrics=self.metrics, logger=self.log, **bounds)
            self.tls_address = await self.tls_server.listen(self.app.host, tls_port,
                                                            tls=self.tls_context)
        sp_port = self.app.port("smart-proxy-port")
        if sp_port is not None:
            self.smart_proxy = SmartProxy(controller, requests)
            self.sp_server = TLibServer(
                self.smart_proxy, application_name=self.app_name,
                port_name="smart-proxy-port", metrics=self.metrics, logger=self.log,
                accepted_client_types=ACCEPTED_CLIENT_TYPES, **bounds)
            self.smart_proxy_address = await self.sp_server.listen(self.app.host, sp_port)
        clients = self.metrics.gauge("tcontroller_clients", "Connected T-Library clients",
                                     ("port",))
        clients.labels("tc-port").set_function(lambda: len(controller.tcport_clients))
        clients.labels("smart-proxy-port").set_function(
            lambda: len(controller.smart_proxy_clients or ()))
        self.management.add_health_check("tc-port", self._tcport_health)
        self.management.add_health_check("node-link", self._link_health)
        self.management.add_status_page("/status/dns", controller.status)
        self.management.add_status_page("/status/clients", self._clients_status)
        self.management.add_status_page("/status/peers", self.mesh.status)
        self.node_link.start()
        self.mesh.start()
        # its agents' states to the status-aggregators (docs/status-aggregator.md)
        self.status_publisher = StatusPublisher.from_config(
            self.config, self.app_name, controller.agents, self.log)
        if self.status_publisher is not None:
            self.status_publisher.start()
        self.log.info("t_controller_started", tc_port=self.tc_address[1],
                      smart_proxy_port=self.smart_proxy_address[1]
                      if self.smart_proxy_address else None,
                      node=self.sip_server.name, node_port=node_port)

    async def stop(self) -> None:
        if self.status_publisher is not None:
            await self.status_publisher.stop()
        if self.mesh is not None:
            await self.mesh.stop()
        if self.smart_proxy is not None:
            await self.smart_proxy.stop_bulk_links()
        if self.node_link is not None:
            await self.node_link.stop()
        for server in (self.tc_server, self.sp_server, self.tls_server):
            if server is not None:
                await server.close()
        if self.controller is not None:
            self.controller.close()

    # -- health and status ---------------------------------------------------------
    def _tcport_health(self) -> tuple[bool, dict[str, Any]]:
        serving = self.tc_server is not None and self.tc_server.serving
        return serving, {"address": list(self.tc_address) if self.tc_address else None}

    def _link_health(self) -> tuple[bool, dict[str, Any]]:
        link = self.node_link
        up = link is not None and link.up
        return up, {"node": self.sip_server.name,
                    "connects": link.connects if link is not None else 0}

    def _clients_status(self) -> dict[str, Any]:
        return {
            "tc-port": self.tcport.describe() if self.tcport else None,
            "smart-proxy-port": self.smart_proxy.describe() if self.smart_proxy else None,
        }


# --------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "t-controller",
        help="run the T-Controller beside a cluster node (TCport, Smart Proxy)",
        description=(
            "The T-Controller of one cluster node: DN ownership, agent state, "
            "TCport for desktops and smart clients, SmartProxy port for monitoring "
            "clients; linked to its sip-server's default-port. Stops on SIGTERM."),
    )
    add_daemon_arguments(parser,
                         name_help="this t-controller's application name in the cluster file")


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, "t-controller", lambda config: TControllerService(config, args.name))
