"""``sipcluster lab drill``: faults under load on a running lab.

SIPp registers every lab account through a proxy of each data centre and
calls the PSTN gateways (``9`` + digits, answered by the lab's SIPp UAS)
at a steady rate, while a schedule kills and restarts a proxy, a cluster
node and a t-controller and cuts the data centres apart (nftables, root),
then heals. When the load stops the drill reports:

* failed calls per fault window (SIPp's per-second statistics, placed in
  the window of the fault that was in force);
* lost bindings: an account SIPp registered (a 200) whose binding is
  missing from a running proxy (every proxy knows every binding);
* stale bindings: a binding a running proxy holds for one of the drill's
  accounts that is not what the phone registered last: a contact the phone
  never registered, or an expiry older than the last 200 granted (the
  proxy kept an earlier REGISTER's binding: a refresh did not reach it);
* calls left up on the nodes once the load ended;
* memory growth of each daemon that was not restarted, per hour.

Lost or stale bindings or calls left up make the exit status 1: nothing the cluster
accepted may be lost. ``make test`` runs a short drill on a lab of its own;
``bench/`` a long one.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemons.cluster.config import AppKind, ClusterConfig, load_cluster
from daemons.lab.partition import PartitionError, heal, partition, subnet_of
from daemons.lab.supervisor import Supervisor
from daemons.lab.topology import process_specs

__all__ = ["DrillReport", "Fault", "default_schedule", "run_drill"]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
#: the number the calls dial: 9 + digits, out through the data centre's trunk
PSTN_NUMBER = "95550100"
#: accounts that register per data centre (one SIPp each)
REGISTER_PHONES = 3


@dataclass(frozen=True)
class Fault:
    """At ``at`` seconds into the load: ``kill`` / ``restart`` an application,
    ``partition`` two geo-locations (``target`` = "dc1 dc2") or ``heal``."""

    at: float
    action: str
    target: str = ""

    def label(self) -> str:
        return f"{self.action} {self.target}".strip()


@dataclass
class DrillReport:
    duration: float
    faults: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    registered: dict[str, int] = field(default_factory=dict)
    lost_bindings: list[str] = field(default_factory=list)
    stale_bindings: list[str] = field(default_factory=list)
    calls_left_up: dict[str, int] = field(default_factory=dict)
    memory_mb_per_hour: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # a drill whose phones never registered proved nothing
        return (bool(self.registered) and not self.lost_bindings and not self.stale_bindings
                and not any(self.calls_left_up.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "duration": self.duration, "faults": self.faults,
                "calls": self.calls, "registered": self.registered,
                "lost_bindings": self.lost_bindings,
                "stale_bindings": self.stale_bindings, "calls_left_up": self.calls_left_up,
                "memory_mb_per_hour": self.memory_mb_per_hour, "notes": self.notes}

    def text(self) -> str:
        lines = [f"drill of {self.duration:.0f} s: "
                 + ("nothing lost" if self.ok else "LOST STATE")]
        lines.append("  window                       calls ok  failed")
        for window, c in self.calls.items():
            lines.append(f"  {window:<28} {c['ok']:>8} {c['failed']:>7}")
        lines.append("  REGISTER 200s per account: " + ", ".join(
            f"{dn} {n}" for dn, n in sorted(self.registered.items())))
        if not self.registered:
            lines.append("  no REGISTER succeeded: the load did not run (see the SIPp logs)")
        lines.append(f"  lost bindings: {len(self.lost_bindings)} "
                     + (", ".join(self.lost_bindings[:10]) if self.lost_bindings else ""))
        lines.append(f"  stale bindings: {len(self.stale_bindings)} "
                     + (", ".join(self.stale_bindings[:10]) if self.stale_bindings else ""))
        lines.append(f"  calls left up: {sum(self.calls_left_up.values())} "
                     + json.dumps(self.calls_left_up))
        grow = ", ".join(f"{n} {v:+.1f}" for n, v in sorted(self.memory_mb_per_hour.items()))
        lines.append(f"  memory growth (MB/h): {grow}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def default_schedule(cfg: ClusterConfig, duration: float) -> list[Fault]:
    """A proxy, a node and a t-controller killed and restarted, then a partition,
    at fixed fractions of ``duration``."""
    geos = cfg.geo_locations()
    first = geos[0]
    proxies = [a.name for a in cfg.by_kind(AppKind.SIP_PROXY, first)]
    nodes = [a.name for a in cfg.by_kind(AppKind.SIP_SERVER, first)]
    tcs = [a.name for a in cfg.by_kind(AppKind.T_CONTROLLER)]
    plan: list[Fault] = []
    if proxies:
        plan += [Fault(0.10 * duration, "kill", proxies[0]),
                 Fault(0.22 * duration, "restart", proxies[0])]
    if len(nodes) > 1:
        plan += [Fault(0.30 * duration, "kill", nodes[-1]),
                 Fault(0.42 * duration, "restart", nodes[-1])]
    if tcs:
        plan += [Fault(0.48 * duration, "kill", tcs[-1]),
                 Fault(0.56 * duration, "restart", tcs[-1])]
    if len(geos) > 1:
        plan += [Fault(0.62 * duration, "partition", f"{geos[0]} {geos[1]}"),
                 Fault(0.76 * duration, "heal")]
    return plan


def _get_json(host: str, port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class _Load:
    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    address: str
    port: int


def _sipp(sipp: str, workdir: Path, name: str, scenario: str, target: tuple[str, int],
          address: str, port: int, args: list[str]) -> _Load:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sipp, f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / scenario),
           "-i", address, "-p", str(port),
           "-trace_stat", "-stf", str(workdir / "stat.csv"), "-fd", "1",
           "-trace_logs", "-log_file", str(workdir / "log.txt"),
           "-trace_err", "-error_file", str(workdir / "errors.log"),
           "-nostdin", "-timeout_error", *args]
    out = (workdir / "stdout.txt").open("wb")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return _Load(name, proc, workdir, address, port)


def _per_second(stat: Path, column: str) -> list[tuple[float, int]]:
    """(epoch seconds, value of a periodic column) for each row of SIPp's statistics."""
    if not stat.exists():
        return []
    rows = []
    with stat.open() as f:
        for row in csv.DictReader(f, delimiter=";"):
            stamp = row.get("CurrentTime", "").split("\t")
            try:
                rows.append((float(stamp[-1]), int(row.get(column, "0") or 0)))
            except (ValueError, IndexError):
                continue
    return rows


