"""``sipcluster lab``: the two-data-centre lab on loopback.

    sipcluster lab run     [--dir DIR]   foreground; Ctrl-C stops everything
    sipcluster lab start   [--dir DIR]   background; returns when all answer /healthz
    sipcluster lab status  [--dir DIR]
    sipcluster lab stop    [--dir DIR]
    sipcluster lab kill    NAME [--dir DIR]     abrupt failure of one daemon (site:NAME: a site)
    sipcluster lab restart NAME [--dir DIR]
    sipcluster lab partition dc1 dc2 [--dir DIR]   cut every link between two data centres
    sipcluster lab partition site:Indy RTM1         ... or between sites, or a site and the hub
    sipcluster lab heal [--dir DIR]                restore them
    sipcluster lab start --wan-delay-ms 40 --wan-loss 1   DC1 <-> DC2 over an emulated WAN

DC1 lives on 127.0.1.x and DC2 on 127.0.2.x; Linux routes all of 127/8 to
``lo``, so nothing needs setting up. The lab is a collective: that cluster is
site 1 (Boca), sites Indy (127.0.3.x) and Lyon (127.0.4.x) are cluster files
of their own under DIR/sites/, linked through the hub RTM1 (docs/collective.md).

``--wan-delay-ms`` / ``--wan-loss`` (run, start) put an emulated WAN between
DC1 and DC2: the whole lab runs in a network namespace of its own where every
packet between the two /24s waits the delay and is lost with the given
probability (``daemons/lab/wan.py``; root, a TUN device). Phones and tools
run in that namespace (``ip netns exec NAME ...``, printed by ``lab start``);
the other ``lab`` commands enter it by themselves, and ``lab stop`` removes it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from daemons.cluster.config import AppKind, Application, ClusterConfig, load_cluster
from daemons.lab.partition import PartitionError, heal, is_partitioned, partition, subnet_of
from daemons.lab.supervisor import Supervisor
from daemons.lab.topology import (
    LAB_WORKGROUP,
    hub_description,
    install_sites,
    issue_lab_certificates,
    lab_description,
    lab_dns_addresses,
    lab_user_id,
    process_specs,
    site_description,
    site_files,
)
from daemons.lab.wan import (
    Wan,
    WanError,
    namespace_exists,
    relay_pid,
    stop_detached,
    wan_unavailable,
)
from daemons.runtime.config import ConfigError

#: deploy/etc/cluster.toml, shipped inside the package (a link in the source tree,
#: a copy in a wheel) so that an installed sipcluster finds it too
EXAMPLE_CONFIG = Path(__file__).resolve().with_name("cluster.toml")
DEFAULT_DIR = Path("lab-run")
#: set in the environment of a ``lab`` command run inside the lab's WAN namespace
LAB_NAMESPACE_ENV = "SIPCLUSTER_LAB_NAMESPACE"
#: the WAN relay's settings and counters, in the lab directory while it runs
WAN_STATE = "wan.json"


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
    wan = parser.add_argument_group("WAN between the data centres (run, start; root)")
    wan.add_argument("--wan-delay-ms", type=float, default=None, metavar="MS",
                     help="delay each way between DC1 and DC2 (e.g. 40); the lab then runs "
                          "in a network namespace of its own")
    wan.add_argument("--wan-loss", type=float, default=None, metavar="PERCENT",
                     help="packets lost each way between DC1 and DC2 (e.g. 1; default 0)")
    parser.set_defaults(run=run)


#: the other sites' cluster files of the lab being handled (set by _prepare)
_SITES: list[tuple[Path, ClusterConfig]] = []
#: application name -> the site it belongs to (site:NAME), every site's
_SITE_OF: dict[str, str] = {}


def _prepare(args: argparse.Namespace) -> tuple[ClusterConfig, Supervisor, list[Application]]:
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "cluster.toml"
    if args.config is not None or not config_path.exists():
        shutil.copyfile(args.config or EXAMPLE_CONFIG, config_path)
    cfg = load_cluster(config_path)
    specs, skipped = process_specs(cfg, config_path)
    # the other sites of the collective: the shipped ones with the shipped example
    # (a lab from another cluster file runs the sites its directory holds)
    files = install_sites(directory) if args.config is None and args.action in ("run", "start") \
        else site_files(directory)
    _SITES.clear()
    _SITE_OF.clear()
    home = site_description(cfg, running=set(), cluster_file=config_path)
    for spec in specs:
        _SITE_OF[spec.name] = f"site:{home['site_name']}" if home else "site:1"
    names = {s.name for s in specs}
    for path in files:
        site_cfg = load_cluster(path)
        site_specs, site_skipped = process_specs(site_cfg, path)
        clash = names & {s.name for s in site_specs}
        if clash:
            raise ConfigError(str(path), "applications",
                              f"{', '.join(sorted(clash))} also in another site of the lab")
        names |= {s.name for s in site_specs}
        specs += site_specs
        skipped += site_skipped
        _SITES.append((path, site_cfg))
        desc = site_description(site_cfg, running=set(), cluster_file=path)
        for spec in site_specs:
            _SITE_OF[spec.name] = f"site:{desc['site_name'] if desc else path.parent.name}"
    return cfg, Supervisor(directory, {s.name: s for s in specs}), skipped


def _write_description(cfg: ClusterConfig, sup: Supervisor) -> Path:
    running = {name for name in sup.specs if sup.alive(name)}
    path = sup.directory / "lab.json"
    dns = lab_dns_addresses(cfg)[0] if "GeoDNS" in running else None
    desc = lab_description(cfg, running=running, dns=dns)
    sites = [site_description(cfg, running=running, cluster_file=Path(cfg.file))]
    sites += [site_description(c, running=running, cluster_file=p) for p, c in _SITES]
    desc["sites"] = [s for s in sites if s is not None]
    desc["hub"] = hub_description(cfg, running=running)
    desc["workgroup"] = LAB_WORKGROUP if desc["sites"] else None
    desc["wan"] = _wan_description(cfg, sup.directory) if running else None
    path.write_text(json.dumps(desc, indent=2) + "\n")
    return path


def _site_processes(name: str, sup: Supervisor) -> list[str]:
    """The lab's processes of ``site:NAME`` (or ``site:ID``)."""
    return [n for n in sup.specs if _SITE_OF.get(n, "").lower() == name.lower()]


