"""``sipcluster geo-dns``: the lab's geo-aware authoritative DNS.

    sipcluster geo-dns --config cluster.toml [--listen HOST:PORT ...] [--http HOST:PORT]
    sipcluster geo-dns --zones DIR           [--listen HOST:PORT ...] [--http HOST:PORT]
    sipcluster geo-dns zones --config cluster.toml --out DIR [--check]

The first form builds the zones from the cluster file in memory; the second
serves a directory written by the third (``views.toml`` plus one zone file
per view, the layout of ``deploy/dns/``). ``zones`` also writes a BIND 9
``named.conf`` with the same views. Guide: "Configuring DNS Records".

Management (``--http``): ``/healthz`` (every listener bound), ``/metrics``
(``sipcluster_geo_dns_queries_total{view,rcode,transport}`` and the malformed,
dropped and truncated counters), ``/status/views``. SIGTERM stops cleanly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemons.cluster.config import load_cluster
from daemons.geo_dns.server import UDP_RECEIVE_BUFFER, GeoDnsServer
from daemons.geo_dns.zones import (
    DEFAULT_BIND_DIRECTORY,
    DEFAULT_ZONE_DIR,
    NAMED_CONF,
    VIEWS_FILE,
    View,
    ZoneSet,
    compile_views,
    generate_zone_set,
    load_views_file,
    render_named_conf,
    render_views_file,
    write_zone_set,
)
from daemons.runtime.config import ConfigError
from daemons.runtime.dns import parse_nameserver
from daemons.runtime.logs import configure_logging
from daemons.runtime.service import Service, run_service

__all__ = ["GeoDnsService", "add_parser", "run", "zone_set_from_args"]

#: One name server per data centre, the lab convention (host .53 of each subnet).
DEFAULT_LISTEN = ("127.0.1.53:53", "127.0.2.53:53")


class GeoDnsService(Service):
    """The embedded geo-aware DNS as a daemon: sockets, health, metrics."""

    kind = "geo_dns"

    def __init__(
        self,
        views: Sequence[View],
        listen: Sequence[tuple[str, int]],
        *,
        app_name: str = "geo-dns",
        http: tuple[str, int] = ("127.0.0.1", 0),
        udp_receive_buffer: int = UDP_RECEIVE_BUFFER,
    ) -> None:
        super().__init__(app_name)
        self.listen = list(listen)
        self.management_host, self.management_port = http
        self.server = GeoDnsServer(views, metrics=self.metrics,
                                   udp_receive_buffer=udp_receive_buffer)
        self.management.add_health_check("listeners", self._health)
        self.management.add_status_page("/status/views", self._status_views)

    async def start(self) -> None:
        await self.server.start(self.listen)

    async def stop(self) -> None:
        await self.server.stop()

    def _health(self) -> tuple[bool, dict[str, Any]]:
        bound = [f"{h}:{p}" for h, p in self.server.bound]
        return len(bound) == len(self.listen), {"listening": bound}

    def _status_views(self) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "match-clients": [str(n) for n in v.match_clients],
                "zones": [o.to_text() for o in v.zones],
            }
            for v in self.server.views
        ]


# ---------------------------------------------------------------------- CLI


def _subnet(text: str) -> tuple[str, str]:
    geo, sep, net = text.partition("=")
    if not sep or not geo or not net:
        raise argparse.ArgumentTypeError(f"expected GEO=CIDR, got {text!r}")
    return geo, net


def _geo_addr(text: str) -> tuple[str, str]:
    geo, sep, addr = text.partition("=")
    if not sep or not geo or not addr:
        raise argparse.ArgumentTypeError(f"expected GEO=ADDRESS, got {text!r}")
    return geo, addr


def _buffer_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes, got {text!r}") from None
    if not 4096 <= value <= 1 << 30:
        raise argparse.ArgumentTypeError(f"{value} is not between 4096 and 1073741824")
    return value


def _hostport(text: str) -> tuple[str, int]:
    try:
        host, port = parse_nameserver(text, 53)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from exc
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, port


def _add_zone_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--subnet", type=_subnet, action="append", default=default,
                        metavar="GEO=CIDR",
                        help="client subnet of a data centre (repeat; default: the /24 of "
                             "its applications' hosts)")
    parser.add_argument("--default-view", default=default, metavar="GEO",
                        help="data centre whose answers other clients get (default: first)")
    parser.add_argument("--ns-address", type=_geo_addr, action="append", default=default,
                        metavar="GEO=ADDRESS",
                        help="address of a data centre's name server (default: .53 of its "
                             "subnet)")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "geo-dns",
        help="geo-aware authoritative DNS for the SIP Cluster FQDN (and BIND 9 zones)",
        description=(
            "Answers SRV, NAPTR and A queries for the SIP Cluster FQDN by the client's "
            "source address: clients in a data centre get its SIP Proxies at SRV priority "
            "10 and the others at 200 (guide: \"Configuring DNS Records\")."),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="the cluster file (TOML)")
    source.add_argument("--zones", type=Path, metavar="DIR",
                        help="a directory with views.toml and its zone files")
    parser.add_argument("--listen", type=_hostport, action="append", metavar="HOST:PORT",
                        help="UDP+TCP address (repeat; default: 127.0.1.53:53 and "
                             "127.0.2.53:53; port 0 = any free port)")
    parser.add_argument("--http", type=_hostport, default=("127.0.0.1", 0), metavar="HOST:PORT",
                        help="management listener: /healthz, /metrics (default 127.0.0.1:0)")
    parser.add_argument("--udp-receive-buffer", type=_buffer_size, default=UDP_RECEIVE_BUFFER,
                        metavar="BYTES",
                        help="receive buffer of each UDP socket, for bursts of queries "
                             f"(default {UDP_RECEIVE_BUFFER}; above net.core.rmem_max it "
                             "needs root or CAP_NET_ADMIN, else the kernel caps it and a "
                             "warning says so)")
    parser.add_argument("--name", default="geo-dns", help="application name in logs")
    parser.add_argument("--log-level", default=os.environ.get("SIPCLUSTER_LOG_LEVEL", "info"))
    parser.add_argument("--log-format", default="auto", choices=("auto", "json", "console"))
    _add_zone_options(parser, None)
    parser.set_defaults(run=run)

    sub = parser.add_subparsers(dest="geo_dns_action", metavar="ACTION")
    zones = sub.add_parser(
        "zones",
        help="write the zone files, views.toml and a BIND 9 named.conf for a cluster file",
    )
    zones.add_argument("--config", type=Path, required=True, help="the cluster file (TOML)")
    zones.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="directory to write (e.g. deploy/dns)")
    zones.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 when DIR differs from what would be written")
    zones.add_argument("--zone-dir", default=DEFAULT_ZONE_DIR,
                       help=f"where named.conf finds the zone files ({DEFAULT_ZONE_DIR})")
    zones.add_argument("--bind-directory", default=DEFAULT_BIND_DIRECTORY,
                       help=f"named.conf's directory option ({DEFAULT_BIND_DIRECTORY})")
    zones.add_argument("--listen", type=_hostport, action="append", metavar="HOST:PORT",
                       help="named.conf listen-on (default: 127.0.1.53:53 and 127.0.2.53:53)")
    _add_zone_options(zones, argparse.SUPPRESS)
    zones.set_defaults(run=run_zones)


def zone_set_from_args(args: argparse.Namespace) -> ZoneSet:
    """The zones the command line asks for (``--config`` or ``--zones``)."""
    if getattr(args, "zones", None) is not None:
        return load_views_file(args.zones)
    if getattr(args, "config", None) is None:
        raise ConfigError("geo-dns", None, "give --config FILE or --zones DIR")
    cfg = load_cluster(args.config)
    subnets: dict[str, list[str]] | None = None
    if getattr(args, "subnet", None):
        subnets = {}
        for geo, net in args.subnet:
            subnets.setdefault(geo, []).append(net)
    return generate_zone_set(
        cfg,
        subnets=subnets,
        default_view=getattr(args, "default_view", None),
        dns_addresses=dict(getattr(args, "ns_address", None) or []),
        source_name=Path(args.config).name,
    )


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, fmt=args.log_format)
    listen = args.listen or [_hostport(t) for t in DEFAULT_LISTEN]
    try:
        views = compile_views(zone_set_from_args(args))
    except ConfigError as exc:
        print(f"geo-dns: {exc}", file=sys.stderr)
        return 2
    return run_service(GeoDnsService(views, listen, app_name=args.name, http=args.http,
                                     udp_receive_buffer=args.udp_receive_buffer))


def run_zones(args: argparse.Namespace) -> int:
    try:
        zone_set = zone_set_from_args(args)
    except ConfigError as exc:
        print(f"geo-dns zones: {exc}", file=sys.stderr)
        return 2
    listen = args.listen or [_hostport(t) for t in DEFAULT_LISTEN]
    if args.check:
        wanted = dict(zone_set.files)
        wanted[VIEWS_FILE] = render_views_file(zone_set)
        wanted[NAMED_CONF] = render_named_conf(
            zone_set, zone_dir=args.zone_dir, directory=args.bind_directory, listen=listen
        )
        stale = [
            name for name, text in sorted(wanted.items())
            if not (args.out / name).is_file()
            or (args.out / name).read_text(encoding="utf-8") != text
        ]
        for name in stale:
            print(f"geo-dns zones: {args.out / name} is out of date", file=sys.stderr)
        return 1 if stale else 0
    for path in write_zone_set(
        zone_set, args.out, zone_dir=args.zone_dir, directory=args.bind_directory, listen=listen
    ):
        print(path)
    return 0