def _window(at: float, start: float, faults: list[Fault]) -> str:
    """The fault in force at epoch ``at`` (its label), else "steady"."""
    offset = at - start
    current = "steady"
    for fault in faults:
        if fault.at <= offset:
            current = "steady" if fault.action in ("restart", "heal") else fault.label()
    return current


@dataclass(frozen=True)
class Registered:
    """An account's last REGISTER 200 as the phone saw it."""

    contact: str
    at: float  # epoch seconds
    granted: int  # the expires its Contact granted; 0 when it named none


#: how far a proxy's expiry may fall short of the phone's last 200 + granted (the
#: proxy's own receive time, the relay to the phone, whole seconds in the dump)
EXPIRY_SLACK = 3.0


def expired(reg: Registered, now: float) -> bool:
    """The phone's last registration has run out (or is about to) by ``now``: its
    binding is rightly gone from the proxies."""
    return bool(reg.granted) and reg.at + reg.granted <= now + EXPIRY_SLACK


def compare_bindings(registered: dict[str, Registered], bindings: list[dict[str, Any]],
                     now: float) -> tuple[list[str], list[str]]:
    """``(lost, stale)`` for one proxy's binding dump (``/status/registrations``):
    lost, an account whose registered contact the proxy does not hold; stale, a
    binding of one of these accounts with another contact, or whose expiry is
    earlier than the last 200 gave (``DN contact``, with the seconds short). An
    account whose last registration has expired is not expected."""
    lost: list[str] = []
    stale: list[str] = []
    held: dict[str, list[dict[str, Any]]] = {}
    for b in bindings:
        dn = str(b.get("aor", "")).removeprefix("sip:").split("@")[0]
        if dn in registered:
            held.setdefault(dn, []).append(b)
    for dn, reg in sorted(registered.items()):
        mine = held.get(dn, [])
        found = [b for b in mine if str(b.get("contact", "")).startswith(reg.contact)]
        if not found and not expired(reg, now):
            lost.append(dn)
        for b in mine:
            if b not in found:
                stale.append(f"{dn} {b.get('contact')} (not registered by the phone)")
        if reg.granted:
            for b in found:
                short = reg.at + reg.granted - (now + int(b.get("expires", 0)))
                if short > EXPIRY_SLACK:
                    stale.append(f"{dn} {reg.contact} (expires {short:.0f} s early)")
    return lost, stale


