"""Cross-checks of the cluster file: rules that involve several entries.

One function per family of rules, run in the order of :data:`CHECKS`: the SIP
Cluster Node DN and what it lists, HA pairs, the t-controller beside each
sip-server, one listener per (host, port), ``default-dn`` and the
``*-no-answer-overflow`` destinations, per-account digest algorithms and
``sip-enable-strict-auth`` (SIP Cluster Solution Guide, "Configuring the SIP
Cluster Node DN", "Configuring SIP Servers", "T-Controller DN Ownership").
Every problem is gathered, not only the first, and raised together by the
loader as :class:`ClusterConfigError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from daemons.cluster.model import AppKind, ClusterConfig, DnType
from daemons.runtime.config import ConfigError

__all__ = ["CHECKS", "ClusterConfigError", "Problem", "cross_check"]


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


#: One problem: the dotted key it is about and the reason.
Problem = tuple[str, str]


def cross_check(cfg: ClusterConfig) -> list[ConfigError]:
    """Every problem :data:`CHECKS` finds in ``cfg``, in the order of the table."""
    return [ConfigError(cfg.file, key, reason) for check in CHECKS for key, reason in check(cfg)]


def _did_you_mean(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_cluster_node_dn(cfg: ClusterConfig) -> Iterator[Problem]:
    """The SIP Cluster Node DN lists primary sip-servers in ``applications`` and
    every sip-proxy in ``siproxy-applications``."""
    apps = cfg.applications
    nodes_key = f"dns.{cfg.nodes.dn}"
    backups = {a.backup: a.name for a in apps.values() if a.backup}
    for name in cfg.nodes.applications:
        app = apps.get(name)
        if app is None:
            yield (f"{nodes_key}.applications",
                   f"unknown application {name!r}" + _did_you_mean(name, apps))
        elif app.kind is not AppKind.SIP_SERVER:
            yield (f"{nodes_key}.applications", f"{name!r} is a {app.kind.value}, not a sip-server")
        elif name in backups:
            yield (
                f"{nodes_key}.applications",
                f"{name!r} is the backup of {backups[name]!r}: list primaries only",
            )
    for name in cfg.nodes.siproxy_applications:
        app = apps.get(name)
        if app is None:
            yield (
                f"{nodes_key}.siproxy-applications",
                f"unknown application {name!r}" + _did_you_mean(name, apps),
            )
        elif app.kind is not AppKind.SIP_PROXY:
            yield (
                f"{nodes_key}.siproxy-applications",
                f"{name!r} is a {app.kind.value}, not a sip-proxy",
            )
    for app in cfg.by_kind(AppKind.SIP_PROXY):
        if app.name not in cfg.nodes.siproxy_applications:
            yield (
                f"{nodes_key}.siproxy-applications",
                f"sip-proxy {app.name!r} is not listed (every SIP Proxy must be)",
            )
    for app in cfg.by_kind(AppKind.SIP_SERVER):
        if app.name in cfg.nodes.applications or app.name in backups:
            continue
        yield (
            f"{nodes_key}.applications",
            f"sip-server {app.name!r} is neither listed nor the backup of a listed one",
        )
    if cfg.nodes.switchover_on_sipp_oos and not cfg.nodes.sipp_oos_recheck:
        yield (f"{nodes_key}.switchover-on-sipp-oos", "requires sipp-oos-recheck = true")


def _check_ha_pairs(cfg: ClusterConfig) -> Iterator[Problem]:
    """A ``backup`` is another application of the same kind and geo-location,
    with no backup itself, and the backup of one primary only."""
    apps = cfg.applications
    seen_backup: dict[str, str] = {}
    for app in apps.values():
        if app.backup is None:
            continue
        key = f"applications.{app.name}.backup"
        other = apps.get(app.backup)
        if other is None:
            yield (key, f"unknown application {app.backup!r}" + _did_you_mean(app.backup, apps))
            continue
        if other.name == app.name:
            yield (key, "an application cannot be its own backup")
        elif other.kind is not app.kind:
            yield (key, f"{other.name!r} is a {other.kind.value}, not a {app.kind.value}")
        elif other.backup is not None:
            yield (key, f"{other.name!r} has a backup itself: a pair is primary and backup")
        elif other.geo_location != app.geo_location:
            yield (
                key,
                f"{other.name!r} is in geo-location {other.geo_location!r}, "
                f"the primary in {app.geo_location!r}",
            )
        if other.name in seen_backup:
            yield (key, f"{other.name!r} is already the backup of {seen_backup[other.name]!r}")
        seen_backup[other.name] = app.name


def _check_t_controllers(cfg: ClusterConfig) -> Iterator[Problem]:
    """One t-controller beside each cluster node, in its geo-location; with
    ``smart-proxy-enabled`` each t-controller has a ``smart-proxy-port``."""
    apps = cfg.applications
    paired: dict[str, str] = {}
    for tc in cfg.by_kind(AppKind.T_CONTROLLER):
        key = f"applications.{tc.name}.sip-server"
        target = apps.get(tc.sip_server or "")
        if target is None:
            yield (key, f"unknown application {tc.sip_server!r}"
                   + _did_you_mean(tc.sip_server or "", apps))
            continue
        if target.kind is not AppKind.SIP_SERVER:
            yield (key, f"{target.name!r} is a {target.kind.value}, not a sip-server")
            continue
        if target.name in paired:
            yield (key, f"{target.name!r} already has the t-controller {paired[target.name]!r}")
            continue
        paired[target.name] = tc.name
        if tc.geo_location != target.geo_location:
            yield (
                f"applications.{tc.name}.geo-location",
                f"{tc.geo_location!r} differs from its sip-server's {target.geo_location!r}",
            )
    for name in cfg.nodes.applications:
        if name in apps and apps[name].kind is AppKind.SIP_SERVER and name not in paired:
            yield (f"applications.{name}", "cluster node without a t-controller beside it")
    if cfg.nodes.smart_proxy_enabled:
        for tc in cfg.by_kind(AppKind.T_CONTROLLER):
            if "smart-proxy-port" not in tc.ports:
                yield (
                    f"applications.{tc.name}.smart-proxy-port",
                    f"required because dns.{cfg.nodes.dn}.smart-proxy-enabled is true",
                )


def _check_ports(cfg: ClusterConfig) -> Iterator[Problem]:
    """One listener per (host, port)."""
    used: dict[tuple[str, int], str] = {}
    for app in cfg.applications.values():
        for port_name, port in app.ports.items():
            if port == 0:
                continue  # the OS picks a free one
            where = f"applications.{app.name}.{port_name}"
            other_where = used.get((app.host, port))
            if other_where is not None:
                yield (where, f"port {port} on {app.host} is already used by {other_where}")
            else:
                used[(app.host, port)] = where


def _tserver_tables(cfg: ClusterConfig) -> list[tuple[str, Mapping[str, Any]]]:
    """The [TServer] options given at switch level and by each application, by key."""
    return [("switch.tserver", cfg.switch.tserver)] + [
        (f"applications.{a.name}.tserver", a.tserver) for a in cfg.applications.values()
    ]


def _check_default_dn(cfg: ClusterConfig) -> Iterator[Problem]:
    """``default-dn``, at application level and on routing points, is a DN of
    the switch that can take a call, or an external number in E.164 form
    (``+`` and digits: a bare number is more likely a mistyped DN) when the
    switch has a dial plan to route it."""
    dn_defaults: list[tuple[str, Mapping[str, Any]]] = [
        (f"dns.{d.number}", {"default_dn": d.options.get("default-dn")})
        for d in cfg.dns.values()
        if d.type is DnType.ROUTING_POINT
    ]
    # an external number goes through the dial plan (a feature-server DN) to a trunk
    dial_plan = any(d.service_type == "feature-server" for d in cfg.dns.values())
    for where, table in _tserver_tables(cfg) + dn_defaults:
        target_dn = table.get("default_dn")
        if target_dn is None:
            continue
        entry = cfg.dns.get(target_dn)
        if entry is None and dial_plan and target_dn.startswith("+") \
                and target_dn[1:].isdigit():
            continue
        if entry is None:
            yield (
                f"{where}.default-dn",
                f"{target_dn!r} is not a DN of the switch" + _did_you_mean(target_dn, cfg.dns),
            )
        elif entry.type is DnType.VOIP_SERVICE:
            yield (f"{where}.default-dn", f"{target_dn!r} is a VoIPService DN, not a destination")


def _check_no_answer_overflow(cfg: ClusterConfig) -> Iterator[Problem]:
    """``*-no-answer-overflow`` destinations are DNs that can take a call (guide:
    "No-Answer Supervision")."""
    for where, table in _tserver_tables(cfg):
        for attr in ("extn_no_answer_overflow", "posn_no_answer_overflow",
                     "agent_no_answer_overflow"):
            for target_dn in table.get(attr) or ():
                entry = cfg.dns.get(target_dn)
                key = f"{where}.{attr.replace('_', '-')}"
                if entry is None:
                    yield (key, f"{target_dn!r} is not a DN of the switch"
                           + _did_you_mean(target_dn, cfg.dns))
                elif entry.type is DnType.VOIP_SERVICE:
                    yield (key, f"{target_dn!r} is a VoIPService DN, not a destination")


def _check_digest_algorithms(cfg: ClusterConfig) -> Iterator[Problem]:
    """An account narrows the switch's digest algorithms, never widens them
    (RFC 8760 §2.4)."""
    for dn in cfg.agent_dns():
        extra = [a for a in dn.digest_algorithms or () if a not in cfg.switch.digest_algorithms]
        if extra:
            yield (f"dns.{dn.number}.digest-algorithms",
                   f"{', '.join(extra)} not in [switch] digest-algorithms")


def _check_strict_auth(cfg: ClusterConfig) -> Iterator[Problem]:
    """``sip-enable-strict-auth``, per DN (guide: "Configuring the SIP Cluster
    Node DN"): a SIP-registered device it applies to has a password, not its DN."""
    nodes_apps = [n for n in cfg.nodes.applications if n in cfg.applications]
    for dn in cfg.agent_dns():
        if dn.contact != "*":
            continue  # only SIP-registered devices authenticate
        levels = [cfg.strict_auth(dn.number, a) for a in nodes_apps] or [cfg.strict_auth(dn.number)]
        if not any(levels):
            continue
        password = dn.password
        key = f"dns.{dn.number}.password"
        if not password:
            yield (key, "sip-enable-strict-auth is true: a password is required")
        elif password == dn.number:
            yield (key, "sip-enable-strict-auth is true: the password must differ from the DN")


#: The cross-checks, run in this order; their problems are reported in it.
CHECKS: tuple[Callable[[ClusterConfig], Iterable[Problem]], ...] = (
    _check_cluster_node_dn,
    _check_ha_pairs,
    _check_t_controllers,
    _check_ports,
    _check_default_dn,
    _check_no_answer_overflow,
    _check_digest_algorithms,
    _check_strict_auth,
)
