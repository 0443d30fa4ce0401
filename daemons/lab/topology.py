"""The lab's view of a cluster file: which daemons to start, and lab.json.

``lab.json`` is the lab's address book for people and scripts: the SRV name,
the DNS server (its DNS and management HTTP ports), each data centre's proxies
and nodes with their ports, and the phone accounts; ``sites``: every site of
the lab's collective (its cluster file, proxies, nodes, accounts, collective
application, password at the hub), ``hub``: the rtm-server they log on to.

The lab is a collective (docs/collective.md): the lab directory's
``cluster.toml`` is site 1 (the two-data-centre cluster), and each
``sites/NAME/cluster.toml`` is one more site (its own switch and SIP domain),
copied from ``daemons/lab/sites/`` when the lab runs the shipped example.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any

from daemons.cli import command_names
from daemons.cluster.config import AppKind, Application, ClusterConfig, Dn, DnType
from daemons.lab.supervisor import ProcessSpec
from daemons.runtime.certs import certs_dir_for, init_ca, issue
from daemons.runtime.config import is_ip_address
from protocols.sip.errors import ParseError
from protocols.sip.uri import parse_uri

#: start order: a t-controller links to its sip-server, proxies probe the nodes;
#: kinds not listed start last
START_ORDER = [
    AppKind.RTM_SERVER, AppKind.STATUS_AGGREGATOR, AppKind.FEATURE_SERVER,
    AppKind.SIP_SERVER, AppKind.T_CONTROLLER, AppKind.SIP_PROXY, AppKind.DIRECTOR,
    AppKind.COLLECTIVE,
]

#: the other sites of the lab's collective, one cluster file each (NAME.toml)
SITES_SOURCE = Path(__file__).resolve().with_name("sites")
#: where a lab directory keeps them: sites/NAME/cluster.toml (certs/ beside each)
SITES_DIR = "sites"
#: the workgroup the lab's users are members of: they replicate to every site
LAB_WORKGROUP = "Multisite_RTM1"


def install_sites(directory: Path) -> list[Path]:
    """Copy the shipped sites' cluster files into ``directory/sites/`` (those not
    there yet); the cluster files of the lab's other sites."""
    for source in sorted(SITES_SOURCE.glob("*.toml")):
        target = directory / SITES_DIR / source.stem.capitalize() / "cluster.toml"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return site_files(directory)


def site_files(directory: Path) -> list[Path]:
    """The cluster files of the lab's other sites (``sites/NAME/cluster.toml``)."""
    return sorted((directory / SITES_DIR).glob("*/cluster.toml"))


def home_site(cfg: ClusterConfig) -> dict[str, Any] | None:
    """The ``home-site`` of the cluster file's collective application: the site
    this cluster is in the collective, with its collective application."""
    for app in cfg.by_kind(AppKind.COLLECTIVE):
        home = app.options.get("home-site")
        if isinstance(home, dict):
            return {"site_identifier": home.get("site-identifier"),
                    "site_name": home.get("site-name"),
                    "phone_number": str(home.get("phone-number") or ""),
                    "password": home.get("password"), "collective": app}
    return None

#: the lab's geo-aware DNS (``sipcluster geo-dns``): one listener per data
#: centre, unprivileged port; its management HTTP listener (/healthz,
#: /metrics, /status/views) on the first data centre's DNS address
GEO_DNS_COMMAND = "geo-dns"
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