def _provision_users(desc_path: Path) -> list[str]:
    """Every site's phone accounts become users of its collective (``a`` + DN,
    extension DN, the spanning workgroup): the company-wide directory of the lab.
    The sites whose collective refused, for the guide."""
    desc = json.loads(desc_path.read_text())
    failed = []
    for site in desc.get("sites") or []:
        collective = site["collective"]
        if not collective["running"]:
            continue
        base = f"http://{collective['host']}:{collective['http_port']}"
        for account in site["accounts"]:
            body = json.dumps({"name": f"Agent {account['dn']}", "extension": account["dn"],
                               "workgroups": [LAB_WORKGROUP]}).encode()
            request = urllib.request.Request(f"{base}/users/{lab_user_id(account['dn'])}",
                                             data=body, method="PUT",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=5.0):
                    pass
            except (urllib.error.URLError, OSError) as exc:
                failed.append(f"{site['site_name']}: {exc}")
                break
    return failed


def _wait_for_directories(desc_path: Path, timeout: float = 30.0) -> list[str]:
    """Wait until every running collective lists every site's users (they reach
    the other sites through the hub a moment after they were added at home), so
    that the guide's commands find them at once; what is still missing at the
    end of ``timeout``."""
    desc = json.loads(desc_path.read_text())
    sites = [s for s in desc.get("sites") or [] if s["collective"]["running"]]
    wanted = {lab_user_id(a["dn"]) for s in sites for a in s["accounts"]}
    missing: dict[str, set[str] | str] = {}
    deadline = time.monotonic() + timeout
    while True:
        missing.clear()
        for site in sites:
            c = site["collective"]
            try:
                with urllib.request.urlopen(
                        f"http://{c['host']}:{c['http_port']}/users", timeout=5.0) as answer:
                    have = {u.get("id") for u in json.loads(answer.read())}
            except (urllib.error.URLError, OSError, ValueError) as exc:
                missing[site["site_name"]] = str(exc)
                continue
            if wanted - have:
                missing[site["site_name"]] = wanted - have
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [f"the directory of site {name} lacks after {timeout:g} s: "
            + (what if isinstance(what, str) else ", ".join(sorted(what)))
            for name, what in missing.items()]


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
    _print_wan(desc)
    _print_sites(desc)
    for app in skipped:
        print(f"  {app.name} ({app.kind.value}) {_not_built(app)}")
    print(f"\n  everything above, for scripts: {desc_path}")


