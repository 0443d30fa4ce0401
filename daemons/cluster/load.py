"""Reading the cluster file into the model.

Each table of the file is read through its option table
(:mod:`daemons.cluster.schema`) into the frozen model
(:mod:`daemons.cluster.model`); an error in one entry names the file, the
dotted key and the reason. What involves several entries is checked
afterwards by :mod:`daemons.cluster.checks`, and every problem found there is
raised together as :class:`~daemons.cluster.checks.ClusterConfigError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from daemons.cluster.checks import ClusterConfigError, cross_check
from daemons.cluster.model import (
    AgentLogin,
    AppKind,
    Application,
    ClusterConfig,
    ClusterNodes,
    Dn,
    DnType,
    OutboundProxy,
    Switch,
)
from daemons.cluster.schema import (
    CLUSTER_NODE_OPTIONS,
    DN_OPTIONS,
    OUTBOUND_PROXY_OPTIONS,
    PORTS,
    SERVICE_OPTIONS,
    SERVICE_TYPES,
    SIPPROXY_OPTIONS,
    TSERVER_OPTIONS,
    check_unknown,
    read_digest_algorithms,
    read_named,
    read_schema,
)
from daemons.runtime.config import Section, load_file
from protocols.sip.digest import LEGACY_USER_AGENTS

__all__ = ["load_cluster", "parse_cluster"]


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and check a cluster file; :class:`ConfigError` names file, key, reason."""
    return parse_cluster(load_file(path))


def parse_cluster(root: Section) -> ClusterConfig:
    """Build the model from an already loaded top-level section."""
    check_unknown(root, {"switch", "dns", "applications", "agent-logins"})
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
        agent_logins=_frozen_map(_parse_agent_logins(root)),
    )
    problems = cross_check(config)
    if problems:
        raise ClusterConfigError(root.file, problems)
    return config


def _parse_agent_logins(root: Section) -> dict[str, AgentLogin]:
    """``[agent-logins.ID]``: ``password`` (optional)."""
    logins: dict[str, AgentLogin] = {}
    for agent_id, s in root.sections("agent-logins").items():
        if not agent_id or any(c.isspace() for c in agent_id):
            raise s.error(None, "an AgentID must be non-empty without spaces")
        check_unknown(s, {"password"})
        password = s.get_optional_str("password")
        if password is not None and not password:
            raise s.error("password", "empty: leave it out for an agent without a password")
        logins[agent_id] = AgentLogin(agent_id, password)
    return logins


def _parse_switch(s: Section) -> Switch:
    name = s.get_str("name")
    domain = s.get_str("domain")
    realm = s.get_str("realm", domain)
    digest_secret = s.get_optional_str("digest-secret")
    if digest_secret is not None and len(digest_secret) < 16:
        raise s.error("digest-secret", "must be at least 16 characters")
    algorithms = read_digest_algorithms(s, "digest-algorithms", ("SHA-256", "MD5"))
    user_agents = _digest_user_agents(s, algorithms)
    dns_servers = tuple(s.get_str_list("dns-servers", []))
    for server in dns_servers:
        if not _is_nameserver(server):
            raise s.error("dns-servers",
                          f"expected HOST or HOST:PORT with an IP address, got {server!r}")
    tserver = s.section("tserver")
    given = read_schema(tserver, TSERVER_OPTIONS, only_given=True)
    check_unknown(tserver, set(TSERVER_OPTIONS))
    check_unknown(s, {"name", "domain", "realm", "digest-secret", "digest-algorithms",
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
        algorithms = read_digest_algorithms(table, pattern, ())
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
                values = read_schema(s, CLUSTER_NODE_OPTIONS)
                check_unknown(s, {"type", "service-type", *CLUSTER_NODE_OPTIONS})
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
                values = read_schema(s, OUTBOUND_PROXY_OPTIONS)
                check_unknown(s, {"type", "service-type", *OUTBOUND_PROXY_OPTIONS})
                outbound = OutboundProxy(dn=number, **values)
                options = {k: s.raw(k) for k in s.keys() if k not in ("type", "service-type")}
            else:
                options = read_named(s, SERVICE_OPTIONS)
                check_unknown(s, {"type", "service-type", *SERVICE_OPTIONS}, dn_level=True)
        else:
            schema = DN_OPTIONS[dn_type]
            options = read_named(s, schema)
            check_unknown(s, {"type", *schema}, dn_level=True)
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
            tserver = read_schema(ts, TSERVER_OPTIONS, only_given=True)
            check_unknown(ts, set(TSERVER_OPTIONS))
            allowed.add("tserver")
        elif kind is AppKind.T_CONTROLLER:
            sip_server = s.get_str("sip-server")
            allowed.add("sip-server")
        elif kind is AppKind.SIP_PROXY:
            sp = s.section("sipproxy")
            options = read_named(sp, SIPPROXY_OPTIONS)
            check_unknown(sp, set(SIPPROXY_OPTIONS))
            allowed.add("sipproxy")
        else:
            # feature-server, vq-sip-server: their own daemons check these
            opts = s.section("options")
            options = {k: opts.raw(k) for k in opts.keys()}
            allowed.add("options")
        if kind in (AppKind.SIP_SERVER, AppKind.SIP_PROXY) and geo is None:
            raise s.error("geo-location", "required for a " + kind.value)
        check_unknown(s, allowed)
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


def _frozen_map(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(data))
