"""Geo-aware zones for the SIP Cluster: one zone file per view, views chosen
by the client's source subnet.

Guide: "Configuring DNS Records". The SIP Cluster FQDN (the host of the SIP
Outbound Proxy DN's ``contact``) has ``_sip._udp`` and ``_sip._tcp`` SRV
records (RFC 2782) in every data centre's view; the local SIP Proxies get
priority 10 and the other data centres' proxies priority 200, all with weight
50 and their ``sip-port``. NAPTR records (RFC 3403, RFC 3263 §4.1) for the
switch domain and the SIP Cluster FQDN point at those SRV sets, so a client
that only knows ``sip:1001@cluster.lab`` finds the proxies too. Proxies with a
``sip-tls-port`` also get ``_sips._tcp`` SRV records on that port (same
priorities and weight) and a ``SIPS+D2T`` NAPTR after the other two (RFC 3263
§4.1, RFC 5630), so ``sips:`` URIs and TLS phones find them. A records give
the proxies' host names (``spx1-dc1.cluster.lab``), the cluster nodes'
(``node1-dc1``), the name server's (``ns``) and, as the guide asks for clients
without SRV support, the ``external-contact`` name (the local proxies only).

:func:`generate_zone_set` builds the texts from a cluster file;
:func:`write_zone_set` writes them with a views file and a BIND 9
``named.conf`` with the same views; :func:`load_views_file` and
:func:`compile_views` turn them into :class:`View` objects the embedded server
answers from.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone

from daemons.cluster.config import AppKind, Application, ClusterConfig
from daemons.runtime.config import ConfigError
from protocols.sip.errors import SipError
from protocols.sip.uri import parse_uri

__all__ = [
    "DEFAULT_VIEW",
    "LOCAL_PRIORITY",
    "REMOTE_PRIORITY",
    "SRV_WEIGHT",
    "View",
    "ViewSpec",
    "ZoneError",
    "ZoneSet",
    "compile_views",
    "generate_zone_set",
    "load_views_file",
    "render_named_conf",
    "render_views_file",
    "select_view",
    "write_zone_set",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: SRV priority of the proxies in the client's own data centre (guide's example).
LOCAL_PRIORITY = 10
#: SRV priority of the other data centres' proxies: the last resort.
REMOTE_PRIORITY = 200
#: The guide: "The same priority, weight, and port must be specified".
SRV_WEIGHT = 50
#: Name of the view for clients in no data centre's subnet.
DEFAULT_VIEW = "default"
VIEWS_FILE = "views.toml"
NAMED_CONF = "named.conf"
#: Where deploy/dns/named.conf expects the zone files (Debian's BIND layout).
DEFAULT_ZONE_DIR = "/etc/bind/sipcluster"
DEFAULT_BIND_DIRECTORY = "/var/cache/bind"

_ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class ZoneError(ConfigError):
    """A zone file or views file is unusable; names the file, the key and the reason."""


@dataclass(frozen=True)
class ViewSpec:
    """One view: who it serves (``match-clients``) and its zones (origin -> file name)."""

    name: str
    match_clients: tuple[IPNetwork, ...]
    zones: Mapping[str, str]


@dataclass(frozen=True)
class ZoneSet:
    """Views in BIND order (most specific subnet first) and the zone files' texts."""

    views: tuple[ViewSpec, ...]
    files: Mapping[str, str]


@dataclass
class View:
    """A loaded view: its networks and its zones, keyed by origin."""

    name: str
    match_clients: tuple[IPNetwork, ...]
    zones: dict[dns.name.Name, dns.zone.Zone] = field(default_factory=dict)

    def zone_for(self, qname: dns.name.Name) -> dns.zone.Zone | None:
        """The zone with the longest origin that contains ``qname`` (RFC 1034 §4.3.2 step 2)."""
        best: dns.zone.Zone | None = None
        best_labels = -1
        for origin, zone in self.zones.items():
            if qname.is_subdomain(origin) and len(origin) > best_labels:
                best, best_labels = zone, len(origin)
        return best


# ------------------------------------------------------------------ generation


def _fqdn(name: str) -> str:
    return name.rstrip(".").lower() + "."