def process_specs(
    cfg: ClusterConfig, config_path: Path
) -> tuple[list[ProcessSpec], list[Application]]:
    """The processes to start for ``cfg``, and the applications left out: those
    of a kind this build has no ``sipcluster KIND`` command for."""
    commands = command_names()
    kinds = {kind for kind in AppKind if kind.value in commands}
    specs: list[ProcessSpec] = []
    skipped: list[Application] = []
    dns_addresses = lab_dns_addresses(cfg)
    has_dns = GEO_DNS_COMMAND in commands
    if cfg.outbound_proxy is not None and dns_addresses and has_dns:
        http = f"{dns_addresses[0][0]}:{LAB_DNS_HTTP_PORT}"
        argv = [sys.executable, "-m", "daemons.cli", GEO_DNS_COMMAND, "--config", str(config_path),
                "--name", "GeoDNS", "--http", http]
        for host, port in dns_addresses:
            argv += ["--listen", f"{host}:{port}"]
        specs.append(ProcessSpec(name="GeoDNS", argv=tuple(argv),
                                 health_url=f"http://{http}/healthz"))
    specs += pstn_gateways(cfg)
    rank = {kind: i for i, kind in enumerate(START_ORDER)}
    for app in sorted(cfg.applications.values(), key=lambda a: rank.get(a.kind, len(rank))):
        if app.kind not in kinds:
            skipped.append(app)
            continue
        http_port = app.port("http-port")
        url = f"http://{app.host}:{http_port}/healthz" if http_port else None
        command = (
            sys.executable, "-m", "daemons.cli", app.kind.value,
            "--config", str(config_path), "--name", app.name,
        )
        specs.append(ProcessSpec(name=app.name, argv=command, health_url=url))
    return specs, skipped


def gateway_addresses(cfg: ClusterConfig) -> list[tuple[Dn, str, int]]:
    """(Trunk DN, host, port) of each trunk whose contact is an IP address: where
    the lab puts a PSTN gateway (one per address)."""
    out: list[tuple[Dn, str, int]] = []
    seen: set[tuple[str, int]] = set()
    for dn in cfg.dns.values():
        if dn.type is not DnType.TRUNK or not dn.contact:
            continue
        text = dn.contact if dn.contact.startswith("sip:") else f"sip:{dn.contact}"
        try:
            uri = parse_uri(text)
        except ParseError:
            continue
        address = (uri.host, uri.port or 5060)
        if is_ip_address(uri.host) and address not in seen:
            seen.add(address)
            out.append((dn, *address))
    return out


def pstn_gateways(cfg: ClusterConfig) -> list[ProcessSpec]:
    """A PSTN gateway behind each Trunk DN with an IP address contact: SIPp's UAS
    (a real peer, ``sip-tester``), which answers every INVITE and the trunk's
    OPTIONS checks (``-aa``). None when SIPp is not installed."""
    sipp = shutil.which("sipp")
    if sipp is None:
        return []
    return [ProcessSpec(name=f"PSTN_{dn.number}", health_url=None,
                        argv=(sipp, "-sn", "uas", "-aa", "-i", host, "-p", str(port),
                              "-nostdin", "-f", "3600"))
            for dn, host, port in gateway_addresses(cfg)
            if not dn.options.get("collective-site")]  # a trunk to another site: no gateway


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
                 # SIP over TLS: the phone trusts certificates["ca"]
                 "tls_port": p.port("sip-tls-port"),
                 "http_port": p.port("http-port"), "running": p.name in running}
                for p in cfg.by_kind(AppKind.SIP_PROXY, geo)
            ],
            "nodes": [
                {**_node_entry(cfg, n), "running": n.name in running}
                for n in cfg.by_kind(AppKind.SIP_SERVER, geo)
            ],
            # dial 9 + digits: the node's trunk of this data centre leads there
            "pstn_gateways": [
                {"name": f"PSTN_{dn.number}", "host": host, "sip_port": port,
                 "running": f"PSTN_{dn.number}" in running}
                for dn, host, port in gateway_addresses(cfg)
                if dn.geo_location == geo and not dn.options.get("collective-site")
            ],
        }
    accounts = [
        {"dn": dn.number, "password": dn.password}
        for dn in cfg.dns.values()
        if dn.type == DnType.EXTENSION and dn.contact == "*"
    ]
    directors = [
        {"name": d.name, "host": d.host, "http_port": d.port("http-port"),
         "running": d.name in running,
         # virtual queue -> its routing points and skill (docs/director.md)
         "queues": {queue: {"routing_points": list(table.get("routing-points") or []),
                            "skill": table.get("skill") or None}
                    for queue, table in (d.options.get("strategies") or {}).items()
                    if isinstance(table, dict)},
         "skills": {agent: dict(levels)
                    for agent, levels in (d.options.get("skills") or {}).items()
                    if isinstance(levels, dict)}}
        for d in cfg.by_kind(AppKind.DIRECTOR)
    ]
    aggregators = cfg.by_kind(AppKind.STATUS_AGGREGATOR)
    return {
        "status_aggregators": [
            {"name": a.name, "host": a.host, "status_port": a.port("status-port"),
             "http_port": a.port("http-port"), "running": a.name in running}
            for a in aggregators],
        "certificates": _certificates(cfg) if aggregators or _tls_proxies(cfg) else None,
        "srv_fqdn": srv_fqdn,
        "domain": cfg.switch.domain,
        "realm": cfg.switch.realm,
        "dns": ({"host": dns[0], "port": dns[1], "http_port": LAB_DNS_HTTP_PORT}
                if dns else None),
        "data_centres": centres,
        "accounts": accounts,
        "directors": directors,
        # voicemail of each feature-server: the access number, the mailboxes' PIN
        "feature_servers": [
            {"name": f.name, "host": f.host, "geo_location": f.geo_location,
             "http_port": f.port("http-port"), "sip_port": f.port("sip-port"),
             "running": f.name in running,
             "voicemail_access_number": str(f.options.get("access-number") or "5555"),
             "default_pin": (str(f.options["default-pin"])
                             if f.options.get("default-pin") is not None else None)}
            for f in cfg.by_kind(AppKind.FEATURE_SERVER)],
        "rtm_servers": [
            {"name": r.name, "host": r.host, "rtm_port": r.port("rtm-port"),
             "http_port": r.port("http-port"), "running": r.name in running,
             "sites": sorted(int(s) for s in (r.options.get("sites") or {})
                             if str(s).isdigit())}
            for r in cfg.by_kind(AppKind.RTM_SERVER)],
    }


