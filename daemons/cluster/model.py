"""The cluster model: what a checked cluster file says, as frozen dataclasses.

The Switch with its application-level ``[TServer]`` options, the DNs (the SIP
Cluster Node DN and the SIP Outbound Proxy DN among them) and every
application, with the look-ups the daemons use (SIP Cluster Solution Guide,
"Configuring Switch and DN Objects for SIP Cluster", "Configuring SIP
Servers", "Configuring SIP Proxy"). Reading the file into this model is
:mod:`daemons.cluster.load`; the format is documented in docs/configuration.md.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from daemons.runtime.config import ConfigError
from protocols.sip.digest import LEGACY_USER_AGENTS

#: The cluster's private SIP header naming a dialog's node: the proxies add it
#: and route by it, the nodes set it on what they send (docs/sip-proxy.md).
NODE_HEADER = "X-SC-Node"

__all__ = [
    "NODE_HEADER",
    "AppKind",
    "Application",
    "ClusterConfig",
    "ClusterNodes",
    "Dn",
    "DnType",
    "OutboundProxy",
    "OwnershipKind",
    "Switch",
    "TServerOptions",
]


class DnType(StrEnum):
    """DN types of the switch (guide: "Configuring Switch and DN Objects")."""

    EXTENSION = "Extension"
    ACD_POSITION = "ACDPosition"
    ROUTING_POINT = "RoutingPoint"
    VIRTUAL_QUEUE = "VirtualQueue"
    TRUNK_GROUP = "TrunkGroup"
    TRUNK = "Trunk"
    VOIP_SERVICE = "VoIPService"


class AppKind(StrEnum):
    """What daemon an application entry describes."""

    SIP_SERVER = "sip-server"
    T_CONTROLLER = "t-controller"
    SIP_PROXY = "sip-proxy"
    FEATURE_SERVER = "feature-server"
    VQ_SIP_SERVER = "vq-sip-server"
    RTM_SERVER = "rtm-server"
    STATUS_AGGREGATOR = "status-aggregator"
    DIRECTOR = "director"
    COLLECTIVE = "collective"


class OwnershipKind(StrEnum):
    """How a DN gets an owner node (guide: "T-Controller DN Ownership").

    ``SIP``: contact is ``"*"``, the first node whose REGISTER succeeds owns it.
    ``TLIB``: any other contact, a ``RequestRegisterAddress`` from an
    application listed in ``dn-owner-applications`` establishes ownership.
    """

    SIP = "sip"
    TLIB = "t-library"


@dataclass(frozen=True)
class TServerOptions:
    """Application-level ``[TServer]`` options of a cluster node.

    Times are in seconds except ``auto-logout-timeout`` (minutes, as in SIP
    Server). ``sip_enable_strict_auth`` is ``None`` when not set at this level.
    """

    router_timeout: float = 10.0
    default_dn: str | None = None
    extn_no_answer_timeout: float = 12.0
    posn_no_answer_timeout: float = 12.0
    agent_no_answer_timeout: float = 12.0
    agent_no_answer_action: str = "notready"
    #: DNs tried in turn when the destination does not answer (guide: "No-Answer
    #: Supervision"; only the application level is supported in a cluster)
    extn_no_answer_overflow: tuple[str, ...] = ()
    posn_no_answer_overflow: tuple[str, ...] = ()
    agent_no_answer_overflow: tuple[str, ...] = ()
    after_routing_timeout: float = 18.0
    set_notready_on_busy: bool = True
    #: agent reservation (guide: "[agent-reservation] request-collection-time")
    request_collection_time: float = 0.3
    agent_reservation_timeout: float = 6.0
    #: s an agent stays out of routing after a call (after wrap-up-time)
    legal_guard_time: float = 0.0
    #: after-call work asked while idle lasts wrap-up-time; then Ready (or back)
    timed_acw_in_idle: bool = False
    acw_in_idle_force_ready: bool = True
    wrap_up_time: int = 0
    emulated_login_state: str = "not_ready"
    logout_on_disconnect: bool = False
    logout_on_out_of_service: bool = True
    auto_logout_timeout: int = 0
    auto_logout_ready: bool = True
    sip_enable_strict_auth: bool | None = None
    #: the Dial Plan DN (None: the feature-server DN of the node's geo-location)
    dial_plan: str | None = None
    #: trunks of the node's geo-location first (guide: "Configuring SIP Servers")
    find_trunk_by_location: bool = False
    #: never a trunk of another geo-location
    enable_strict_location_match: bool = False
    #: [call-cleanup]: stuck calls found, probed and cleared (seconds, 0 = off)
    periodic_check_tout: float = 600.0
    notify_idle_tout: float = 300.0
    cleanup_idle_tout: float = 3600.0
    #: reliable provisional responses (RFC 3262) relayed end to end, PRACK answered
    sip_enable_100rel: bool = True
    #: session timers (RFC 4028): the interval the node asks for (0: off), the least it takes
    sip_session_expires: int = 1800
    sip_min_se: int = 90
    #: T-Library output bounds per client, bytes: reading paused, client dropped
    tlib_output_high_water: int = 256 * 1024
    tlib_max_output: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Switch:
    """The SIP Cluster Switch: every cluster node serves this one switch."""

    name: str
    domain: str
    realm: str
    tserver: Mapping[str, Any]  # options given in [switch.tserver], by attribute name
    #: secret of the digest nonces, shared by every node (None: not configured)
    digest_secret: str | None = None
    #: digest algorithms the nodes accept and challenge with, preferred first (RFC 8760 §2.4)
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    #: (User-Agent pattern, algorithms offered to it): clients that cannot take
    #: the RFC 8760 offer (``[switch.digest-user-agents]``)
    digest_user_agents: tuple[tuple[str, tuple[str, ...]], ...] = LEGACY_USER_AGENTS
    #: name servers the daemons resolve SIP names with (RFC 3263), ``"HOST:PORT"``;
    #: empty: the host's resolv.conf
    dns_servers: tuple[str, ...] = ()

    def nonce_secret(self) -> bytes:
        """The key nodes sign digest nonces with (RFC 7616 §3.3: a nonce one node
        issued is accepted by every node of the switch). Without ``digest-secret``
        it is derived from the switch name and realm: stable, but guessable."""
        if self.digest_secret:
            return hashlib.sha256(b"sipcluster-digest\0" + self.digest_secret.encode()).digest()
        return hashlib.sha256(
            f"sipcluster-digest\0{self.name}\0{self.realm}".encode()).digest()


@dataclass(frozen=True)
class ClusterNodes:
    """The SIP Cluster Node DN (VoIP Service, ``service-type = sip-cluster-nodes``)."""

    dn: str
    applications: tuple[str, ...]
    dn_owner_applications: tuple[str, ...]
    siproxy_applications: tuple[str, ...]
    addp_trace: str = "full"
    addp_timeout: float = 7.0
    addp_remote_timeout: float = 11.0
    agent_state_auto_restore: bool = False
    replace_agent_phone: bool = False
    sip_enable_strict_auth: bool = False
    sipp_oos_recheck: bool = False
    switchover_on_sipp_oos: bool = False
    smart_proxy_enabled: bool = False
    tc_reconnect_timeout: int = 0
    tc_latency_poll_interval: float = 10.0


@dataclass(frozen=True)
class OutboundProxy:
    """The SIP Outbound Proxy DN (``service-type = sip-outbound-proxy``)."""

    dn: str
    contact: str
    external_contact: str | None
    oos_check: int
    oos_force: int
    sbc_contact: str | None = None


@dataclass(frozen=True)
class Dn:
    """One DN of the switch. ``options`` holds every DN-level option by its
    guide name, defaults filled in; common ones also have attributes."""

    number: str
    type: DnType
    service_type: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def password(self) -> str | None:
        value = self.options.get("password")
        return value if isinstance(value, str) else None

    @property
    def digest_algorithms(self) -> tuple[str, ...] | None:
        """The digest algorithms this account accepts, if narrower than the switch's."""
        value = self.options.get("digest-algorithms")
        return value if isinstance(value, tuple) else None

    @property
    def contact(self) -> str | None:
        value = self.options.get("contact")
        return value if isinstance(value, str) else None

    @property
    def geo_location(self) -> str | None:
        value = self.options.get("geo-location")
        return value if isinstance(value, str) else None

    @property
    def is_agent_dn(self) -> bool:
        return self.type in (DnType.EXTENSION, DnType.ACD_POSITION)

    @property
    def ownership_kind(self) -> OwnershipKind | None:
        """SIP-based when contact is ``"*"``, T-Library-based otherwise; None
        for DNs that have no owner node (routing points, services ...)."""
        if not self.is_agent_dn:
            return None
        return OwnershipKind.SIP if self.contact == "*" else OwnershipKind.TLIB