def _contact_host(contact: str, key: str, file: str) -> str:
    """Host part of a ``contact`` / ``external-contact``: a SIP URI or a bare host[:port]."""
    text = contact.strip()
    if not text.lower().startswith(("sip:", "sips:")):
        text = "sip:" + text
    try:
        uri = parse_uri(text)
    except SipError as exc:
        raise ConfigError(file, key, f"not a SIP URI or host: {exc}") from exc
    return uri.host.lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _default_subnets(cfg: ClusterConfig, geos: Sequence[str]) -> dict[str, list[IPNetwork]]:
    """Each data centre's /24 (IPv4) or /64 (IPv6) networks, from its applications' hosts."""
    nets: dict[str, list[IPNetwork]] = {g: [] for g in geos}
    owner: dict[IPNetwork, str] = {}
    for app in cfg.applications.values():
        if app.geo_location not in nets or not _is_ip(app.host):
            continue
        addr = ipaddress.ip_address(app.host)
        prefix = 24 if addr.version == 4 else 64
        net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        seen = owner.setdefault(net, app.geo_location)
        if seen != app.geo_location:
            raise ConfigError(
                cfg.file, f"applications.{app.name}.host",
                f"{net} holds hosts of {seen} and {app.geo_location}; give the subnets explicitly",
            )
        if net not in nets[app.geo_location]:
            nets[app.geo_location].append(net)
    return nets


def _numbered(apps: Iterable[Application], stem: str, geo: str) -> list[tuple[str, Application]]:
    return [(f"{stem}{i}-{geo}", app) for i, app in enumerate(apps, start=1)]


