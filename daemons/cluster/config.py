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

The format is documented in docs/configuration.md.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from daemons.runtime.config import (
    ConfigError,
    Section,
    is_host_name,
    is_ip_address,
    load_file,
)
from protocols.sip.digest import LEGACY_USER_AGENTS
from protocols.sip.errors import ParseError
from protocols.sip.uri import parse_uri

__all__ = [
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


class ClusterConfigError(ConfigError):
    """Several problems found by the cross-checks; ``problems`` lists each one.

    With a single problem the message is that problem's own message
    (``file: key: reason``); with several, one line per problem.
    """

    def __init__(self, file: str, problems: list[ConfigError]) -> None:
        self.problems = problems
        if len(problems) == 1:
            only = problems[0]
            super().__init__(file, only.key, only.reason)
        else:
            lines = "\n".join(f"  {p}" for p in problems)
            super().__init__(file, None, f"{len(problems)} problems:\n{lines}")


# --------------------------------------------------------------------------
# enums


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


class OwnershipKind(StrEnum):
    """How a DN gets an owner node (guide: "T-Controller DN Ownership").

    ``SIP``: contact is ``"*"``, the first node whose REGISTER succeeds owns it.
    ``TLIB``: any other contact, a ``RequestRegisterAddress`` from an
    application listed in ``dn-owner-applications`` establishes ownership.
    """

    SIP = "sip"
    TLIB = "t-library"


# --------------------------------------------------------------------------
# option schemas: name -> (reader, default)

Reader = Callable[[Section, str, Any], Any]


def _opt_str(s: Section, n: str, d: Any) -> Any:
    return s.get_optional_str(n)


def _bool(s: Section, n: str, d: Any) -> Any:
    return s.get_bool(n, d)


def _opt_bool(s: Section, n: str, d: Any) -> Any:
    return None if n not in s else s.get_bool(n)


def _list(s: Section, n: str, d: Any) -> Any:
    return tuple(s.get_str_list(n, list(d)))


def _nonneg(s: Section, n: str, d: Any) -> Any:
    return s.get_int(n, d, min=0)


def _seconds(s: Section, n: str, d: Any) -> Any:
    return s.get_float(n, d, min=0)


def _opt_hostport(s: Section, n: str, d: Any) -> Any:
    """``IP:PORT`` (``[v6]:PORT`` for IPv6) or absent; read as ``(address, port)``.

    An address, not a name: the daemon sends to it as it is."""
    value = s.get_optional_str(n)
    if value is None:
        return d
    host, colon, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise s.error(n, f"expected IP:PORT, got {value!r}")
    if not is_ip_address(host):
        raise s.error(n, f"expected IP:PORT, got {value!r}: {host!r} is not an IP address")
    return (host, int(port))


def _check_contact(s: Section, n: str, value: str) -> str:
    """A ``contact``: ``"*"`` (SIP registration), a SIP URI or ``HOST[:PORT]``.

    Its host may be a name (resolved through the name servers, RFC 3263), but
    it must be an IP address or have the form of a host name, so that a typo
    such as ``127.0.1.300`` is refused here and not by a resolver at run time."""
    text = value.strip()
    if text in ("", "*"):
        return value
    if not text.lower().startswith(("sip:", "sips:")):
        text = "sip:" + text
    try:
        host = parse_uri(text).host
    except ParseError as exc:
        raise s.error(n, f"expected a SIP URI or HOST[:PORT], got {value!r}: {exc}") from None
    if not is_ip_address(host) and not is_host_name(host):
        raise s.error(n, f"{host!r} in {value!r} is neither an IP address nor a host name")
    return value


def _contact(s: Section, n: str, d: Any) -> Any:
    return _check_contact(s, n, s.get_str(n))


def _opt_contact(s: Section, n: str, d: Any) -> Any:
    value = s.get_optional_str(n)
    return None if value is None else _check_contact(s, n, value)


def _range(lo: int, hi: int) -> Reader:
    def read(s: Section, n: str, d: Any) -> Any:
        return s.get_int(n, d, min=lo, max=hi)

    return read


def _choice(*choices: str) -> Reader:
    def read(s: Section, n: str, d: Any) -> Any:
        return s.get_choice(n, choices, d)

    return read


def _wrap_up(s: Section, n: str, d: Any) -> Any:
    value = s.raw(n, d)
    if isinstance(value, str) and value.strip().lower() == "untimed":
        raise s.error(
            n,
            "'untimed' after-call work is not supported in a SIP Cluster "
            "(guide: untimed-wrap-up-value is not supported); give seconds, 0 for none",
        )
    return s.get_int(n, d, min=0)


def _overflow(s: Section, n: str, d: Any) -> Any:
    """``*-no-answer-overflow``: DNs tried in turn after no answer; ``none`` = none."""
    items = s.get_str_list(n, list(d))
    if [i.lower() for i in items] == ["none"]:
        return ()
    for item in items:
        if not item or item.lower() in ("none", "recall", "release"):
            raise s.error(n, f"expected DNs separated by commas or 'none', got {item!r}")
    return tuple(items)


def _cti_control(s: Section, n: str, d: Any) -> Any:
    items = s.get_str_list(n, list(d))
    allowed = ("talk", "hold", "dtmf")
    for item in items:
        if item not in allowed:
            raise s.error(n, f"expected a list of {', '.join(allowed)}, got {item!r}")
    return tuple(items)


def _digest_algorithms(s: Section, n: str, d: Any) -> Any:
    """A list of digest algorithms (RFC 8760 §2.2), preferred first; None when not given
    and ``d`` is None."""
    if d is None and n not in s:
        return None
    algorithms = tuple(s.get_str_list(n, list(d or ())))
    for algorithm in algorithms:
        if algorithm not in DIGEST_ALGORITHMS:
            raise s.error(n, f"expected some of {', '.join(DIGEST_ALGORITHMS)}, got {algorithm!r}")
    if not algorithms:
        raise s.error(n, "must name at least one algorithm")
    if len(set(algorithms)) != len(algorithms):
        raise s.error(n, "names an algorithm twice")
    return algorithms


Schema = dict[str, tuple[Reader, Any]]

#: ``[switch] digest-algorithms`` values (RFC 7616 §3.4 / RFC 8760 §2.2)
DIGEST_ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")

#: Application-level [TServer] options (guide: "Configuring SIP Servers",
#: sample [TServer] section; "Partially supported SIP Server functionality").
TSERVER_OPTIONS: Schema = {
    "router-timeout": (_seconds, 10.0),
    "default-dn": (_opt_str, None),
    "extn-no-answer-timeout": (_seconds, 12.0),
    "posn-no-answer-timeout": (_seconds, 12.0),
    "agent-no-answer-timeout": (_seconds, 12.0),
    "agent-no-answer-action": (_choice("none", "notready", "logout"), "notready"),
    "extn-no-answer-overflow": (_overflow, ()),
    "posn-no-answer-overflow": (_overflow, ()),
    "agent-no-answer-overflow": (_overflow, ()),
    "after-routing-timeout": (_seconds, 18.0),
    "set-notready-on-busy": (_bool, True),
    "wrap-up-time": (_wrap_up, 0),
    "emulated-login-state": (_choice("ready", "not_ready"), "not_ready"),
    "logout-on-disconnect": (_bool, False),
    "logout-on-out-of-service": (_bool, True),
    "auto-logout-timeout": (_nonneg, 0),
    "auto-logout-ready": (_bool, True),
    "sip-enable-strict-auth": (_opt_bool, None),
}

#: Options of the SIP Cluster Node DN (service-type = sip-cluster-nodes).
CLUSTER_NODE_OPTIONS: Schema = {
    "applications": (_list, ()),
    "dn-owner-applications": (_list, ()),
    "siproxy-applications": (_list, ()),
    "addp-trace": (_choice("off", "local", "remote", "full"), "full"),
    "addp-timeout": (_seconds, 7.0),
    "addp-remote-timeout": (_seconds, 11.0),
    "agent-state-auto-restore": (_bool, False),
    "replace-agent-phone": (_bool, False),
    "sip-enable-strict-auth": (_bool, False),
    "sipp-oos-recheck": (_bool, False),
    "switchover-on-sipp-oos": (_bool, False),
    "smart-proxy-enabled": (_bool, False),
    "tc-reconnect-timeout": (_range(0, 60), 0),
    "tc-latency-poll-interval": (_seconds, 10.0),
}

#: Options of the SIP Outbound Proxy DN (service-type = sip-outbound-proxy).
OUTBOUND_PROXY_OPTIONS: Schema = {
    "contact": (_contact, None),
    "external-contact": (_opt_contact, None),
    "oos-check": (_nonneg, 10),
    "oos-force": (_nonneg, 2),
}

_EXTENSION_OPTIONS: Schema = {
    "password": (_opt_str, None),
    "contact": (_opt_contact, None),
    "dual-dialog-enabled": (_bool, True),
    "make-call-rfc3725-flow": (_range(0, 1), 1),
    "refer-enabled": (_bool, False),
    "use-register-for-service-state": (_bool, True),
    "use-contact-as-dn": (_bool, True),
    "sip-ring-tone-mode": (_range(0, 2), 1),
    "sip-cti-control": (_cti_control, ()),
    "sip-enable-strict-auth": (_opt_bool, None),
    "digest-algorithms": (_digest_algorithms, None),
    "record": (_bool, False),
    "geo-location": (_opt_str, None),
}

_GATEWAY_OPTIONS: Schema = {
    "contact": (_opt_contact, None),
    "geo-location": (_opt_str, None),
    "dual-dialog-enabled": (_bool, False),
    "oos-check": (_nonneg, 0),
    "oos-force": (_nonneg, 0),
    "oos-error-check": (_bool, False),
    "oos-options-max-forwards": (_nonneg, 0),
    "prefix": (_opt_str, None),
    "priority": (_nonneg, 0),
    "refer-enabled": (_bool, False),
    "sip-proxy-headers-enabled": (_bool, False),
    "sip-ring-tone-mode": (_range(0, 2), 1),
    "make-call-rfc3725-flow": (_range(0, 1), 1),
}

DN_OPTIONS: dict[DnType, Schema] = {
    DnType.EXTENSION: _EXTENSION_OPTIONS,
    DnType.ACD_POSITION: _EXTENSION_OPTIONS,
    DnType.ROUTING_POINT: {"default-dn": (_opt_str, None), "geo-location": (_opt_str, None)},
    DnType.VIRTUAL_QUEUE: {"geo-location": (_opt_str, None)},
    DnType.TRUNK_GROUP: {"contact": (_opt_contact, None), "geo-location": (_opt_str, None)},
    DnType.TRUNK: _GATEWAY_OPTIONS,
}

#: VoIP Service DNs other than the two cluster services (msml, softswitch,
#: feature-server): the guide's options for those services.
SERVICE_OPTIONS: Schema = {
    **_GATEWAY_OPTIONS,
    "cpd-capability": (_opt_str, None),
    "ring-tone-on-make-call": (_bool, True),
    "sip-uri-params": (_opt_str, None),
    "subscription-id": (_opt_str, None),
    "record": (_bool, False),
    "sip-error-conversion": (_opt_str, None),
    "url": (_opt_str, None),
}
SERVICE_TYPES = (
    "sip-cluster-nodes",
    "sip-outbound-proxy",
    "msml",
    "softswitch",
    "feature-server",
)

#: Options the guide lists as supported only at application level: a DN-level
#: value is refused with that reason rather than "unknown option".
APP_LEVEL_ONLY = {
    "wrap-up-time",
    "auto-logout-timeout",
    "auto-logout-ready",
    "logout-on-disconnect",
    "emulated-login-state",
    "agent-no-answer-timeout",
    "agent-no-answer-action",
    "agent-no-answer-overflow",
}

#: [applications.NAME.sipproxy] (guide: "Configuring SIP Proxy").
SIPPROXY_OPTIONS: Schema = {
    "oos-check": (_nonneg, 5),
    "oos-force": (_nonneg, 5),
    "registrar-default-timeout": (_nonneg, 140),
    # where MWI SUBSCRIBEs go; absent: the feature-server of the geo-location
    "feature-server-address": (_opt_hostport, None),
}

#: Ports per application kind: (required, optional).
PORTS: dict[AppKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    AppKind.SIP_SERVER: (
        ("sip-port", "default-port"),
        ("ip-port", "http-port", "management-port"),
    ),
    AppKind.T_CONTROLLER: (("tc-port",), ("smart-proxy-port", "http-port")),
    AppKind.SIP_PROXY: (
        ("sip-port",),
        ("replication-port", "default-port", "http-port", "mgmt-port"),
    ),
    AppKind.FEATURE_SERVER: (("http-port",), ("sip-port", "management-port")),
    AppKind.VQ_SIP_SERVER: (("default-port",), ("sip-port", "http-port", "management-port")),
}


def _attr(option: str) -> str:
    return option.replace("-", "_")


def _read_schema(section: Section, schema: Schema, *, only_given: bool = False) -> dict[str, Any]:
    """Read every option of ``schema`` (or only those present) into attr names."""
    values: dict[str, Any] = {}
    for name, (reader, default) in schema.items():
        if only_given and name not in section:
            continue
        values[_attr(name)] = reader(section, name, default)
    return values


def _check_unknown(section: Section, allowed: set[str], *, dn_level: bool = False) -> None:
    for name in section.keys():
        if name in allowed:
            continue
        if dn_level and name in APP_LEVEL_ONLY:
            raise section.error(
                name,
                "supported only at application level in a SIP Cluster (guide: "
                "'Partially supported SIP Server functionality'); set it in [switch.tserver]",
            )
        section.check_unknown(allowed)


def _frozen_map(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(data))


# --------------------------------------------------------------------------
# the model


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
    wrap_up_time: int = 0
    emulated_login_state: str = "not_ready"
    logout_on_disconnect: bool = False
    logout_on_out_of_service: bool = True
    auto_logout_timeout: int = 0
    auto_logout_ready: bool = True
    sip_enable_strict_auth: bool | None = None


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
class ClusterConfig:
    """The whole cluster file, checked."""

    file: str
    switch: Switch
    nodes: ClusterNodes
    outbound_proxy: OutboundProxy | None
    dns: Mapping[str, Dn]
    applications: Mapping[str, Application]

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
        return TServerOptions(**merged)

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


# --------------------------------------------------------------------------
# loading


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and check a cluster file; :class:`ConfigError` names file, key, reason."""
    return parse_cluster(load_file(path))


def parse_cluster(root: Section) -> ClusterConfig:
    """Build the model from an already loaded top-level section."""
    _check_unknown(root, {"switch", "dns", "applications"})
    switch = _parse_switch(root.section("switch", required=True))
    dns, nodes, outbound = _parse_dns(root)
    apps = _parse_applications(root)
    config = ClusterConfig(
        file=root.file,
        switch=switch,
        nodes=nodes,
        outbound_proxy=outbound,
        dns=_frozen_map(dns),
        applications=_frozen_map(apps),
    )
    problems = _cross_check(root, config)
    if problems:
        raise ClusterConfigError(root.file, problems)
    return config


def _parse_switch(s: Section) -> Switch:
    name = s.get_str("name")
    domain = s.get_str("domain")
    realm = s.get_str("realm", domain)
    digest_secret = s.get_optional_str("digest-secret")
    if digest_secret is not None and len(digest_secret) < 16:
        raise s.error("digest-secret", "must be at least 16 characters")
    algorithms = _digest_algorithms(s, "digest-algorithms", ("SHA-256", "MD5"))
    user_agents = _digest_user_agents(s, algorithms)
    dns_servers = tuple(s.get_str_list("dns-servers", []))
    for server in dns_servers:
        if not _is_nameserver(server):
            raise s.error("dns-servers",
                          f"expected HOST or HOST:PORT with an IP address, got {server!r}")
    tserver = s.section("tserver")
    given = _read_schema(tserver, TSERVER_OPTIONS, only_given=True)
    _check_unknown(tserver, set(TSERVER_OPTIONS))
    _check_unknown(s, {"name", "domain", "realm", "digest-secret", "digest-algorithms",
                       "digest-user-agents", "dns-servers", "tserver"})
    if not name:
        raise s.error("name", "must not be empty")
    return Switch(name=name, domain=domain, realm=realm, tserver=_frozen_map(given),
                  digest_secret=digest_secret, digest_algorithms=algorithms,
                  digest_user_agents=user_agents,
                  dns_servers=dns_servers)


def _digest_user_agents(
    s: Section, accepted: tuple[str, ...]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[switch.digest-user-agents]``: User-Agent pattern -> algorithms offered to it.
    Absent: the built-in list of clients known to break on the RFC 8760 offer."""
    if "digest-user-agents" not in s:
        return LEGACY_USER_AGENTS
    table = s.section("digest-user-agents")
    result = []
    for pattern in table.keys():
        algorithms = _digest_algorithms(table, pattern, ())
        extra = [a for a in algorithms if a not in accepted]
        if extra:
            raise table.error(pattern, f"{', '.join(extra)} not in [switch] digest-algorithms")
        result.append((pattern, algorithms))
    return tuple(result)


def _is_nameserver(text: str) -> bool:
    """``"127.0.1.53"``, ``"127.0.1.53:5300"`` or ``"[::1]:5300"``: an IP address and a port."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return port.isdigit() and 0 < int(port) < 65536


def _parse_dns(root: Section) -> tuple[dict[str, Dn], ClusterNodes, OutboundProxy | None]:
    dns: dict[str, Dn] = {}
    nodes: ClusterNodes | None = None
    outbound: OutboundProxy | None = None
    dn_tables = root.sections("dns")
    for number, s in dn_tables.items():
        if not number or any(c.isspace() for c in number):
            raise s.error(None, "a DN number or name must be non-empty without spaces")
        choices = tuple(t.value for t in DnType)
        dn_type = DnType(s.get_choice("type", choices))
        service_type: str | None = None
        if dn_type is DnType.VOIP_SERVICE:
            service_type = s.get_choice("service-type", SERVICE_TYPES)
            if service_type == "sip-cluster-nodes":
                if nodes is not None:
                    raise s.error(
                        "service-type",
                        f"a second sip-cluster-nodes DN (the first is dns.{nodes.dn})",
                    )
                values = _read_schema(s, CLUSTER_NODE_OPTIONS)
                _check_unknown(s, {"type", "service-type", *CLUSTER_NODE_OPTIONS})
                if not values["applications"]:
                    raise s.error("applications", "required: the cluster's primary sip-servers")
                nodes = ClusterNodes(dn=number, **values)
                options = {k: s.raw(k) for k in s.keys() if k not in ("type", "service-type")}
            elif service_type == "sip-outbound-proxy":
                if outbound is not None:
                    raise s.error(
                        "service-type",
                        f"a second sip-outbound-proxy DN (the first is dns.{outbound.dn})",
                    )
                values = _read_schema(s, OUTBOUND_PROXY_OPTIONS)
                _check_unknown(s, {"type", "service-type", *OUTBOUND_PROXY_OPTIONS})
                outbound = OutboundProxy(dn=number, **values)
                options = {k: s.raw(k) for k in s.keys() if k not in ("type", "service-type")}
            else:
                options = _read_named(s, SERVICE_OPTIONS)
                _check_unknown(s, {"type", "service-type", *SERVICE_OPTIONS}, dn_level=True)
        else:
            schema = DN_OPTIONS[dn_type]
            options = _read_named(s, schema)
            _check_unknown(s, {"type", *schema}, dn_level=True)
        dns[number] = Dn(
            number=number,
            type=dn_type,
            service_type=service_type,
            options=_frozen_map(options),
        )
    if nodes is None:
        raise root.error(
            "dns",
            'no SIP Cluster Node DN: add a VoIPService DN with service-type = "sip-cluster-nodes"',
        )
    return dns, nodes, outbound


def _read_named(s: Section, schema: Schema) -> dict[str, Any]:
    return {name: reader(s, name, default) for name, (reader, default) in schema.items()}


def _parse_applications(root: Section) -> dict[str, Application]:
    apps: dict[str, Application] = {}
    for name, s in root.sections("applications").items():
        kind = AppKind(s.get_choice("kind", tuple(k.value for k in AppKind)))
        host = s.get_ip_address("host")
        geo = s.get_optional_str("geo-location")
        required, optional = PORTS[kind]
        ports: dict[str, int] = {}
        for port_name in required:
            ports[port_name] = s.get_port(port_name)
        for port_name in optional:
            if port_name in s:
                ports[port_name] = s.get_port(port_name)
        allowed = {"kind", "host", "geo-location", *required, *optional}
        backup: str | None = None
        sip_server: str | None = None
        tserver: dict[str, Any] = {}
        options: dict[str, Any] = {}
        if kind in (AppKind.SIP_SERVER, AppKind.VQ_SIP_SERVER):
            backup = s.get_optional_str("backup")
            allowed.add("backup")
        if kind is AppKind.SIP_SERVER:
            ts = s.section("tserver")
            tserver = _read_schema(ts, TSERVER_OPTIONS, only_given=True)
            _check_unknown(ts, set(TSERVER_OPTIONS))
            allowed.add("tserver")
        elif kind is AppKind.T_CONTROLLER:
            sip_server = s.get_str("sip-server")
            allowed.add("sip-server")
        elif kind is AppKind.SIP_PROXY:
            sp = s.section("sipproxy")
            options = _read_named(sp, SIPPROXY_OPTIONS)
            _check_unknown(sp, set(SIPPROXY_OPTIONS))
            allowed.add("sipproxy")
        else:
            # feature-server, vq-sip-server: their own daemons check these
            opts = s.section("options")
            options = {k: opts.raw(k) for k in opts.keys()}
            allowed.add("options")
        if kind in (AppKind.SIP_SERVER, AppKind.SIP_PROXY) and geo is None:
            raise s.error("geo-location", "required for a " + kind.value)
        _check_unknown(s, allowed)
        apps[name] = Application(
            name=name,
            kind=kind,
            host=host,
            geo_location=geo,
            ports=_frozen_map(ports),
            backup=backup,
            sip_server=sip_server,
            tserver=_frozen_map(tserver),
            options=_frozen_map(options),
        )
    # pair each sip-server with the t-controller that names it
    for tc in [a for a in apps.values() if a.kind is AppKind.T_CONTROLLER]:
        target = apps.get(tc.sip_server or "")
        if target is not None and target.kind is AppKind.SIP_SERVER and target.t_controller is None:
            apps[target.name] = replace(target, t_controller=tc.name)
            if tc.geo_location is None:
                apps[tc.name] = replace(tc, geo_location=target.geo_location)
    return apps


# --------------------------------------------------------------------------
# cross-checks


def _cross_check(root: Section, cfg: ClusterConfig) -> list[ConfigError]:
    problems: list[ConfigError] = []
    file = root.file
    apps = cfg.applications

    def problem(key: str, reason: str) -> None:
        problems.append(ConfigError(file, key, reason))

    def hint(name: str, names: Iterable[str]) -> str:
        close = difflib.get_close_matches(name, sorted(names), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    nodes_key = f"dns.{cfg.nodes.dn}"
    # SIP Cluster Node DN: applications are primary sip-servers
    backups = {a.backup: a.name for a in apps.values() if a.backup}
    for name in cfg.nodes.applications:
        app = apps.get(name)
        if app is None:
            problem(f"{nodes_key}.applications", f"unknown application {name!r}" + hint(name, apps))
        elif app.kind is not AppKind.SIP_SERVER:
            problem(
                f"{nodes_key}.applications", f"{name!r} is a {app.kind.value}, not a sip-server"
            )
        elif name in backups:
            problem(
                f"{nodes_key}.applications",
                f"{name!r} is the backup of {backups[name]!r}: list primaries only",
            )
    for name in cfg.nodes.siproxy_applications:
        app = apps.get(name)
        if app is None:
            problem(
                f"{nodes_key}.siproxy-applications",
                f"unknown application {name!r}" + hint(name, apps),
            )
        elif app.kind is not AppKind.SIP_PROXY:
            problem(
                f"{nodes_key}.siproxy-applications",
                f"{name!r} is a {app.kind.value}, not a sip-proxy",
            )
    for app in cfg.by_kind(AppKind.SIP_PROXY):
        if app.name not in cfg.nodes.siproxy_applications:
            problem(
                f"{nodes_key}.siproxy-applications",
                f"sip-proxy {app.name!r} is not listed (every SIP Proxy must be)",
            )
    for app in cfg.by_kind(AppKind.SIP_SERVER):
        if app.name in cfg.nodes.applications or app.name in backups:
            continue
        problem(
            f"{nodes_key}.applications",
            f"sip-server {app.name!r} is neither listed nor the backup of a listed one",
        )
    if cfg.nodes.switchover_on_sipp_oos and not cfg.nodes.sipp_oos_recheck:
        problem(f"{nodes_key}.switchover-on-sipp-oos", "requires sipp-oos-recheck = true")

    # HA pairs
    seen_backup: dict[str, str] = {}
    for app in apps.values():
        if app.backup is None:
            continue
        key = f"applications.{app.name}.backup"
        other = apps.get(app.backup)
        if other is None:
            problem(key, f"unknown application {app.backup!r}" + hint(app.backup, apps))
            continue
        if other.name == app.name:
            problem(key, "an application cannot be its own backup")
        elif other.kind is not app.kind:
            problem(key, f"{other.name!r} is a {other.kind.value}, not a {app.kind.value}")
        elif other.backup is not None:
            problem(key, f"{other.name!r} has a backup itself: a pair is primary and backup")
        elif other.geo_location != app.geo_location:
            problem(
                key,
                f"{other.name!r} is in geo-location {other.geo_location!r}, "
                f"the primary in {app.geo_location!r}",
            )
        if other.name in seen_backup:
            problem(key, f"{other.name!r} is already the backup of {seen_backup[other.name]!r}")
        seen_backup[other.name] = app.name

    # t-controller <-> sip-server pairing
    paired: dict[str, str] = {}
    for tc in cfg.by_kind(AppKind.T_CONTROLLER):
        key = f"applications.{tc.name}.sip-server"
        target = apps.get(tc.sip_server or "")
        if target is None:
            problem(key, f"unknown application {tc.sip_server!r}" + hint(tc.sip_server or "", apps))
            continue
        if target.kind is not AppKind.SIP_SERVER:
            problem(key, f"{target.name!r} is a {target.kind.value}, not a sip-server")
            continue
        if target.name in paired:
            problem(key, f"{target.name!r} already has the t-controller {paired[target.name]!r}")
            continue
        paired[target.name] = tc.name
        if tc.geo_location != target.geo_location:
            problem(
                f"applications.{tc.name}.geo-location",
                f"{tc.geo_location!r} differs from its sip-server's {target.geo_location!r}",
            )
    for name in cfg.nodes.applications:
        if name in apps and apps[name].kind is AppKind.SIP_SERVER and name not in paired:
            problem(f"applications.{name}", "cluster node without a t-controller beside it")
    if cfg.nodes.smart_proxy_enabled:
        for tc in cfg.by_kind(AppKind.T_CONTROLLER):
            if "smart-proxy-port" not in tc.ports:
                problem(
                    f"applications.{tc.name}.smart-proxy-port",
                    f"required because {nodes_key}.smart-proxy-enabled is true",
                )

    # ports: one listener per (host, port)
    used: dict[tuple[str, int], str] = {}
    for app in apps.values():
        for port_name, port in app.ports.items():
            if port == 0:
                continue  # the OS picks a free one
            where = f"applications.{app.name}.{port_name}"
            other_where = used.get((app.host, port))
            if other_where is not None:
                problem(where, f"port {port} on {app.host} is already used by {other_where}")
            else:
                used[(app.host, port)] = where

    # default-dn: application level and routing point level
    tserver_tables = [("switch.tserver", cfg.switch.tserver)] + [
        (f"applications.{a.name}.tserver", a.tserver) for a in apps.values()
    ]
    dn_defaults = [
        (f"dns.{d.number}", {"default_dn": d.options.get("default-dn")})
        for d in cfg.dns.values()
        if d.type is DnType.ROUTING_POINT
    ]
    for where, table in tserver_tables + dn_defaults:
        target_dn = table.get("default_dn")
        if target_dn is None:
            continue
        entry = cfg.dns.get(target_dn)
        if entry is None:
            problem(
                f"{where}.default-dn",
                f"{target_dn!r} is not a DN of the switch" + hint(target_dn, cfg.dns),
            )
        elif entry.type is DnType.VOIP_SERVICE:
            problem(f"{where}.default-dn", f"{target_dn!r} is a VoIPService DN, not a destination")

    # *-no-answer-overflow: destinations must be DNs that can take a call
    for where, table in tserver_tables:
        for attr in ("extn_no_answer_overflow", "posn_no_answer_overflow",
                     "agent_no_answer_overflow"):
            for target_dn in table.get(attr) or ():
                entry = cfg.dns.get(target_dn)
                key = f"{where}.{attr.replace('_', '-')}"
                if entry is None:
                    problem(key, f"{target_dn!r} is not a DN of the switch"
                            + hint(target_dn, cfg.dns))
                elif entry.type is DnType.VOIP_SERVICE:
                    problem(key, f"{target_dn!r} is a VoIPService DN, not a destination")

    # an account narrows the switch's digest algorithms, never widens them
    for dn in cfg.agent_dns():
        extra = [a for a in dn.digest_algorithms or () if a not in cfg.switch.digest_algorithms]
        if extra:
            problem(f"dns.{dn.number}.digest-algorithms",
                    f"{', '.join(extra)} not in [switch] digest-algorithms")

    # sip-enable-strict-auth, per DN (guide: "Configuring the SIP Cluster Node DN")
    nodes_apps = [n for n in cfg.nodes.applications if n in apps]
    for dn in cfg.agent_dns():
        if dn.contact != "*":
            continue  # only SIP-registered devices authenticate
        levels = [cfg.strict_auth(dn.number, a) for a in nodes_apps] or [cfg.strict_auth(dn.number)]
        if not any(levels):
            continue
        password = dn.password
        key = f"dns.{dn.number}.password"
        if not password:
            problem(key, "sip-enable-strict-auth is true: a password is required")
        elif password == dn.number:
            problem(key, "sip-enable-strict-auth is true: the password must differ from the DN")
    return problems