def _tls_names(cfg: ClusterConfig) -> list[str]:
    """Who gets a certificate in the lab: the status-aggregators, the
    t-controllers that publish to them, and the client names their options list."""
    names = [a.name for a in cfg.by_kind(AppKind.STATUS_AGGREGATOR)]
    names += [a.name for a in cfg.by_kind(AppKind.T_CONTROLLER)]
    # a collective watches its site's status-aggregator (docs/collective.md)
    names += [a.name for a in cfg.by_kind(AppKind.COLLECTIVE)]
    for app in cfg.by_kind(AppKind.STATUS_AGGREGATOR):
        for option in ("consumers", "publishers"):
            value = app.options.get(option)
            if isinstance(value, list):
                names += [n for n in value if isinstance(n, str)]
    return list(dict.fromkeys(names))


def _certificates(cfg: ClusterConfig) -> dict[str, Any]:
    """lab.json's "certificates": the CA (the file a phone trusts for the proxies'
    sip-tls-port), each client's certificate and key, and each proxy's."""
    directory = certs_dir_for(cfg.file)
    names = _tls_names(cfg) if cfg.by_kind(AppKind.STATUS_AGGREGATOR) else []
    return {"dir": str(directory), "ca": str(directory / "ca.pem"),
            "clients": {n: {"cert": str(directory / f"{n}.pem"),
                            "key": str(directory / f"{n}.key")} for n in names},
            "proxies": {p.name: {"cert": str(directory / f"{p.name}.pem"),
                                 "names": list(names_of)}
                        for p, names_of in _tls_proxies(cfg)}}


def _tls_proxies(cfg: ClusterConfig) -> list[tuple[Application, list[str]]]:
    """The SIP Proxies with a ``sip-tls-port``, each with the names its certificate
    carries: the names a phone dials (RFC 5922 §7.2: the SIP domain, the SRV FQDN of
    the SIP Outbound Proxy DN, the proxy's host name in the lab's zones) and its
    address (phones configured with the proxy's address check that)."""
    names = [cfg.switch.domain]
    proxy_dn = cfg.outbound_proxy
    for contact in (proxy_dn.contact, proxy_dn.external_contact) if proxy_dn else ():
        if not contact:
            continue
        text = contact if contact.lower().startswith(("sip:", "sips:")) else f"sip:{contact}"
        with contextlib.suppress(ParseError):
            host = parse_uri(text).host
            if not is_ip_address(host):
                names.append(host.lower())
    out: list[tuple[Application, list[str]]] = []
    for geo in cfg.geo_locations():
        for i, proxy in enumerate(cfg.by_kind(AppKind.SIP_PROXY, geo), start=1):
            if proxy.port("sip-tls-port") is None:
                continue
            # the host name the geo DNS gives it (daemons/geo_dns/zones.py)
            own = [f"spx{i}-{geo}.{cfg.switch.domain}"] if is_ip_address(proxy.host) \
                else [proxy.host]
            out.append((proxy, list(dict.fromkeys(names + own + [proxy.host]))))
    return out