def _print_wan(desc: dict[str, Any]) -> None:
    wan = desc.get("wan")
    if not wan:
        return
    ns = wan["namespace"]
    centres = list(desc["data_centres"].values())
    far = centres[-1]["proxies"][0]
    near = centres[0]["proxies"][0]["host"].rsplit(".", 1)[0] + ".100"
    between = " and ".join(f"{geo} ({net})" for geo, net in wan["between"].items())
    print(f"\n  emulated WAN between {between}: {wan['delay_ms']:g} ms each way, "
          f"{wan['loss_percent']:g} % loss")
    print(f"    the lab runs in network namespace {ns}: run phones and tools there, e.g.\n"
          f"      ip netns exec {ns} baresip\n"
          f"      ip netns exec {ns} sipcluster sip options sip:{far['host']}:"
          f"{far['sip_port']} --bind {near}   (a round trip over the WAN)\n"
          f"    (as root; sudo otherwise). `sipcluster lab status|kill|restart|partition|drill|"
          f"stop` enter it by themselves; stop removes it.")


def _print_sites(desc: dict[str, Any]) -> None:
    """The collective: the hub, each site and how a phone registers there."""
    sites = desc.get("sites") or []
    hub = desc.get("hub")
    if not sites:
        return
    where = f"hub {hub['name']} {hub['host']}:{hub['rtm_port']}" if hub else "no hub"
    print(f"\n  collective ({where}; users of workgroup {desc.get('workgroup')} "
          "are at every site):")
    for site in sites:
        c = site["collective"]
        state = "" if c["running"] else " (not running)"
        print(f"    site {site['site_identifier']} {site['site_name']:<5} domain "
              f"{site['domain']}  collective {c['name']} http://{c['host']}:{c['http_port']}/"
              f"directory{state}")
        if site["cluster_file"] == desc["sites"][0]["cluster_file"]:
            print("      phones: as above")
            continue
        proxy = next((p for p in site["proxies"] if p["running"]), None)
        node = next((n for n in site["nodes"] if n["running"]), None)
        if proxy is not None and site["accounts"]:
            first = site["accounts"][0]
            print(f"      register: user {first['dn']}@{site['domain']}, password "
                  f"{first['password']}, outbound proxy sip:{proxy['host']}:"
                  f"{proxy['sip_port']} ({len(site['accounts'])} accounts in lab.json)")
        if node is not None:
            print(f"      node {node['name']} SIP {node['host']}:{node['sip_port']}  TCport "
                  f"{node['tc_port']}; trunks to "
                  + ", ".join(f"{s} ({t['dn']})" for s, t in site["site_trunks"].items()))
    print("    roaming: agent aNNNN logs in (TCport, AgentID aNNNN) on a DN of another "
          "site; calls to extension NNNN follow it there (docs/collective.md)")


def lab_namespace(directory: Path) -> str:
    """The network namespace of the lab in ``directory`` when it runs behind a WAN
    (one per lab directory)."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:6]
    return f"sipcluster-lab-{digest}"


def _inner_command(args: argparse.Namespace, directory: Path) -> list[str]:
    """This ``lab`` command again, for the lab's namespace."""
    cmd = [sys.executable, "-m", "daemons.cli", "lab", args.action, *args.name,
           "--dir", str(directory), "--timeout", f"{args.timeout:g}"]
    if args.config is not None:
        cmd += ["--config", str(args.config.resolve())]
    if args.action == "drill":
        cmd += ["--duration", f"{args.duration:g}", "--register-rate", f"{args.register_rate:g}",
                "--call-rate", f"{args.call_rate:g}"]
        if args.json is not None:
            cmd += ["--json", str(args.json.resolve())]
    return cmd


