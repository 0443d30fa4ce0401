"""``sipcluster feature-server``: a data centre's feature-server (docs/feature-server.md;
guide: "Configuring SIP Feature Server").

    sipcluster feature-server --config cluster.toml --name FS_dc1

Listens on the application's ``http-port``: ``/healthz``, ``/metrics``.
"""

from __future__ import annotations

import argparse
from typing import Any

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.runtime.service import Service, add_daemon_arguments, run_daemon

__all__ = ["FeatureServer", "add_parser", "run"]


class FeatureServer(Service):
    """The feature-server daemon (see module doc)."""

    kind = "feature_server"

    def __init__(self, config: ClusterConfig, name: str) -> None:
        super().__init__(app_name=name)
        self.config = config
        self.app = config.application(name, AppKind.FEATURE_SERVER)
        self.management_host = self.app.host
        self.management_port = self.app.port("http-port") or 0
        self.management.add_health_check("dial_plan", self._health)

    def _health(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "feature-server",
        help="run a data centre's feature-server (dial plan, trunks, provisioning)",
        description="The dial plan served over HTTP to the cluster nodes, its store and "
                    "the provisioning API, on the application's http-port.",
    )
    add_daemon_arguments(parser,
                         name_help="this feature-server's application name in the cluster file")


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, "feature-server", lambda config: FeatureServer(config, args.name))
