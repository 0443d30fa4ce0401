"""The lab's view of a cluster file: which daemons to start, and lab.json.

``lab.json`` is the lab's address book for people and scripts: the SRV name,
the DNS server, each data centre's proxies and nodes with their ports, and
the phone accounts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from daemons.cluster.config import AppKind, Application, ClusterConfig, DnType
from daemons.lab.supervisor import ProcessSpec

#: daemon kind -> module implementing ``sipcluster KIND``
DAEMON_MODULES: dict[AppKind, str] = {
    AppKind.SIP_SERVER: "daemons.sip_server.service",
    AppKind.T_CONTROLLER: "daemons.t_controller.service",
    AppKind.SIP_PROXY: "daemons.sip_proxy.service",
    AppKind.FEATURE_SERVER: "daemons.feature_server.service",
}

#: start order: a t-controller links to its sip-server, proxies probe the nodes
START_ORDER = [AppKind.SIP_SERVER, AppKind.T_CONTROLLER, AppKind.SIP_PROXY, AppKind.FEATURE_SERVER]


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is not there
        return False


def available_kinds() -> set[AppKind]:
    """Daemon kinds this installation implements."""
    return {k for k, mod in DAEMON_MODULES.items() if module_exists(mod)}


#: the lab's geo-aware DNS: one listener per data centre, unprivileged port
LAB_DNS_PORT = 5300
LAB_DNS_HTTP_PORT = 9053


def lab_dns_addresses(cfg: ClusterConfig) -> list[tuple[str, int]]:
    """Where the lab DNS listens: .53 of each data centre's /24 (as in the zones)."""
    result = []
    for geo in cfg.geo_locations():
        hosts = [a.host for a in cfg.applications.values() if a.geo_location == geo]
        if hosts:
            prefix = hosts[0].rsplit(".", 1)[0]
            result.append((f"{prefix}.53", LAB_DNS_PORT))
    return result


def process_specs(cfg: ClusterConfig, config_path: Path) -> tuple[list[ProcessSpec], list[str]]:
    """The processes to start for ``cfg``, and the applications left out (not built)."""
    kinds = available_kinds()
    specs: list[ProcessSpec] = []
    skipped: list[str] = []
    dns_addresses = lab_dns_addresses(cfg)
    has_dns = module_exists("daemons.geo_dns.service")
    if cfg.outbound_proxy is not None and dns_addresses and has_dns:
        http = f"{dns_addresses[0][0]}:{LAB_DNS_HTTP_PORT}"
        argv = [sys.executable, "-m", "daemons.cli", "geo-dns", "--config", str(config_path),
                "--name", "GeoDNS", "--http", http]
        for host, port in dns_addresses:
            argv += ["--listen", f"{host}:{port}"]
        specs.append(ProcessSpec(name="GeoDNS", argv=tuple(argv),
                                 health_url=f"http://{http}/healthz"))
    for kind in START_ORDER:
        for app in cfg.by_kind(kind):
            if kind not in kinds:
                skipped.append(f"{app.name} ({kind.value})")
                continue
            http_port = app.port("http-port")
            url = f"http://{app.host}:{http_port}/healthz" if http_port else None
            command = (
                sys.executable, "-m", "daemons.cli", kind.value,
                "--config", str(config_path), "--name", app.name,
            )
            specs.append(ProcessSpec(name=app.name, argv=command, health_url=url))
    return specs, skipped


def _node_entry(cfg: ClusterConfig, sip_server: Application) -> dict[str, Any]:
    tc = cfg.applications.get(sip_server.t_controller or "")
    return {
        "name": sip_server.name,
        "t_controller": tc.name if tc else None,
        "host": sip_server.host,
        "sip_port": sip_server.port("sip-port"),
        "default_port": sip_server.port("default-port"),
        "ip_port": sip_server.port("ip-port"),
        "tc_port": tc.port("tc-port") if tc else None,
        "smart_proxy_port": tc.port("smart-proxy-port") if tc else None,
        "http_port": sip_server.port("http-port"),
        "tc_http_port": tc.port("http-port") if tc else None,
    }


def lab_description(
    cfg: ClusterConfig, *, running: set[str], dns: tuple[str, int] | None
) -> dict[str, Any]:
    """The content of lab.json."""
    proxy_dn = cfg.outbound_proxy
    srv_fqdn = None
    if proxy_dn is not None:
        srv_fqdn = proxy_dn.external_contact or proxy_dn.contact
    centres: dict[str, Any] = {}
    for geo in cfg.geo_locations():
        centres[geo] = {
            "proxies": [
                {"name": p.name, "host": p.host, "sip_port": p.port("sip-port"),
                 "http_port": p.port("http-port"), "running": p.name in running}
                for p in cfg.by_kind(AppKind.SIP_PROXY, geo)
            ],
            "nodes": [
                {**_node_entry(cfg, n), "running": n.name in running}
                for n in cfg.by_kind(AppKind.SIP_SERVER, geo)
            ],
        }
    accounts = [
        {"dn": dn.number, "password": dn.password}
        for dn in cfg.dns.values()
        if dn.type == DnType.EXTENSION and dn.contact == "*"
    ]
    return {
        "srv_fqdn": srv_fqdn,
        "domain": cfg.switch.domain,
        "realm": cfg.switch.realm,
        "dns": {"host": dns[0], "port": dns[1]} if dns else None,
        "data_centres": centres,
        "accounts": accounts,
    }