@dataclass(frozen=True)
class Application:
    """One daemon of the cluster."""

    name: str
    kind: AppKind
    host: str
    geo_location: str | None
    ports: Mapping[str, int]
    backup: str | None = None
    sip_server: str | None = None  # t-controller: the node it sits beside
    t_controller: str | None = None  # sip-server: filled from the t-controller side
    tserver: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def port(self, name: str) -> int | None:
        return self.ports.get(name)


@dataclass(frozen=True)
class AgentLogin:
    """An agent login of the switch (``[agent-logins.ID]``; guide: the Agent
    Login objects): the AttributeAgentID a desktop logs in with, and its
    password when one is configured (RequestAgentLogin must then carry it)."""

    agent_id: str
    password: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster file, checked."""

    file: str
    switch: Switch
    nodes: ClusterNodes
    outbound_proxy: OutboundProxy | None
    dns: Mapping[str, Dn]
    applications: Mapping[str, Application]
    agent_logins: Mapping[str, AgentLogin] = field(
        default_factory=lambda: MappingProxyType({}))

    # -- look-ups used by the daemons ---------------------------------------
    def application(self, name: str, kind: AppKind | None = None) -> Application:
        """The entry a daemon started with ``--name NAME`` runs as."""
        app = self.applications.get(name)
        if app is None:
            close = difflib.get_close_matches(name, sorted(self.applications), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(self.file, f"applications.{name}", "no such application" + hint)
        if kind is not None and app.kind is not kind:
            raise ConfigError(
                self.file,
                f"applications.{name}.kind",
                f"is {app.kind.value!r}, this daemon needs {kind.value!r}",
            )
        return app

    def by_kind(self, kind: AppKind, geo_location: str | None = None) -> list[Application]:
        return [
            a
            for a in self.applications.values()
            if a.kind is kind and (geo_location is None or a.geo_location == geo_location)
        ]

    def cluster_nodes(self, geo_location: str | None = None) -> list[Application]:
        """Primary sip-servers listed in ``applications`` of the SIP Cluster Node DN."""
        nodes = [self.applications[n] for n in self.nodes.applications]
        return [n for n in nodes if geo_location is None or n.geo_location == geo_location]

    def geo_locations(self) -> list[str]:
        return sorted({a.geo_location for a in self.applications.values() if a.geo_location})

    def tserver_for(self, name: str) -> TServerOptions:
        """Effective [TServer] options of a sip-server, or of a t-controller's
        sip-server: defaults, then [switch.tserver], then the application's own."""
        app = self.application(name)
        if app.kind is AppKind.T_CONTROLLER and app.sip_server is not None:
            app = self.applications[app.sip_server]
        merged = {**self.switch.tserver, **app.tserver}
        options = TServerOptions(**merged)
        if options.tlib_max_output < options.tlib_output_high_water:
            here = {"tlib_max_output", "tlib_output_high_water"} & set(app.tserver)
            key = f"applications.{app.name}.tserver" if here else "switch.tserver"
            raise ConfigError(self.file, f"{key}.tlib-max-output",
                              f"{options.tlib_max_output} is less than tlib-output-high-water "
                              f"({options.tlib_output_high_water})")
        return options

    def t_controller_for(self, sip_server: str) -> Application:
        app = self.application(sip_server, AppKind.SIP_SERVER)
        if app.t_controller is None:
            raise ConfigError(self.file, f"applications.{sip_server}", "has no t-controller")
        return self.applications[app.t_controller]

    def sip_server_for(self, t_controller: str) -> Application:
        app = self.application(t_controller, AppKind.T_CONTROLLER)
        assert app.sip_server is not None  # checked on load
        return self.applications[app.sip_server]

    def strict_auth(self, dn: str, application: str | None = None) -> bool:
        """``sip-enable-strict-auth`` for a DN as seen by a node: Extension DN,
        then the SIP Server application, then the SIP Cluster Node DN."""
        entry = self.dns.get(dn)
        if entry is not None:
            value = entry.options.get("sip-enable-strict-auth")
            if isinstance(value, bool):
                return value
        if application is not None:
            app_value = self.tserver_for(application).sip_enable_strict_auth
            if app_value is not None:
                return app_value
        return self.nodes.sip_enable_strict_auth

    def agent_dns(self) -> Iterator[Dn]:
        return (d for d in self.dns.values() if d.is_agent_dn)
