"""The cluster file: one TOML file read by every daemon of a SIP Cluster.

It holds what the guide keeps in the configuration database (SIP Cluster
Solution Guide, "Configuring Switch and DN Objects for SIP Cluster",
"Configuring SIP Servers", "Configuring SIP Proxy"):

* ``[switch]`` -- the SIP Cluster Switch: name, SIP domain and digest realm,
  and ``[switch.tserver]``, the application-level ``[TServer]`` options shared
  by every cluster node (``router-timeout``, ``default-dn``, ``wrap-up-time`` ...);
* ``[dns.NUMBER]`` -- the DNs of the switch by number or name, with a ``type``
  (Extension, RoutingPoint, VoIPService ...) and the DN-level options; one
  VoIPService DN has ``service-type = "sip-cluster-nodes"`` (the SIP Cluster
  Node DN: ``applications``, ``dn-owner-applications``,
  ``agent-state-auto-restore``, ``tc-reconnect-timeout`` ...) and one has
  ``service-type = "sip-outbound-proxy"``;
* ``[applications.NAME]`` -- every daemon: ``kind``, ``host``,
  ``geo-location``, listening ports, HA ``backup``, the pairing of a
  t-controller with its sip-server, and per-application option overrides.

Loading goes through :mod:`daemons.runtime.config`: every error names the
file, the dotted key and the reason; unknown keys are refused with a
did-you-mean. Cross-checks that involve several entries (duplicate ports,
references to unknown applications, ``sip-enable-strict-auth`` violations)
are gathered and raised together as :class:`ClusterConfigError`.

This module is the one place the daemons import the cluster file from. The
model is :mod:`daemons.cluster.model`, the option tables
:mod:`daemons.cluster.schema`, reading the file :mod:`daemons.cluster.load`
and the cross-checks :mod:`daemons.cluster.checks`.

The format is documented in docs/configuration.md.
"""

from __future__ import annotations

from daemons.cluster.checks import ClusterConfigError
from daemons.cluster.load import load_cluster, parse_cluster
from daemons.cluster.model import (
    AgentLogin,
    AppKind,
    Application,
    ClusterConfig,
    ClusterNodes,
    Dn,
    DnType,
    OutboundProxy,
    OwnershipKind,
    Switch,
    TServerOptions,
)
from daemons.cluster.schema import APP_LEVEL_ONLY as APP_LEVEL_ONLY
from daemons.cluster.schema import CLUSTER_NODE_OPTIONS as CLUSTER_NODE_OPTIONS
from daemons.cluster.schema import DIGEST_ALGORITHMS as DIGEST_ALGORITHMS
from daemons.cluster.schema import DN_OPTIONS as DN_OPTIONS
from daemons.cluster.schema import OUTBOUND_PROXY_OPTIONS as OUTBOUND_PROXY_OPTIONS
from daemons.cluster.schema import PORTS as PORTS
from daemons.cluster.schema import SERVICE_OPTIONS as SERVICE_OPTIONS
from daemons.cluster.schema import SERVICE_TYPES as SERVICE_TYPES
from daemons.cluster.schema import SIPPROXY_OPTIONS as SIPPROXY_OPTIONS
from daemons.cluster.schema import TSERVER_OPTIONS as TSERVER_OPTIONS
from daemons.cluster.schema import Reader as Reader
from daemons.cluster.schema import Schema as Schema

__all__ = [
    "AgentLogin",
    "AppKind",
    "Application",
    "ClusterConfig",
    "ClusterConfigError",
    "ClusterNodes",
    "Dn",
    "DnType",
    "OutboundProxy",
    "OwnershipKind",
    "Switch",
    "TServerOptions",
    "load_cluster",
    "parse_cluster",
]
