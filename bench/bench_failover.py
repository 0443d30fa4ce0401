"""Failure timings of the lab with the guide's defaults: how long the cluster takes
to notice a failure, and the calls that fail meanwhile.

The shipped cluster file (deploy/etc/cluster.toml: ``oos-check``, ``oos-force``,
``tc-reconnect-timeout`` ... as delivered) moved to 127.0.183.x (DC1) and
127.0.184.x (DC2) (10.183.0.x and 10.184.0.x with WAN emulation), started
with ``sipcluster lab start``. Each run, with a SIPp
call load to the PSTN gateway (9 + digits, ``daemons/lab/scenarios/drill_call.xml``)
around the fault:

1. ``node``: SIGKILL of a sip-server (SIPS_dc1_2) while the load goes through
   SIPProxy_dc1_1; from the kill until that proxy's ``/status/nodes`` shows the
   node out of service (it then sends no new dialog there).
2. ``proxy``: SIGKILL of SIPProxy_dc1_1 (load through SIPProxy_dc1_2); until
   SIPS_dc1_1's ``/status/outbound`` shows that target out of service.
3. ``t-controller``: SIGKILL of TC_dc1_2 while phones registered on its node
   (SIPS_dc1_2) own DNs; until TC_dc2_1's ``/status/dns`` shows every one of those
   DNs out of service.
4. ``data centre``: SIGKILL of both DC1 proxies; a DC1 phone re-resolves the SIP
   Outbound Proxy DN's SRV name through the geo DNS from its own address, takes
   the first target that answers an OPTIONS within 0.5 s and REGISTERs there
   (SIPp), again at once after a failure; until a REGISTER through a DC2 proxy
   has its 200. The call load follows that phone: through SIPProxy_dc1_1 until it
   registered in DC2, then through the DC2 proxy it registered with.

The killed applications are restarted and their peers' view is back in service
before the next fault. Calls failed: SIPp's FailedCall count of the load that ran
from 3 s before the kill until 3 s after the mark.

WAN between the data centres: ``--wan-delay-ms`` / ``--wan-loss`` (40 ms each
way and 1 % by default, 0 for none). The script makes a network namespace of
its own in which the data centres are 10.183.0.x and 10.184.0.x (local on its
``lo``), every packet between them goes through a TUN device and a relay that
holds it for the delay or drops it (``daemons/lab/wan.py``; no ``netem`` needed),
and runs itself again inside it: lab, SIPp and probes alike. Packets within a
data centre are not delayed. Needs root and /dev/net/tun; without them the
script says why and measures without, and its RESULT says "no WAN emulation".

    .venv/bin/python bench/bench_failover.py [--runs 3] [--call-rate 5] \\
        [--wan-delay-ms 40] [--wan-loss 1]

Prints a table (what, median, min-max, calls failed, runs failed) and, last,
one ``RESULT {json}`` line for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_call_load import free_port

from daemons.cluster.config import ClusterConfig, load_cluster
from daemons.lab.supervisor import Supervisor
from daemons.lab.topology import process_specs
from daemons.lab.wan import Wan, WanError, wan_unavailable
from daemons.runtime.dns import SipResolver
from daemons.runtime.logs import configure_logging
from tests.support.sip_probe import answers_options

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
SUBNETS = {"127.0.1.": "127.0.183.", "127.0.2.": "127.0.184."}
DC1, DC2 = "127.0.183.", "127.0.184."
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
CALL_SCENARIO = ROOT / "daemons" / "lab" / "scenarios" / "drill_call.xml"
REGISTER_SCENARIO = ROOT / "tests" / "integration" / "scenarios" / "register.xml"
#: 9 + digits: out through the data centre's trunk to the lab's PSTN gateway
PSTN_NUMBER = "95550100"
#: the account the call load uses, the phone of the data-centre fail-over, the
#: accounts registered on the t-controller's node
CALLER, ROAMER = "1010", "1009"
OWNED = ("1003", "1004", "1005", "1006", "1007", "1008")
CALLER_HOST, PHONE_HOST = DC1 + "201", DC1 + "110"
#: seconds of load before the fault and after the mark
STEADY, AFTER = 3.0, 3.0
#: bound of every wait for a mark or a recovery
WAIT = 90.0
POLL = 0.1
#: how long the phone waits for an SRV target's answer to its OPTIONS before it
#: tries the next one (a phone that waits for its REGISTER transaction's
#: timeout instead, 32 s by RFC 3261 Timer F, takes that much longer)
PROBE_TIMEOUT = 0.5


@dataclass(frozen=True)
class Fault:
    """One measured failure: what it is, what is killed, the proxy the load uses,
    and the cluster file options its timing depends on."""

    key: str
    what: str
    kill: tuple[str, ...]
    load_via: str
    depends_on: str


FAULTS = [
    Fault("node", "proxy stops sending to a killed node (SIPProxy_dc1_1 marks "
          "SIPS_dc1_2 out of service)", ("SIPS_dc1_2",), "SIPProxy_dc1_1",
          "[applications.SIPProxy_*.sipproxy] oos-check, oos-force"),
    Fault("proxy", "node sees its proxy down (SIPS_dc1_1: SIPProxy_dc1_1 "
          "out of service)", ("SIPProxy_dc1_1",), "SIPProxy_dc1_2",
          "[dns.SIPProxy_DN] oos-check, oos-force"),
    Fault("t_controller", "lost t-controller's DNs out of service or taken over "
          "(TC_dc1_2 killed, seen by TC_dc2_1)", ("TC_dc1_2",), "SIPProxy_dc1_1",
          "[dns.SIP_Cluster_DN] tc-reconnect-timeout (addp-timeout, addp-remote-timeout "
          "when the link stays open)"),
    Fault("data_centre", "phone registers in the other data centre (DC1's proxies "
          "killed; SRV re-resolved)", ("SIPProxy_dc1_1", "SIPProxy_dc1_2"),
          "SIPProxy_dc1_1",
          "the phone's registration retry; SRV priorities of the geo DNS (10 own data "
          "centre, 200 others)"),
]


# --------------------------------------------------------------------------- WAN

#: the namespace's name while this script runs inside it (set for the re-run)
WAN_NAMESPACE_ENV = "SIPCLUSTER_WAN_NAMESPACE"
#: the relay's state file (settings and counters), for the re-run to report
WAN_STATE_ENV = "SIPCLUSTER_WAN_STATE"
#: the data centres inside the namespace: local /24s on its lo, outside 127/8
WAN_SUBNETS = ("10.183.0.", "10.184.0.")


def use_subnets(dc1: str, dc2: str) -> None:
    """Where the two data centres live (the cluster file is moved there)."""
    global DC1, DC2, SUBNETS, CALLER_HOST, PHONE_HOST
    DC1, DC2 = dc1, dc2
    SUBNETS = {"127.0.1.": dc1, "127.0.2.": dc2}
    CALLER_HOST, PHONE_HOST = DC1 + "201", DC1 + "110"


def run_in_wan(args: argparse.Namespace) -> int | str:
    """Make the WAN namespace, run this script again inside it (its exit code),
    remove it; why not when it cannot be made."""
    namespace = f"sipcluster-wan-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="bench-failover-wan-") as tmp:
        state = Path(tmp) / "wan.json"
        wan = Wan(namespace, WAN_SUBNETS[0] + "0/24", WAN_SUBNETS[1] + "0/24",
                  args.wan_delay_ms, args.wan_loss, state)
        try:
            wan.create(Path(tmp) / "wan.log")
        except WanError as exc:
            return str(exc)
        try:
            env = {**os.environ, WAN_NAMESPACE_ENV: namespace, WAN_STATE_ENV: str(state)}
            script = str(Path(__file__).resolve())
            return subprocess.run([*wan.exec_prefix(), sys.executable, script, *sys.argv[1:]],
                                  env=env, cwd=ROOT).returncode
        finally:
            wan.delete()


# --------------------------------------------------------------------------- lab


def get_json(host: str, port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as answer:
        return json.loads(answer.read())


@dataclass
class Lab:
    """The running lab: its supervisor, cluster file and lab.json."""

    directory: Path
    cfg: ClusterConfig
    sup: Supervisor
    desc: dict[str, Any]

    @classmethod
    def open(cls, directory: Path) -> Lab:
        config = directory / "cluster.toml"
        cfg = load_cluster(config)
        specs, _ = process_specs(cfg, config)
        desc = json.loads((directory / "lab.json").read_text())
        return cls(directory, cfg, Supervisor(directory, {s.name: s for s in specs}), desc)

    def address(self, name: str, port: str = "sip-port") -> tuple[str, int]:
        app = self.cfg.applications[name]
        number = app.port(port)
        assert number is not None, f"{name} has no {port}"
        return app.host, number

    def page(self, name: str, path: str) -> Any:
        """An application's status page; None when it does not answer."""
        try:
            return get_json(*self.address(name, "http-port"), path)
        except (OSError, ValueError):
            return None

    def password(self, dn: str) -> str:
        return str(self.cfg.dns[dn].password)

    @property
    def dns_server(self) -> tuple[str, int]:
        return self.desc["dns"]["host"], int(self.desc["dns"]["port"])

    @property
    def srv_fqdn(self) -> str:
        return str(self.desc["srv_fqdn"])

    @property
    def domain(self) -> str:
        return str(self.desc["domain"])


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> float | None:
    """Seconds until ``check()`` holds (polled every 0.1 s), None past ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(POLL)
    return None


# --------------------------------------------------------------------------- marks


def node_state(lab: Lab, proxy: str, node: str) -> str | None:
    page = lab.page(proxy, "/status/nodes")
    entry = (page or {}).get("nodes", {}).get(node)
    return entry.get("state") if entry else None


def outbound_state(lab: Lab, node: str, proxy: str) -> str | None:
    host, port = lab.address(proxy)
    page = lab.page(node, "/status/outbound")
    for target in ((page or {}).get("proxies") or {}).get("targets", []):
        if str(target.get("target", "")).endswith(f"{host}:{port}"):
            return str(target.get("state"))
    return None


def dn_states(lab: Lab, tc: str) -> dict[str, dict[str, Any]]:
    page = lab.page(tc, "/status/dns")
    return dict((page or {}).get("dns") or {})


# --------------------------------------------------------------------------- SIP


def srv_targets(lab: Lab, address: str) -> list[tuple[str, int]]:
    """The SIP Outbound Proxy DN's SRV targets in RFC 3263 order, as a phone at
    ``address`` gets them from the geo DNS."""
    async def run() -> list[tuple[str, int]]:
        resolver = SipResolver([lab.dns_server], source=address, timeout=1.0)
        targets = await resolver.resolve(lab.srv_fqdn, transport="udp")
        return [(t.host_ip, t.port) for t in targets]
    return asyncio.run(run())


def register(sipp: str, lab: Lab, workdir: Path, dn: str, address: str, port: int,
             target: tuple[str, int], timeout: float = 8.0) -> bool:
    """One REGISTER of ``dn`` (digest) from ``address``:``port`` through ``target``;
    True on its 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sipp, f"{target[0]}:{target[1]}", "-sf", str(REGISTER_SCENARIO), "-i", address,
         "-p", str(port), "-s", dn, "-au", dn, "-ap", lab.password(dn),
         "-set", "domain", lab.domain, "-set", "expires", "600", "-m", "1", "-nostdin",
         "-recv_timeout", str(int(timeout * 1000)), "-timeout", f"{timeout + 2:g}s",
         "-timeout_error", "-trace_err", "-error_file", str(workdir / "errors.log")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TERM": "dumb"}, timeout=timeout + 20)
    return done.returncode == 0