def issue_lab_certificates(cfg: ClusterConfig) -> Path | None:
    """At lab start: the lab's private CA, a certificate for every name of
    :func:`_tls_names` when there are status-aggregators, and one for every SIP
    Proxy with a ``sip-tls-port`` (:func:`_tls_proxies`), in ``certs/`` beside the
    lab's cluster file; made once, kept across restarts. None when nothing needs one."""
    aggregators = cfg.by_kind(AppKind.STATUS_AGGREGATOR)
    proxies = _tls_proxies(cfg)
    if not aggregators and not proxies:
        return None
    directory = certs_dir_for(cfg.file)
    if not (directory / "ca.pem").exists():
        init_ca(directory, name=f"{cfg.switch.name} lab CA")
    for name in _tls_names(cfg) if aggregators else []:
        if not (directory / f"{name}.pem").exists():
            issue(directory, name)
    for proxy, names in proxies:
        if not (directory / f"{proxy.name}.pem").exists():
            issue(directory, proxy.name,
                  dns_names=[n for n in names if not is_ip_address(n)],
                  ip_addresses=[n for n in names if is_ip_address(n)])
    return directory


def site_description(cfg: ClusterConfig, *, running: set[str],
                     cluster_file: Path) -> dict[str, Any] | None:
    """One site of the lab's collective, for lab.json's ``sites``."""
    home = home_site(cfg)
    if home is None:
        return None
    collective: Application = home["collective"]
    return {
        "site_identifier": home["site_identifier"], "site_name": home["site_name"],
        "phone_number": home["phone_number"], "password": home["password"],
        "cluster_file": str(cluster_file), "switch": cfg.switch.name,
        "domain": cfg.switch.domain, "realm": cfg.switch.realm,
        "subnets": sorted({a.host.rsplit(".", 1)[0] + ".0/24"
                           for a in cfg.applications.values() if is_ip_address(a.host)}),
        "collective": {"name": collective.name, "host": collective.host,
                       "http_port": collective.port("http-port"),
                       "running": collective.name in running},
        "proxies": [{"name": p.name, "host": p.host, "sip_port": p.port("sip-port"),
                     "tls_port": p.port("sip-tls-port"), "http_port": p.port("http-port"),
                     "geo_location": p.geo_location, "running": p.name in running}
                    for p in cfg.by_kind(AppKind.SIP_PROXY)],
        "nodes": [{**_node_entry(cfg, n), "geo_location": n.geo_location,
                   "running": n.name in running}
                  for n in cfg.by_kind(AppKind.SIP_SERVER)],
        # the SIP trunks to the other sites: a roaming user's calls take them
        "site_trunks": {str(dn.options["collective-site"]): {"dn": dn.number,
                                                             "contact": dn.contact}
                        for dn in cfg.dns.values()
                        if dn.type is DnType.TRUNK and dn.options.get("collective-site")},
        "accounts": [{"dn": dn.number, "password": dn.password,
                      "user": lab_user_id(dn.number)}
                     for dn in cfg.dns.values()
                     if dn.type == DnType.EXTENSION and dn.contact == "*"],
        "applications": sorted(cfg.applications),
    }


def lab_user_id(dn: str) -> str:
    """The user (and AgentID) the lab gives an account: ``a`` + its DN (the
    director's skills use these ids)."""
    return f"a{dn}"


def hub_description(cfg: ClusterConfig, *, running: set[str]) -> dict[str, Any] | None:
    """lab.json's ``hub``: the rtm-server of site 1 and the site passwords it takes."""
    for hub in cfg.by_kind(AppKind.RTM_SERVER):
        sites = hub.options.get("sites") or {}
        return {"name": hub.name, "host": hub.host, "rtm_port": hub.port("rtm-port"),
                "http_port": hub.port("http-port"), "running": hub.name in running,
                "credentials": {str(k): v for k, v in sites.items()}}
    return None