def _txt(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate_zone_set(
    cfg: ClusterConfig,
    *,
    subnets: Mapping[str, Sequence[str]] | None = None,
    default_view: str | None = None,
    dns_addresses: Mapping[str, str] | None = None,
    ttl: int = 300,
    serial: int = 1,
    source_name: str | None = None,
) -> ZoneSet:
    """Zone files and views for ``cfg`` (guide: "Configuring DNS Records").

    ``subnets`` maps a geo-location to its client networks (default: the /24
    of every application host of that data centre). ``default_view`` is the
    data centre whose answers clients outside every subnet get (default: the
    first geo-location in sorted order, ``dc1`` in the lab). ``dns_addresses``
    maps a geo-location to the address of its name server (the ``ns`` A
    record; default: host .53 of its first subnet). Raises
    :class:`~daemons.runtime.config.ConfigError` for what cannot be published.
    """
    file = cfg.file
    if cfg.outbound_proxy is None:
        raise ConfigError(file, "dns", "no sip-outbound-proxy DN: there is no SIP Cluster FQDN")
    proxy_dn = cfg.outbound_proxy
    origin = _fqdn(cfg.switch.domain)
    srv_fqdn = _fqdn(_contact_host(proxy_dn.contact, f"dns.{proxy_dn.dn}.contact", file))
    external = None
    if proxy_dn.external_contact:
        external = _fqdn(
            _contact_host(proxy_dn.external_contact, f"dns.{proxy_dn.dn}.external-contact", file)
        )
    in_zone = dns.name.from_text(origin)
    for key, fqdn in ((f"dns.{proxy_dn.dn}.contact", srv_fqdn),
                      (f"dns.{proxy_dn.dn}.external-contact", external)):
        if fqdn is not None and not _is_ip(fqdn.rstrip(".")) and not dns.name.from_text(
            fqdn
        ).is_subdomain(in_zone):
            raise ConfigError(file, key, f"{fqdn} is outside the switch domain {origin}")
    if external is not None and _is_ip(external.rstrip(".")):
        external = None  # an address needs no record

    proxies = cfg.by_kind(AppKind.SIP_PROXY)
    if not proxies:
        raise ConfigError(file, "applications", "no sip-proxy: the SRV records would be empty")
    geos = sorted({p.geo_location for p in proxies if p.geo_location} | set(cfg.geo_locations()))
    if default_view is None:
        default_view = geos[0]
    if default_view not in geos:
        raise ConfigError(file, None, f"default view {default_view!r} is not a geo-location "
                          f"(known: {', '.join(geos)})")

    if subnets is None:
        nets = _default_subnets(cfg, geos)
    else:
        nets = {}
        for geo, texts in subnets.items():
            if geo not in geos:
                raise ConfigError(file, None, f"subnet for unknown geo-location {geo!r}")
            try:
                nets[geo] = [ipaddress.ip_network(t, strict=True) for t in texts]
            except ValueError as exc:
                raise ConfigError(file, None, f"subnet for {geo}: {exc}") from exc
    for geo in geos:
        if not nets.get(geo):
            raise ConfigError(file, None, f"no client subnet for geo-location {geo!r}")

    ns_addr: dict[str, str] = {}
    for geo in geos:
        given = (dns_addresses or {}).get(geo)
        ns_addr[geo] = given if given else str(nets[geo][0].network_address + 53)

    # host names: proxies spxN-GEO, cluster nodes nodeN-GEO (guide: dc1-spx1 ...)
    hosts: dict[str, str] = {}  # fqdn -> address
    targets: dict[str, str] = {}  # proxy application name -> SRV target fqdn
    proxy_port: dict[str, int] = {}
    tls_port: dict[str, int] = {}  # proxies with sip-tls-port
    for geo in geos:
        for name, app in _numbered([p for p in proxies if p.geo_location == geo], "spx", geo):
            port = app.port("sip-port") or 0
            if port == 0:
                raise ConfigError(file, f"applications.{app.name}.sip-port",
                                  "an SRV record needs a fixed sip-port, not 0")
            proxy_port[app.name] = port
            secure = app.port("sip-tls-port")
            if secure is not None:
                if secure == 0:
                    raise ConfigError(file, f"applications.{app.name}.sip-tls-port",
                                      "an SRV record needs a fixed sip-tls-port, not 0")
                tls_port[app.name] = secure
            if _is_ip(app.host):
                targets[app.name] = f"{name}.{origin}"
                hosts[f"{name}.{origin}"] = app.host
            else:  # the guide: the SRV target is the Host object's FQDN
                targets[app.name] = _fqdn(app.host)
        for name, app in _numbered(cfg.cluster_nodes(geo), "node", geo):
            if _is_ip(app.host):
                hosts[f"{name}.{origin}"] = app.host

    ports = sorted(set(proxy_port.values()))
    if len(ports) > 1:
        odd = next(n for n, p in sorted(proxy_port.items()) if p != ports[0])
        raise ConfigError(file, f"applications.{odd}.sip-port",
                          f"{proxy_port[odd]} differs from the other SIP Proxies' {ports[0]}: "
                          f"the SRV records of {srv_fqdn} need one port on every proxy")
    tls_ports = sorted(set(tls_port.values()))
    if len(tls_ports) > 1:
        odd = next(n for n, p in sorted(tls_port.items()) if p != tls_ports[0])
        raise ConfigError(file, f"applications.{odd}.sip-tls-port",
                          f"{tls_port[odd]} differs from the other SIP Proxies' {tls_ports[0]}: "
                          f"the _sips._tcp SRV records of {srv_fqdn} need one port on every "
                          "proxy")
    sbc_lines = _sbc_records(cfg, origin, geos, hosts)

    views: list[ViewSpec] = []
    files: dict[str, str] = {}
    base = origin.rstrip(".")
    for geo in geos:
        lines = [
            f"; {origin} as seen from {geo} (guide: \"Configuring DNS Records\").",
            "; Generated by `sipcluster geo-dns zones`"
            + (f" from {source_name}" if source_name else "") + "; do not edit.",
            f"; {geo} SIP Proxies: SRV priority {LOCAL_PRIORITY}; other data centres: "
            f"{REMOTE_PRIORITY}.",
            f"$ORIGIN {origin}",
            f"$TTL {ttl}",
            f"@\tIN\tSOA\tns.{origin} hostmaster.{origin} "
            f"{serial} 3600 600 86400 {min(ttl, 60)}",
            f"@\tIN\tNS\tns.{origin}",
            f"ns.{origin}\tIN\tA\t{ns_addr[geo]}",
        ]
        # NAPTR (RFC 3263 §4.1): reliable transport first, as the contact asks for TCP
        naptr_owners = [origin] + ([srv_fqdn] if srv_fqdn != origin else [])
        for owner in naptr_owners:
            lines.append(f'{owner}\tIN\tNAPTR\t10 50 "s" "SIP+D2T" "" _sip._tcp.{srv_fqdn}')
            lines.append(f'{owner}\tIN\tNAPTR\t20 50 "s" "SIP+D2U" "" _sip._udp.{srv_fqdn}')
            if tls_port:
                lines.append(f'{owner}\tIN\tNAPTR\t30 50 "s" "SIPS+D2T" "" '
                             f'_sips._tcp.{srv_fqdn}')
        ordered = [p for p in proxies if p.geo_location == geo] + [
            p for p in proxies if p.geo_location != geo
        ]
        for proto in ("udp", "tcp"):
            for app in ordered:
                prio = LOCAL_PRIORITY if app.geo_location == geo else REMOTE_PRIORITY
                lines.append(
                    f"_sip._{proto}.{srv_fqdn}\tIN\tSRV\t{prio} {SRV_WEIGHT} "
                    f"{proxy_port[app.name]} {targets[app.name]}"
                )
        for app in ordered:
            if app.name in tls_port:
                prio = LOCAL_PRIORITY if app.geo_location == geo else REMOTE_PRIORITY
                lines.append(f"_sips._tcp.{srv_fqdn}\tIN\tSRV\t{prio} {SRV_WEIGHT} "
                             f"{tls_port[app.name]} {targets[app.name]}")
        lines.extend(sbc_lines)
        if external is not None:
            local = [p.host for p in proxies if p.geo_location == geo and _is_ip(p.host)]
            lines.extend(f"{external}\tIN\tA\t{addr}" for addr in local)
        for fqdn, addr in hosts.items():
            rtype = "A" if ipaddress.ip_address(addr).version == 4 else "AAAA"
            lines.append(f"{fqdn}\tIN\t{rtype}\t{addr}")
        lines.append(f"{origin}\tIN\tTXT\t{_txt('sipcluster geo-location=' + geo)}")
        filename = f"{base}.{geo}.zone"
        files[filename] = "\n".join(lines) + "\n"
        views.append(ViewSpec(geo, tuple(nets[geo]), {base: filename}))

    views.sort(key=lambda v: -max(n.prefixlen for n in v.match_clients))
    views.append(ViewSpec(DEFAULT_VIEW, _ANY, {base: f"{base}.{default_view}.zone"}))
    return ZoneSet(tuple(views), files)


def _sbc_records(cfg: ClusterConfig, origin: str, geos: Sequence[str],
                 hosts: dict[str, str]) -> list[str]:
    """The SBC fail-over SRV records (guide: "SIP registration in failover scenarios
    based on SRV records"): the Outbound Proxy DN's ``sbc-contact`` names the SRV
    set of the SBCs (``service-type = "sbc"`` DNs), by their ``priority`` (default:
    10 for the first data centre, 20 for the next ...), the same in every view, so a
    phone registers through the primary data centre's SBC and fails over to the
    next. A, not SRV, records for the SBC hosts given as addresses go to ``hosts``."""
    proxy_dn = cfg.outbound_proxy
    assert proxy_dn is not None
    file = cfg.file
    sbcs = sorted((d for d in cfg.dns.values() if d.service_type == "sbc"),
                  key=lambda d: d.number)
    if proxy_dn.sbc_contact is None:
        if sbcs:
            raise ConfigError(file, f"dns.{proxy_dn.dn}.sbc-contact",
                              f"required with the sbc DN {sbcs[0].number}: the FQDN phones "
                              "behind the SBCs resolve")
        return []
    key = f"dns.{proxy_dn.dn}.sbc-contact"
    fqdn = _fqdn(_contact_host(proxy_dn.sbc_contact, key, file))
    if not dns.name.from_text(fqdn).is_subdomain(dns.name.from_text(origin)):
        raise ConfigError(file, key, f"{fqdn} is outside the switch domain {origin}")
    if not sbcs:
        raise ConfigError(file, key, 'no VoIPService DN with service-type = "sbc": '
                          "the SRV records would be empty")
    lines: list[str] = []
    counts: dict[str, int] = {}
    for dn in sbcs:
        contact = dn.options.get("contact")
        geo = str(dn.options.get("geo-location") or "")
        if not contact:
            raise ConfigError(file, f"dns.{dn.number}.contact", "required for an sbc DN")
        if geo not in geos:
            raise ConfigError(file, f"dns.{dn.number}.geo-location",
                              f"{geo!r} is not a geo-location (known: {', '.join(geos)})")
        text = contact if contact.lower().startswith(("sip:", "sips:")) else "sip:" + contact
        try:
            uri = parse_uri(text)
        except SipError as exc:
            raise ConfigError(file, f"dns.{dn.number}.contact", str(exc)) from exc
        priority = int(dn.options.get("priority") or 0) or 10 * (1 + list(geos).index(geo))
        counts[geo] = counts.get(geo, 0) + 1
        if _is_ip(uri.host):
            target = f"sbc{counts[geo]}-{geo}.{origin}"
            hosts[target] = uri.host
        else:
            target = _fqdn(uri.host)
        port = uri.port or 5060
        lines.extend(f"_sip._{proto}.{fqdn}\tIN\tSRV\t{priority} {SRV_WEIGHT} {port} {target}"
                     for proto in ("udp", "tcp"))
    return lines


# ------------------------------------------------------------------ rendering


def render_views_file(zone_set: ZoneSet) -> str:
    """The views file: views in match order, each with its subnets and zone files."""
    out = [
        "# Views of the geo-aware DNS: a client gets the view whose match-clients",
        "# holds its source address (longest prefix wins; BIND's first match in this",
        "# order gives the same result). Generated by `sipcluster geo-dns zones`.",
    ]
    for view in zone_set.views:
        nets = ", ".join(f'"{n}"' for n in view.match_clients)
        out += ["", "[[view]]", f'name = "{view.name}"', f"match-clients = [{nets}]"]
        out.append("[view.zones]")
        out += [f'"{origin}" = "{fname}"' for origin, fname in view.zones.items()]
    return "\n".join(out) + "\n"


def _acl(view: ViewSpec) -> str:
    if set(view.match_clients) == set(_ANY):
        return "any;"
    return " ".join(f"{n};" for n in view.match_clients)


def render_named_conf(
    zone_set: ZoneSet,
    *,
    zone_dir: str = DEFAULT_ZONE_DIR,
    directory: str = DEFAULT_BIND_DIRECTORY,
    listen: Sequence[tuple[str, int]] = (("127.0.1.53", 53), ("127.0.2.53", 53)),
    pid_file: str | None = None,
    session_keyfile: str | None = None,
) -> str:
    """A BIND 9 ``named.conf`` serving the same views as the embedded server.

    Views are listed most specific first, since BIND takes the first view
    whose ``match-clients`` matches. Recursion, transfers, notifies and the
    control channel are off: this is an authoritative-only lab server.
    ``minimal-responses no-auth`` leaves the NS set out of positive answers,
    as the embedded server does, and keeps the additional addresses.
    """
    ports = sorted({p for _, p in listen})
    opts = [
        "options {",
        f'\tdirectory "{directory}";',
    ]
    if pid_file is not None:
        opts.append(f'\tpid-file "{pid_file}";')
    if session_keyfile is not None:
        opts.append(f'\tsession-keyfile "{session_keyfile}";')
    for port in ports:
        v4 = " ".join(f"{h};" for h, p in listen if p == port and ":" not in h)
        v6 = " ".join(f"{h};" for h, p in listen if p == port and ":" in h)
        if v4:
            opts.append(f"\tlisten-on port {port} {{ {v4} }};")
        if v6:
            opts.append(f"\tlisten-on-v6 port {port} {{ {v6} }};")
    if not any(":" in h for h, _ in listen):
        opts.append("\tlisten-on-v6 { none; };")
    opts += [
        "\trecursion no;",
        "\tallow-transfer { none; };",
        "\tnotify no;",
        "\tdnssec-validation no;",
        "\tminimal-responses no-auth;",
        "\tedns-udp-size 1232;",
        "\tmax-udp-size 1232;",
        "};",
        "",
        "controls { };",
    ]
    out = [
        "// BIND 9: the SIP Cluster's geo-aware zones (guide: \"Configuring DNS Records\").",
        "// Generated by `sipcluster geo-dns zones`; the same views as deploy/dns/views.toml.",
        *opts,
    ]
    for view in zone_set.views:
        out += ["", f'view "{view.name}" {{', f"\tmatch-clients {{ {_acl(view)} }};"]
        for origin, fname in view.zones.items():
            path = f"{zone_dir.rstrip('/')}/{fname}"
            out.append(f'\tzone "{origin}" {{ type primary; file "{path}"; }};')
        out.append("};")
    return "\n".join(out) + "\n"


def write_zone_set(
    zone_set: ZoneSet,
    out_dir: str | Path,
    *,
    zone_dir: str = DEFAULT_ZONE_DIR,
    directory: str = DEFAULT_BIND_DIRECTORY,
    listen: Sequence[tuple[str, int]] = (("127.0.1.53", 53), ("127.0.2.53", 53)),
    pid_file: str | None = None,
    session_keyfile: str | None = None,
) -> list[Path]:
    """Write the zone files, ``views.toml`` and ``named.conf`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = dict(zone_set.files)
    rendered[VIEWS_FILE] = render_views_file(zone_set)
    rendered[NAMED_CONF] = render_named_conf(
        zone_set, zone_dir=zone_dir, directory=directory, listen=listen,
        pid_file=pid_file, session_keyfile=session_keyfile,
    )
    written = []
    for name, text in sorted(rendered.items()):
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# ------------------------------------------------------------------ loading


def load_views_file(path: str | Path) -> ZoneSet:
    """Read a views file and the zone files it names (relative to its directory)."""
    views_path = Path(path)
    if views_path.is_dir():
        views_path = views_path / VIEWS_FILE
    where = str(views_path)
    try:
        data = tomllib.loads(views_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZoneError(where, None, str(exc)) from exc
    unknown = set(data) - {"view"}
    if unknown:
        raise ZoneError(where, sorted(unknown)[0], "unknown option")
    entries = data.get("view")
    if not isinstance(entries, list) or not entries:
        raise ZoneError(where, "view", "expected at least one [[view]] table")
    views: list[ViewSpec] = []
    files: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key = f"view[{i}]"
        if not isinstance(entry, dict):
            raise ZoneError(where, key, "expected a table")
        extra = set(entry) - {"name", "match-clients", "zones"}
        if extra:
            raise ZoneError(where, f"{key}.{sorted(extra)[0]}", "unknown option")
        name = entry.get("name")
        clients = entry.get("match-clients")
        zones = entry.get("zones")
        if not isinstance(name, str) or not name:
            raise ZoneError(where, f"{key}.name", "expected a non-empty string")
        if not isinstance(clients, list) or not clients:
            raise ZoneError(where, f"{key}.match-clients", "expected a list of subnets")
        nets: list[IPNetwork] = []
        for text in clients:
            if text == "any":
                nets.extend(_ANY)
                continue
            try:
                nets.append(ipaddress.ip_network(str(text), strict=True))
            except ValueError as exc:
                raise ZoneError(where, f"{key}.match-clients", str(exc)) from exc
        if not isinstance(zones, dict) or not zones:
            raise ZoneError(where, f"{key}.zones", "expected a table origin = zone file")
        for origin, fname in zones.items():
            if not isinstance(fname, str):
                raise ZoneError(where, f"{key}.zones.{origin}", "expected a file name")
            if fname not in files:
                try:
                    files[fname] = (views_path.parent / fname).read_text(encoding="utf-8")
                except OSError as exc:
                    raise ZoneError(where, f"{key}.zones.{origin}", str(exc)) from exc
        views.append(ViewSpec(name, tuple(nets), dict(zones)))
    return ZoneSet(tuple(views), files)


def compile_views(zone_set: ZoneSet) -> list[View]:
    """Parse every zone file (absolute names) and attach it to its views."""
    parsed: dict[tuple[str, str], dns.zone.Zone] = {}
    views: list[View] = []
    for spec in zone_set.views:
        view = View(spec.name, spec.match_clients)
        for origin, fname in spec.zones.items():
            if (origin, fname) not in parsed:
                text = zone_set.files.get(fname)
                if text is None:
                    raise ZoneError(fname, None, "zone file is missing")
                try:
                    parsed[(origin, fname)] = dns.zone.from_text(
                        text, origin=_fqdn(origin), relativize=False, filename=fname,
                        check_origin=True,
                    )
                except (dns.exception.DNSException, ValueError) as exc:
                    raise ZoneError(fname, None, str(exc)) from exc
            view.zones[dns.name.from_text(_fqdn(origin))] = parsed[(origin, fname)]
        views.append(view)
    return views


def select_view(
    views: Sequence[View], address: str, destination: str | None = None
) -> View | None:
    """The view whose ``match-clients`` holds ``address`` with the longest prefix.

    A client that belongs to no data centre (only a catch-all ``/0`` view
    holds it: a resolver on 127.0.0.1, a host outside every site) is answered
    by the address its query reached, when ``destination`` lies in a data
    centre's view: a phone told to use DC2's DNS server gets DC2's answer
    whatever address its resolver sends from.
    """
    best, best_len = _longest_match(views, address)
    if best_len <= 0 and destination is not None:
        by_destination, length = _longest_match(views, destination)
        if length > 0:
            return by_destination
    return best


def _longest_match(views: Sequence[View], address: str) -> tuple[View | None, int]:
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None, -1
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    best: View | None = None
    best_len = -1
    for view in views:
        for net in view.match_clients:
            if net.version == addr.version and addr in net and net.prefixlen > best_len:
                best, best_len = view, net.prefixlen
    return best, best_len