@dataclass
class CallLoad:
    """SIPp calling the PSTN gateway at a steady rate through one proxy."""

    proc: subprocess.Popen[bytes]
    workdir: Path

    @classmethod
    def start(cls, sipp: str, lab: Lab, workdir: Path, via: tuple[str, int],
              rate: float) -> CallLoad:
        workdir.mkdir(parents=True, exist_ok=True)
        host, port = via
        cmd = [sipp, f"{host}:{port}", "-sf", str(CALL_SCENARIO), "-i", CALLER_HOST,
               "-p", str(free_port(CALLER_HOST)), "-s", PSTN_NUMBER, "-au", CALLER,
               "-ap", lab.password(CALLER), "-set", "caller", CALLER,
               "-set", "domain", lab.domain, "-d", "1000", "-r", f"{rate:g}", "-l", "200",
               "-m", str(int(rate * 600)), "-recv_timeout", "5000",
               "-trace_stat", "-stf", str(workdir / "stat.csv"), "-fd", "1",
               "-trace_err", "-error_file", str(workdir / "errors.log"), "-nostdin"]
        out = (workdir / "stdout.txt").open("wb")
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TERM": "dumb"})
        out.close()
        return cls(proc, workdir)

    def stop(self) -> tuple[int, int]:
        """Stop placing calls, let those up end (SIGUSR1: SIPp's soft exit); the
        calls that succeeded and failed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        ok = failed = 0
        stat = self.workdir / "stat.csv"
        if stat.exists():
            with stat.open() as f:
                for row in csv.DictReader(f, delimiter=";"):
                    try:
                        ok = max(ok, int(row.get("SuccessfulCall(C)") or 0))
                        failed = max(failed, int(row.get("FailedCall(C)") or 0))
                    except ValueError:
                        continue
        return ok, failed


# --------------------------------------------------------------------------- runs


@dataclass
class Sample:
    seconds: float | None
    calls_ok: int = 0
    calls_failed: int = 0
    note: str = ""


@dataclass
class Bench:
    lab: Lab
    sipp: str
    work: Path
    rate: float
    log: Callable[[str], None] = print
    owned: list[str] = field(default_factory=list)
    phone_port: int = 0

    def restart(self, names: tuple[str, ...]) -> None:
        for name in names:
            if not self.lab.sup.alive(name):
                self.lab.sup.start(name)
        late = self.lab.sup.wait_healthy(list(names), timeout=WAIT)
        if late:
            raise RuntimeError(f"not healthy after restart: {', '.join(late)}")

    def all_up(self) -> None:
        """Every application of the lab running and healthy."""
        dead = tuple(n for n in self.lab.sup.specs if not self.lab.sup.alive(n))
        if dead:
            self.restart(dead)

    # -- before each fault: the view that the fault must change is "in service"
    def prepare(self, fault: Fault, index: int) -> str | None:
        lab = self.lab
        if fault.key == "node":
            ok = wait_until(lambda: node_state(lab, "SIPProxy_dc1_1", "SIPS_dc1_2")
                            == "in-service")
        elif fault.key == "proxy":
            ok = wait_until(lambda: outbound_state(lab, "SIPS_dc1_1", "SIPProxy_dc1_1")
                            == "in-service")
        elif fault.key == "t_controller":
            return self.prepare_owned(index)
        else:
            ok = wait_until(lambda: all(outbound_state(lab, "SIPS_dc1_1", p) == "in-service"
                                        for p in ("SIPProxy_dc1_1", "SIPProxy_dc1_2")))
            first = srv_targets(lab, PHONE_HOST)[0]
            if not first[0].startswith(DC1):
                return f"the geo DNS gives a DC1 phone {first} first"
            self.phone_port = self.phone_port or free_port(PHONE_HOST)
            if not register(self.sipp, lab, self.work / f"phone-{index}-before", ROAMER,
                            PHONE_HOST, self.phone_port, first):
                return f"phone {ROAMER} did not register through {first}"
        return None if ok is not None else "not back in service before the fault"

    def prepare_owned(self, index: int) -> str | None:
        """Phones registered on SIPS_dc1_2 (the node beside TC_dc1_2), their DNs in
        service in TC_dc2_1's view."""
        lab = self.lab

        def owned() -> list[str]:
            return [dn for dn, s in dn_states(lab, "TC_dc2_1").items()
                    if s.get("owner") == "SIPS_dc1_2" and s.get("dn-state") == "in-service"]

        if wait_until(lambda: bool(owned()), timeout=15) is None:
            via = lab.address("SIPProxy_dc1_1")
            for dn in OWNED:  # REGISTERs go to the nodes by Call-ID hash
                register(self.sipp, lab, self.work / f"owned-{index}-{dn}", dn, PHONE_HOST,
                         free_port(PHONE_HOST), via)
            if wait_until(lambda: bool(owned()), timeout=15) is None:
                states = dn_states(lab, "TC_dc2_1")
                return "no DN owned by SIPS_dc1_2 in TC_dc2_1's view (" + ", ".join(
                    f"{dn} {states.get(dn, {}).get('dn-state')} owner "
                    f"{states.get(dn, {}).get('owner')}" for dn in OWNED) + ")"
        self.owned = owned()
        return None

    # -- the mark: the view changed
    def marked(self, fault: Fault) -> Callable[[], bool]:
        lab = self.lab
        if fault.key == "node":
            return lambda: node_state(lab, "SIPProxy_dc1_1", "SIPS_dc1_2") not in (
                "in-service", None)
        if fault.key == "proxy":
            return lambda: outbound_state(lab, "SIPS_dc1_1", "SIPProxy_dc1_1") not in (
                "in-service", None)
        if fault.key == "t_controller":
            def all_out() -> bool:
                # out of service, or in service on a node that took the DN over
                # (the phone's binding is replicated to the other node)
                states = dn_states(lab, "TC_dc2_1")
                return bool(states) and all(
                    states.get(dn, {}).get("dn-state") == "out-of-service"
                    or states.get(dn, {}).get("owner") not in ("SIPS_dc1_2", None)
                    for dn in self.owned)
            return all_out
        raise KeyError(fault.key)

    def taken_over(self) -> str:
        """How the lost t-controller's DNs ended: out of service, or owned by the
        other node of the data centre."""
        states = dn_states(self.lab, "TC_dc2_1")
        out = [dn for dn in self.owned if states.get(dn, {}).get("dn-state") == "out-of-service"]
        moved = sorted({str(states.get(dn, {}).get("owner")) for dn in self.owned
                        if dn not in out})
        return f"{len(out)} of {len(self.owned)} DNs out of service" + (
            f", the others taken over by {', '.join(moved)}" if moved else "")

    def view(self, fault: Fault) -> str:
        """What the watched status page shows when the mark did not come."""
        lab = self.lab
        if fault.key == "t_controller":
            states = dn_states(lab, "TC_dc2_1")
            return "TC_dc2_1 shows " + ", ".join(
                f"{dn} {states.get(dn, {}).get('dn-state')} owner "
                f"{states.get(dn, {}).get('owner')}" for dn in self.owned)
        if fault.key == "node":
            return f"SIPS_dc1_2 {node_state(lab, 'SIPProxy_dc1_1', 'SIPS_dc1_2')}"
        return f"SIPProxy_dc1_1 {outbound_state(lab, 'SIPS_dc1_1', 'SIPProxy_dc1_1')}"

    def fail_over(self, index: int) -> tuple[float | None, str, tuple[str, int] | None]:
        """The phone's loop after the kill: resolve, probe, REGISTER, at once again
        after a failure; seconds until a REGISTER through DC2 had its 200, and the
        proxy it registered through."""
        start = time.monotonic()
        attempts = failures = 0
        while time.monotonic() - start < WAIT:
            attempts += 1
            try:
                targets = srv_targets(self.lab, PHONE_HOST)
            except OSError:
                targets = []
            target = next((t for t in targets
                           if answers_options(PHONE_HOST, t, PROBE_TIMEOUT)), None)
            if target is not None and register(
                    self.sipp, self.lab, self.work / f"phone-{index}-{attempts}", ROAMER,
                    PHONE_HOST, self.phone_port, target):
                seconds = time.monotonic() - start
                where = "DC2" if target[0].startswith(DC2) else "DC1"
                note = f"{attempts} attempt(s), {failures} failed; registered in {where} " \
                       f"through {target[0]}:{target[1]}"
                return (seconds if where == "DC2" else None), note, target
            failures += 1
        return None, f"{attempts} attempts, none registered", None

    def measure(self, fault: Fault, index: int) -> Sample:
        self.all_up()
        problem = self.prepare(fault, index)
        if problem:
            return Sample(None, note=f"not measured: {problem}")
        load = CallLoad.start(self.sipp, self.lab, self.work / f"load-{index}-{fault.key}",
                              self.lab.address(fault.load_via), self.rate)
        after: CallLoad | None = None
        note = ""
        ok = failed = 0
        try:
            time.sleep(STEADY)
            for name in fault.kill:
                self.lab.sup.kill(name)
            if fault.key == "data_centre":
                # the phone's calls follow it: through DC1 until it registered in
                # DC2, then through the DC2 proxy it registered with
                seconds, note, target = self.fail_over(index)
                if target is not None:
                    ok, failed = load.stop()
                    after = CallLoad.start(self.sipp, self.lab,
                                           self.work / f"load-{index}-{fault.key}-after",
                                           target, self.rate)
            else:
                seconds = wait_until(self.marked(fault))
                if seconds is None:
                    note = f"no mark within {WAIT:g} s; {self.view(fault)}"
                elif fault.key == "t_controller":
                    note = self.taken_over()
            time.sleep(AFTER)
        finally:
            for running in (load, after):
                if running is not None and running.proc.returncode is None:
                    more_ok, more_failed = running.stop()
                    ok, failed = ok + more_ok, failed + more_failed
        self.restart(fault.kill)
        if seconds is None and not note:
            note = f"no mark within {WAIT:g} s"
        return Sample(None if seconds is None else round(seconds, 2), ok, failed, note)