def _registrations(loads: list[_Load], report: DrillReport) -> dict[str, Registered]:
    """Each account's last 200 from the REGISTER loads' logs (``registered DN
    SECONDS MICROSECONDS GRANTED``); counts the 200s in ``report.registered``."""
    last: dict[str, Registered] = {}
    for load in loads:
        if not load.name.startswith("register"):
            continue
        logfile = load.workdir / "log.txt"
        if not logfile.exists():
            continue
        contact_of = f"sip:{{}}@{load.address}:{load.port}"
        for line in logfile.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) < 2 or words[0] != "registered":
                continue
            dn = words[1]
            report.registered[dn] = report.registered.get(dn, 0) + 1
            try:  # SIPp prints its numeric variables as %f
                at = float(words[2]) + float(words[3]) / 1e6
                granted = int(float(words[4])) if len(words) > 4 else 0
            except (IndexError, ValueError):
                at, granted = 0.0, 0
            if dn not in last or at >= last[dn].at:
                last[dn] = Registered(contact_of.format(dn), at, granted)
    return last


def run_drill(directory: Path, *, duration: float = 120.0, register_rate: float = 10.0,
              call_rate: float = 4.0, talk_ms: int = 1000,
              schedule: list[Fault] | None = None, settle: float = 10.0,
              log: Any = print) -> DrillReport:
    """Run load and faults against the lab in ``directory``; the report."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("the drill needs SIPp (Debian package sip-tester)")
    config_path = directory / "cluster.toml"
    desc = json.loads((directory / "lab.json").read_text())
    cfg = load_cluster(config_path)
    specs, _ = process_specs(cfg, config_path)
    sup = Supervisor(directory, {s.name: s for s in specs})
    faults = sorted(schedule if schedule is not None else default_schedule(cfg, duration),
                    key=lambda f: f.at)
    report = DrillReport(duration=duration)
    work = directory / "drill"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    domain = desc["domain"]
    centres = desc["data_centres"]
    accounts = [(a["dn"], a["password"]) for a in desc["accounts"] if a.get("password")]
    loads: list[_Load] = []
    pids_before = {n: p for n, p in sup.read_pids().items() if sup.alive(n)}
    rss_before = {n: _rss_mb(p) for n, p in pids_before.items()}
    # one SIPp per account (SIPp takes one digest identity per process): the first
    # accounts register, REGISTER_PHONES per data centre; the next one per data
    # centre calls the PSTN gateway
    per_dc = REGISTER_PHONES
    for i, (geo, centre) in enumerate(sorted(centres.items())):
        proxy = centre["proxies"][0]
        prefix = proxy["host"].rsplit(".", 1)[0]
        target = (proxy["host"], proxy["sip_port"])
        mine = accounts[i * (per_dc + 1):(i + 1) * (per_dc + 1)]
        for j, (dn, password) in enumerate(mine[:per_dc]):
            rate = register_rate / len(centres) / per_dc
            loads.append(_sipp(sipp, work / f"register-{geo}-{dn}", f"register-{geo}-{dn}",
                               "drill_register.xml", target, f"{prefix}.201",
                               15060 + 10 * i + j,
                               ["-s", dn, "-au", dn, "-ap", password, "-set", "domain", domain,
                                "-r", f"{rate:g}", "-m", str(max(1, int(rate * duration))),
                                "-l", "20"]))
        if centre.get("pstn_gateways") and len(mine) > per_dc:
            dn, password = mine[per_dc]
            rate = call_rate / len(centres)
            loads.append(_sipp(sipp, work / f"calls-{geo}", f"calls-{geo}", "drill_call.xml",
                               target, f"{prefix}.202", 15160 + i,
                               ["-s", PSTN_NUMBER, "-au", dn, "-ap", password,
                                "-set", "caller", dn, "-set", "domain", domain,
                                "-d", str(talk_ms), "-r", f"{rate:g}",
                                "-m", str(max(1, int(rate * duration))), "-l", "200"]))
    try:
        start = time.time()
        restarted: set[str] = set()
        log(f"drill: load started ({register_rate:g} REGISTER/s, {call_rate:g} calls/s, "
            f"{duration:.0f} s), {len(faults)} faults scheduled")
        lag = 0.0  # a restart waits for health: later faults keep their spacing
        for fault in faults:
            wait = start + fault.at + lag - time.time()
            if wait > 0:
                time.sleep(wait)
            else:
                lag -= wait
            entry = {"at": round(time.time() - start, 1), "fault": fault.label(), "result": "done"}
            try:
                if fault.action == "kill":
                    sup.kill(fault.target)
                    restarted.add(fault.target)
                elif fault.action == "restart":
                    sup.start(fault.target)
                    unhealthy = sup.wait_healthy([fault.target], timeout=30)
                    if unhealthy:
                        entry["result"] = "not healthy in 30 s"
                elif fault.action == "partition":
                    a, b = fault.target.split()
                    nets = [subnet_of([x.host for x in cfg.applications.values()
                                       if x.geo_location == g]) for g in (a, b)]
                    partition(directory, nets[0], nets[1])
                elif fault.action == "heal":
                    heal(directory)
            except (PartitionError, OSError, RuntimeError, KeyError) as exc:
                entry["result"] = f"skipped: {exc}"
                report.notes.append(f"{fault.label()} skipped: {exc}")
            report.faults.append(entry)
            log(f"drill: t={entry['at']:.0f}s {fault.label()}: {entry['result']}")
        for load in loads:
            try:
                load.proc.wait(timeout=max(5.0, start + duration + 60 - time.time()))
            except subprocess.TimeoutExpired:
                load.proc.kill()
                load.proc.wait()
                report.notes.append(f"{load.name}: SIPp did not finish; killed")
    finally:
        for load in loads:  # an interrupted drill leaves no load behind
            if load.proc.poll() is None:
                load.proc.kill()
                load.proc.wait()
    try:
        heal(directory)
    except PartitionError:
        pass
    time.sleep(settle)  # BYEs, replication after the heal
    # calls per fault window
    windows: dict[str, dict[str, int]] = {}
    for load in loads:
        if not load.name.startswith("calls"):
            continue
        stat = load.workdir / "stat.csv"
        for column, key in (("SuccessfulCall(P)", "ok"), ("FailedCall(P)", "failed")):
            for at, value in _per_second(stat, column):
                w = windows.setdefault(_window(at, start, faults), {"ok": 0, "failed": 0})
                w[key] += value
    report.calls = windows
    # bindings: every account SIPp registered is bound on every running proxy, as
    # its last 200 left it
    registered = _registrations(loads, report)
    gone = sorted(dn for dn, reg in registered.items() if expired(reg, time.time()))
    if gone:
        report.notes.append("registrations that expired before the check (a load that ended "
                            f"more than their expiry earlier): {', '.join(gone)}")
    for centre in centres.values():
        for proxy in centre["proxies"]:
            if not sup.alive(proxy["name"]) or not proxy.get("http_port"):
                continue
            try:
                page = _get_json(proxy["host"], proxy["http_port"], "/status/registrations")
            except OSError as exc:
                report.notes.append(f"{proxy['name']}: bindings unreadable: {exc}")
                continue
            lost, stale = compare_bindings(registered, page.get("bindings", []), time.time())
            report.lost_bindings += [f"{proxy['name']}:{x}" for x in lost]
            report.stale_bindings += [f"{proxy['name']}:{x}" for x in stale]
    # calls left up on the nodes
    for centre in centres.values():
        for node in centre["nodes"]:
            if not sup.alive(node["name"]) or not node.get("http_port"):
                continue
            try:
                calls = _get_json(node["host"], node["http_port"], "/status/calls")
            except OSError as exc:
                report.notes.append(f"{node['name']}: calls unreadable: {exc}")
                continue
            report.calls_left_up[node["name"]] = len(calls)
    elapsed = time.time() - start
    for name, pid in pids_before.items():
        if name in restarted or rss_before.get(name) is None:
            continue
        after = _rss_mb(pid)
        before = rss_before[name]
        if after is not None and before is not None:
            report.memory_mb_per_hour[name] = round((after - before) / elapsed * 3600, 1)
    (work / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def main_args(directory: Path, duration: float, register_rate: float, call_rate: float,
              json_out: Path | None) -> int:
    """The ``lab drill`` action: run, print the report, exit 1 when state was lost."""
    try:
        report = run_drill(directory, duration=duration, register_rate=register_rate,
                           call_rate=call_rate)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"lab drill: {exc}")
        return 2
    print(report.text())
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.ok else 1