def _run_inside(namespace: str, cmd: list[str]) -> int:
    """Run ``cmd`` in ``namespace`` and wait for it. SIGINT and SIGTERM are passed
    on (Ctrl-C in a terminal reaches it directly too): it stops the lab itself,
    and this process waits for that instead of leaving it behind."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, LAB_NAMESPACE_ENV: namespace,
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                        os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(["ip", "netns", "exec", namespace, *cmd], env=env)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _with_wan(args: argparse.Namespace) -> int | None:
    """A lab behind the emulated WAN: make its namespace and run the command there
    (run, start), or enter the namespace of the lab running in ``--dir``. None
    when the lab has no WAN: the command runs here."""
    directory: Path = args.dir.resolve()
    namespace = lab_namespace(directory)
    state = directory / WAN_STATE
    wanted = args.wan_delay_ms is not None or args.wan_loss is not None
    if args.action not in ("run", "start"):
        if wanted:
            print("lab: --wan-delay-ms and --wan-loss go with run or start", file=sys.stderr)
            return 2
        if not state.exists():
            return None
        if not namespace_exists(namespace):
            state.unlink()  # left over from a host that has rebooted since
            return None
        pid = relay_pid(state)
        code = _run_inside(namespace, _inner_command(args, directory))
        if args.action == "stop":
            stop_detached(namespace, pid)
            state.unlink(missing_ok=True)
            print(f"WAN namespace {namespace} removed")
        return code
    if not wanted:
        return None
    delay = 0.0 if args.wan_delay_ms is None else args.wan_delay_ms
    loss = 0.0 if args.wan_loss is None else args.wan_loss
    if delay < 0 or not 0 <= loss < 100:
        print("lab: --wan-delay-ms must be >= 0 and --wan-loss within 0-100", file=sys.stderr)
        return 2
    problem = wan_unavailable()
    if problem is not None:
        print(f"lab: an emulated WAN {problem}", file=sys.stderr)
        return 2
    try:
        cfg, sup, _ = _prepare(args)
    except ConfigError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    if any(sup.alive(n) for n in sup.specs):
        print("lab: already running here; `sipcluster lab stop` first", file=sys.stderr)
        return 1
    centres = _parties(cfg)
    geos = [g.lower() for g in cfg.geo_locations()]
    if len(geos) != 2:
        print(f"lab: an emulated WAN needs two data centres in the cluster file, not "
              f"{len(geos)}", file=sys.stderr)
        return 2
    if namespace_exists(namespace):  # a WAN lab that was not stopped: its daemons are gone
        stop_detached(namespace, relay_pid(state))
    wan = Wan(namespace, str(centres[geos[0]][0]), str(centres[geos[1]][0]), delay, loss, state)
    try:
        wan.create(directory / "wan.log")
    except WanError as exc:
        print(f"lab: emulated WAN: {exc}", file=sys.stderr)
        return 1
    code = 1
    try:
        code = _run_inside(namespace, _inner_command(args, directory))
    finally:
        if args.action == "run" or code != 0:
            wan.delete()
            state.unlink(missing_ok=True)
    return code


def _wan_description(cfg: ClusterConfig, directory: Path) -> dict[str, Any] | None:
    """lab.json's "wan": the namespace the lab runs in and what its WAN does
    (None: no WAN)."""
    namespace = os.environ.get(LAB_NAMESPACE_ENV)
    state = directory / WAN_STATE
    try:
        relay = json.loads(state.read_text()) if namespace else None
    except (OSError, ValueError):
        relay = None
    if relay is None:
        return None
    parties = _parties(cfg)
    return {"namespace": namespace,
            "between": {geo: str(parties[geo.lower()][0]) for geo in cfg.geo_locations()},
            "delay_ms": relay.get("delay_ms"), "loss_percent": relay.get("loss_percent"),
            "state": str(state)}


def run(args: argparse.Namespace) -> int:
    if LAB_NAMESPACE_ENV not in os.environ:
        outcome = _with_wan(args)
        if outcome is not None:
            return outcome
    try:
        cfg, sup, skipped = _prepare(args)
    except ConfigError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    action = args.action
    names: list[str] = args.name
    targets: list[str] = []
    if action in ("kill", "restart"):
        if len(names) == 1 and names[0].lower().startswith("site:"):
            targets = _site_processes(names[0], sup)
        elif len(names) == 1 and names[0] in sup.specs:
            targets = [names[0]]
        if not targets:
            sites = sorted(set(_SITE_OF.values()))
            print(f"lab: unknown application {' '.join(names)!r}; one of: "
                  f"{', '.join([*sup.specs, *sites])}", file=sys.stderr)
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
        for name in targets:
            sup.kill(name)
        _write_description(cfg, sup)
        print(f"{args.name} killed" + (f" ({', '.join(targets)})" if len(targets) > 1 else ""))
        return 0
    if action == "restart":
        for name in targets:
            sup.stop(name)
        for name in targets:  # in the start order of the lab
            sup.start(name)
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
    for _, site_cfg in _SITES:  # each site its own CA, in certs/ beside its cluster file
        issue_lab_certificates(site_cfg)
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
    problems = _provision_users(desc)
    for problem in problems:
        print(f"lab: users not added: {problem}", file=sys.stderr)
    if not problems:
        for problem in _wait_for_directories(desc):
            print(f"lab: {problem}", file=sys.stderr)
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
        parties = _parties(cfg)
        if len(names) != 2 or names[0] == names[1] or \
                not all(n.lower() in parties for n in names):
            print("lab: partition takes two geo-locations, sites or hubs of: "
                  + ", ".join(_display(cfg)), file=sys.stderr)
            return 2
        a, b = (parties[n.lower()] for n in names)
        if any(x.overlaps(y) for x in a for y in b):
            print(f"lab: {names[0]} and {names[1]} share addresses", file=sys.stderr)
            return 2
        for x in a:
            for y in b:
                partition(sup.directory, x, y)
    except PartitionError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    print(f"{names[0]} ({', '.join(map(str, a))}) and {names[1]} ({', '.join(map(str, b))}) "
          "are cut off from each other; `sipcluster lab heal` restores them")
    return 0


def _display(cfg: ClusterConfig) -> list[str]:
    """The names ``lab partition`` takes, as written in the cluster files."""
    names = list(cfg.geo_locations())
    for site_cfg in [cfg, *(c for _, c in _SITES)]:
        desc = site_description(site_cfg, running=set(), cluster_file=Path(site_cfg.file))
        if desc is not None:
            names.append(f"site:{desc['site_name']}")
    return names + [hub.name for hub in cfg.by_kind(AppKind.RTM_SERVER)]


def _parties(cfg: ClusterConfig) -> dict[str, list[ipaddress.IPv4Network]]:
    """What ``lab partition`` can cut apart (lower-case name -> its networks): the
    data centres of site 1 (their /24), every site (``site:NAME``, its /24s) and
    the hub (``RTM1``: its address)."""
    out: dict[str, list[ipaddress.IPv4Network]] = {}
    for geo in cfg.geo_locations():
        out[geo.lower()] = [subnet_of([a.host for a in cfg.applications.values()
                                       if a.geo_location == geo])]
    for site_cfg in [cfg, *(c for _, c in _SITES)]:
        desc = site_description(site_cfg, running=set(), cluster_file=Path(site_cfg.file))
        if desc is not None:
            out[f"site:{desc['site_name']}".lower()] = [
                ipaddress.IPv4Network(s) for s in desc["subnets"]]
    for hub in cfg.by_kind(AppKind.RTM_SERVER):
        out[hub.name.lower()] = [ipaddress.IPv4Network(f"{hub.host}/32")]
    return out


def _status(cfg: ClusterConfig, sup: Supervisor, skipped: list[Application]) -> int:
    if is_partitioned(sup.directory):
        print("partitioned: links between data centres are cut (`sipcluster lab heal`)")
    wan = _wan_description(cfg, sup.directory)
    if wan is not None:
        relay = json.loads(Path(wan["state"]).read_text())
        print(f"emulated WAN {' - '.join(wan['between'].values())}: {wan['delay_ms']:g} ms, "
              f"{wan['loss_percent']:g} % loss (namespace {wan['namespace']}); packets "
              f"delayed {relay.get('delayed', 0)}, dropped {relay.get('dropped', 0)}")
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