# --------------------------------------------------------------------------- report


def summary(fault: Fault, samples: list[Sample]) -> dict[str, Any]:
    times = [s.seconds for s in samples if s.seconds is not None]
    return {
        "what": fault.what,
        "median_s": round(statistics.median(times), 2) if times else None,
        "min_s": min(times) if times else None,
        "max_s": max(times) if times else None,
        "samples_s": [s.seconds for s in samples],
        "calls_failed": sum(s.calls_failed for s in samples),
        "calls": sum(s.calls_ok + s.calls_failed for s in samples),
        "calls_failed_per_run": [s.calls_failed for s in samples],
        "runs_failed": sum(1 for s in samples if s.seconds is None),
        "notes": [s.note for s in samples if s.note],
        "depends_on": fault.depends_on,
    }


def table(results: dict[str, dict[str, Any]], wan: str) -> str:
    lines = [f"WAN between the data centres: {wan}", "",
             "| what | median | min-max | calls failed | runs failed |",
             "|---|---|---|---|---|"]
    for r in results.values():
        median = f"{r['median_s']:.2f} s" if r["median_s"] is not None else "n/a"
        span = (f"{r['min_s']:.2f}-{r['max_s']:.2f} s" if r["min_s"] is not None else "n/a")
        failed = f"{r['calls_failed']} of {r['calls']} " \
                 f"({', '.join(map(str, r['calls_failed_per_run']))})"
        lines.append(f"| {r['what']} | {median} | {span} | {failed} | {r['runs_failed']} |")
    lines.append("")
    for r in results.values():
        bound = f" (worst case by these: {r['bound_s']:g} s)" if r.get("bound_s") else ""
        lines.append(f"- {r['what']}: depends on {r['depends_on']}{bound}")
        lines += [f"    - {n}" for n in r["notes"]]
    return "\n".join(lines)


