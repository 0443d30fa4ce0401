"""``sipcluster lab``: the two-data-centre lab on loopback.

    sipcluster lab run     [--dir DIR]   foreground; Ctrl-C stops everything
    sipcluster lab start   [--dir DIR]   background; returns when all answer /healthz
    sipcluster lab status  [--dir DIR]
    sipcluster lab stop    [--dir DIR]
    sipcluster lab kill    NAME [--dir DIR]     abrupt failure of one daemon
    sipcluster lab restart NAME [--dir DIR]
    sipcluster lab partition dc1 dc2 [--dir DIR]   cut every link between two data centres
    sipcluster lab heal [--dir DIR]                restore them

DC1 lives on 127.0.1.x and DC2 on 127.0.2.x; Linux routes all of 127/8 to
``lo``, so nothing needs setting up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from daemons.cluster.config import Application, ClusterConfig, load_cluster
from daemons.lab.partition import PartitionError, heal, is_partitioned, partition, subnet_of
from daemons.lab.supervisor import Supervisor
from daemons.lab.topology import (
    issue_lab_certificates,
    lab_description,
    lab_dns_addresses,
    process_specs,
)
from daemons.runtime.config import ConfigError

#: deploy/etc/cluster.toml, shipped inside the package (a link in the source tree,
#: a copy in a wheel) so that an installed sipcluster finds it too
EXAMPLE_CONFIG = Path(__file__).resolve().with_name("cluster.toml")
DEFAULT_DIR = Path("lab-run")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("lab", help="run the two-data-centre lab on loopback")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="lab directory (lab-run)")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="cluster file to copy into the lab directory (default: deploy/etc/cluster.toml)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for health")
    parser.add_argument(
        "action",
        choices=["run", "start", "status", "stop", "kill", "restart", "partition", "heal",
                 "drill"],
    )
    parser.add_argument(
        "name", nargs="*", help="application name (kill, restart); two geo-locations (partition)"
    )
    drill = parser.add_argument_group("drill (faults under load on a running lab)")
    drill.add_argument("--duration", type=float, default=120.0,
                       help="seconds of load (default: %(default)s)")
    drill.add_argument("--register-rate", type=float, default=10.0,
                       help="REGISTER/s over the data centres (default: %(default)s)")
    drill.add_argument("--call-rate", type=float, default=4.0,
                       help="calls/s to the PSTN gateways (default: %(default)s)")
    drill.add_argument("--json", type=Path, default=None, help="write the report here too")
    parser.set_defaults(run=run)


def _prepare(args: argparse.Namespace) -> tuple[ClusterConfig, Supervisor, list[Application]]:
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "cluster.toml"
    if args.config is not None or not config_path.exists():
        shutil.copyfile(args.config or EXAMPLE_CONFIG, config_path)
    cfg = load_cluster(config_path)
    specs, skipped = process_specs(cfg, config_path)
    return cfg, Supervisor(directory, {s.name: s for s in specs}), skipped


def _write_description(cfg: ClusterConfig, sup: Supervisor) -> Path:
    running = {name for name in sup.specs if sup.alive(name)}
    path = sup.directory / "lab.json"
    dns = lab_dns_addresses(cfg)[0] if "GeoDNS" in running else None
    desc = lab_description(cfg, running=running, dns=dns)
    path.write_text(json.dumps(desc, indent=2) + "\n")
    return path


def _not_built(app: Application) -> str:
    """Why an application of the cluster file is not part of the lab."""
    return f"not started: this build has no `sipcluster {app.kind.value}`"


def _print_guide(desc_path: Path, skipped: list[Application]) -> None:
    desc = json.loads(desc_path.read_text())
    print("\nsipcluster lab is up.\n")
    for geo, centre in desc["data_centres"].items():
        print(f"  {geo}:")
        for node in centre["nodes"]:
            if not node["running"]:
                continue
            print(
                f"    node {node['name']:<12} SIP {node['host']}:{node['sip_port']}  "
                f"T-Library default {node['default_port']}  IPport {node['ip_port']}  "
                f"TCport {node['tc_port']}  SmartProxy {node['smart_proxy_port']}"
            )
        for proxy in centre["proxies"]:
            if proxy["running"]:
                tls = f"  TLS {proxy['host']}:{proxy['tls_port']}" \
                    if proxy.get("tls_port") else ""
                print(f"    proxy {proxy['name']:<12} SIP {proxy['host']}:{proxy['sip_port']}"
                      f"{tls}")
        for gateway in centre.get("pstn_gateways", []):
            if gateway["running"]:
                print(f"    PSTN gateway {gateway['name']} SIP {gateway['host']}:"
                      f"{gateway['sip_port']} (dial 9 + digits)")
    for sa in desc.get("status_aggregators") or []:
        if sa["running"]:
            print(f"  status-aggregator {sa['name']}  status {sa['host']}:{sa['status_port']} "
                  f"(mutual TLS, certificates in {desc['certificates']['dir']})  "
                  f"web http://{sa['host']}:{sa['http_port']}/")
    if desc.get("dns"):
        dns = desc["dns"]
        print(f"  geo DNS GeoDNS  DNS {dns['host']}:{dns['port']}  "
              f"HTTP {dns['host']}:{dns['http_port']}")
    print(f"\n  SIP domain {desc['domain']}, digest realm {desc['realm']}")
    if desc.get("srv_fqdn") and desc.get("dns"):
        print(f"  SRV {desc['srv_fqdn']} via DNS {desc['dns']['host']}:{desc['dns']['port']}")
    print("  accounts: " + ", ".join(f"{a['dn']}/{a['password']}" for a in desc["accounts"][:3])
          + f" ... ({len(desc['accounts'])} in lab.json)")
    if desc.get("srv_fqdn") and desc.get("dns"):
        dns = desc["dns"]
        print(f"  softphone: DNS server {dns['host']}:{dns['port']}, outbound proxy "
              f"sip:{desc['srv_fqdn']} (or a proxy address above), "
              f"user 1001@{desc['domain']}")
    else:
        print("  softphone: outbound proxy = a proxy address above, user 1001, "
              "password in lab.json")
    tls_ports = sorted({p["tls_port"] for c in desc["data_centres"].values()
                        for p in c["proxies"] if p.get("tls_port") and p["running"]})
    if tls_ports and desc.get("certificates"):
        target = f"sip:{desc['srv_fqdn']}" if desc.get("srv_fqdn") and desc.get("dns") \
            else "sip:<proxy address>"
        print(f"  over TLS: outbound proxy {target};transport=tls (or a proxy's TLS "
              f"address above, port {', '.join(map(str, tls_ports))}), trusting the lab CA "
              f"{desc['certificates']['ca']} (baresip: sip_cafile; linphonec: root_ca)")
    for fs in desc.get("feature_servers", []):
        if fs.get("running") and fs.get("default_pin"):
            print(f"  voicemail: dial {fs['voicemail_access_number']}, PIN "
                  f"{fs['default_pin']} (every account has a mailbox; busy and unanswered "
                  "calls go there)")
            break
    print("  step by step for baresip, linphonec and any other phone: README.md, "
          "\"Softphones on the lab\"")
    for app in skipped:
        print(f"  {app.name} ({app.kind.value}) {_not_built(app)}")
    print(f"\n  everything above, for scripts: {desc_path}")


def run(args: argparse.Namespace) -> int:
    try:
        cfg, sup, skipped = _prepare(args)
    except ConfigError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    action = args.action
    names: list[str] = args.name
    if action in ("kill", "restart"):
        if len(names) != 1 or names[0] not in sup.specs:
            print(f"lab: unknown application {' '.join(names)!r}; one of: "
                  f"{', '.join(sup.specs)}", file=sys.stderr)
            return 2
        args.name = names[0]
    if action in ("partition", "heal"):
        return _partition(cfg, sup, action, names)
    if action == "drill":
        if not any(sup.alive(n) for n in sup.specs):
            print("lab: not running here; `sipcluster lab start` first", file=sys.stderr)
            return 1
        from daemons.lab.drill import main_args
        return main_args(sup.directory, args.duration, args.register_rate, args.call_rate,
                         args.json)
    if action == "status":
        return _status(cfg, sup, skipped)
    if action == "stop":
        with contextlib.suppress(PartitionError):
            heal(sup.directory)
        sup.stop_all()
        if (sup.directory / "lab.json").exists():
            # nothing runs: the tools that read lab.json no longer ask its DNS server
            _write_description(cfg, sup)
        print("lab stopped")
        return 0
    if action == "kill":
        sup.kill(args.name)
        _write_description(cfg, sup)
        print(f"{args.name} killed")
        return 0
    if action == "restart":
        sup.stop(args.name)
        sup.start(args.name)
        # the daemons linked to it (a t-controller to its sip-server) reconnect too
        late = sup.wait_healthy([n for n in sup.specs if sup.alive(n)], timeout=args.timeout)
        _write_description(cfg, sup)
        print(f"{args.name} {'restarted' if not late else 'restarted but not healthy'}")
        return 1 if late else 0
    # run / start
    if any(sup.alive(n) for n in sup.specs):
        print("lab: already running here; `sipcluster lab stop` first", file=sys.stderr)
        return 1
    if not sup.specs:
        print("lab: no daemon of this cluster file is built yet", file=sys.stderr)
        return 1
    issue_lab_certificates(cfg)
    sup.start_all()
    try:
        late = sup.wait_healthy(timeout=args.timeout)
    except RuntimeError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        sup.stop_all()
        return 1
    if late:
        print("lab: not healthy in time: " + ", ".join(late), file=sys.stderr)
        for name in late:
            print(f"--- {name}\n{sup.tail_log(name)}", file=sys.stderr)
        sup.stop_all()
        return 1
    desc = _write_description(cfg, sup)
    _print_guide(desc, skipped)
    if action == "start":
        return 0
    print("\nCtrl-C stops the lab.", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        for name in sup.specs:
            if not sup.alive(name):
                print(f"lab: {name} exited; see {sup.log_path(name)}", file=sys.stderr)
                stop.set()
    print("\nstopping the lab ...", flush=True)
    sup.stop_all()
    print("lab stopped")
    return 0


def _partition(cfg: ClusterConfig, sup: Supervisor, action: str, names: list[str]) -> int:
    try:
        if action == "heal":
            had = heal(sup.directory)
            print("links between data centres restored" if had else "no partition to heal")
            return 0
        geos = cfg.geo_locations()
        if len(names) != 2 or not set(names) <= set(geos) or names[0] == names[1]:
            print(f"lab: partition takes two geo-locations of: {', '.join(geos)}",
                  file=sys.stderr)
            return 2
        subnets = [
            subnet_of([a.host for a in cfg.applications.values() if a.geo_location == geo])
            for geo in names
        ]
        partition(sup.directory, subnets[0], subnets[1])
    except PartitionError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    print(f"{names[0]} ({subnets[0]}) and {names[1]} ({subnets[1]}) are cut off from each other;"
          " `sipcluster lab heal` restores them")
    return 0


def _status(cfg: ClusterConfig, sup: Supervisor, skipped: list[Application]) -> int:
    if is_partitioned(sup.directory):
        print("partitioned: links between data centres are cut (`sipcluster lab heal`)")
    worst = 0
    for name in sup.specs:
        alive = sup.alive(name)
        healthy = alive and sup.healthy(name)
        state = "healthy" if healthy else ("running, unhealthy" if alive else "stopped")
        if not healthy:
            worst = 1
        print(f"{name:<16} {state}")
    for app in skipped:
        print(f"{app.name:<16} {_not_built(app)}")
    return worst