def configured_options(cfg: ClusterConfig) -> dict[str, Any]:
    """The option values the timings depend on, as the cluster file gives them."""
    proxy = cfg.applications["SIPProxy_dc1_1"].options
    outbound = cfg.outbound_proxy
    return {
        "proxy_oos_check": proxy.get("oos-check"), "proxy_oos_force": proxy.get("oos-force"),
        "node_oos_check": outbound.oos_check if outbound else None,
        "node_oos_force": outbound.oos_force if outbound else None,
        "tc_reconnect_timeout": cfg.nodes.tc_reconnect_timeout,
        "addp_timeout": cfg.nodes.addp_timeout,
        "addp_remote_timeout": cfg.nodes.addp_remote_timeout,
    }


def worst_cases(o: dict[str, Any]) -> dict[str, float | None]:
    """The longest each timing may take by the options: a check just missed, then
    no answer for the force time (oos-check + oos-force); a lost t-controller link
    seen through ADDP (a link that stays open but is silent) and then
    tc-reconnect-timeout. The phone's fail-over has no configured bound."""
    def total(*keys: str) -> float | None:
        values = [o.get(k) for k in keys]
        ok = all(isinstance(v, int | float) for v in values)
        return float(sum(values)) if ok else None  # type: ignore[arg-type]
    return {"node": total("proxy_oos_check", "proxy_oos_force"),
            "proxy": total("node_oos_check", "node_oos_force"),
            "t_controller": total("tc_reconnect_timeout", "addp_timeout",
                                  "addp_remote_timeout"),
            "data_centre": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--call-rate", type=float, default=5.0,
                        help="calls/s of the SIPp load around each fault")
    parser.add_argument("--wan-delay-ms", type=float, default=40.0,
                        help="delay between the data centres, each way (0: none)")
    parser.add_argument("--wan-loss", type=float, default=1.0,
                        help="packet loss between the data centres, percent")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR and keep it (the lab's logs, SIPp's files)")
    args = parser.parse_args()
    configure_logging("warning")
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (apt-get install sip-tester)")
        print("RESULT " + json.dumps({"error": "no sipp"}))
        return 2
    wanted = f"{args.wan_delay_ms:g} ms each way, {args.wan_loss:g} % loss"
    wan_info: dict[str, Any] = {"emulated": False}
    inside = os.environ.get(WAN_NAMESPACE_ENV)
    if inside:
        use_subnets(*WAN_SUBNETS)
        wan_info = {"emulated": True, "delay_ms": args.wan_delay_ms,
                    "loss_percent": args.wan_loss, "namespace": inside,
                    "method": "TUN relay in a network namespace (daemons/lab/wan.py)"}
        wan_text = f"{wanted} (TUN relay, namespace {inside}; DC1 {DC1}x, DC2 {DC2}x)"
    elif args.wan_delay_ms > 0 or args.wan_loss > 0:
        why = wan_unavailable()
        if why is None:
            done = run_in_wan(args)
            if isinstance(done, int):
                return done
            why = done
        wan_info = {"emulated": False, "wanted": wanted, "why": why}
        wan_text = f"no WAN emulation ({wanted} unavailable: {why})"
        print(f"WAN emulation unavailable, figures measured without it: {why}\n")
    else:
        wan_text = "no WAN emulation (--wan-delay-ms 0 --wan-loss 0)"
        wan_info["why"] = "not asked for"
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = run(args.keep.resolve(), sipp, args.runs, args.call_rate)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
            results = run(Path(tmp), sipp, args.runs, args.call_rate)
    if inside:
        with contextlib.suppress(OSError, ValueError):
            relay = json.loads(Path(os.environ[WAN_STATE_ENV]).read_text())
            wan_info["relay"] = {k: relay.get(k) for k in ("delayed", "dropped",
                                                            "write_errors")}
            wan_text += (f"; the relay delayed {relay.get('delayed')} packets, dropped "
                         f"{relay.get('dropped')}")
    if "error" in results:
        print("RESULT " + json.dumps({**results, "wan": wan_info}))
        return 1
    faults = results["faults"]
    print(f"## failure timings: median of {args.runs} run(s), {args.call_rate:g} calls/s "
          "around each fault\n")
    print(table(faults, wan_text))
    out = {"runs": args.runs, "call_rate": args.call_rate, "wan": wan_info,
           "wan_emulation": "TUN relay" if wan_info["emulated"] else "no WAN emulation",
           "options": results["options"], "faults": faults}
    print("RESULT " + json.dumps(out))
    return 0 if all(f["runs_failed"] == 0 for f in faults.values()) else 1


def run(work: Path, sipp: str, runs: int, rate: float) -> dict[str, Any]:
    """Start the lab in ``work``, measure every fault ``runs`` times, stop the lab."""
    text = CLUSTER.read_text()
    for old, new in SUBNETS.items():
        text = text.replace(old, new)
    config = work / "cluster.toml"
    config.write_text(text)
    directory = work / "lab"
    started = subprocess.run([*SIPCLUSTER, "lab", "start", "--dir", str(directory), "--config",
                              str(config), "--timeout", "120"], cwd=ROOT,
                             capture_output=True, text=True)
    if started.returncode != 0:
        print(started.stdout + started.stderr)
        return {"error": "lab did not start"}
    try:
        lab = Lab.open(directory)
        bench = Bench(lab, sipp, work / "sip", rate)
        samples: dict[str, list[Sample]] = {f.key: [] for f in FAULTS}
        for i in range(runs):
            for fault in FAULTS:
                sample = bench.measure(fault, i)
                samples[fault.key].append(sample)
                print(f"run {i + 1} {fault.key}: "
                      + (f"{sample.seconds:.2f} s" if sample.seconds is not None else "no mark")
                      + f", calls {sample.calls_ok} ok {sample.calls_failed} failed"
                      + (f" ({sample.note})" if sample.note else ""), flush=True)
        options = configured_options(lab.cfg)
        faults = {f.key: summary(f, samples[f.key]) for f in FAULTS}
        for key, bound in worst_cases(options).items():
            faults[key]["bound_s"] = bound
        return {"options": options, "faults": faults}
    finally:
        subprocess.run([*SIPCLUSTER, "lab", "stop", "--dir", str(directory)], cwd=ROOT,
                       capture_output=True, text=True)


if __name__ == "__main__":
    sys.exit(main())
