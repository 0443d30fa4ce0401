"""status-aggregator side by side with Kamailio's presence server, on the same
presence load (docs/status-aggregator.md, "Figures"; docs/benchmarks.md).

The load, the same on both sides (sizes from the options, printed with the
figures):

* ``--presentities`` P users publish their state once (the load phase; the
  server's memory growth divided by P is the memory per presentity);
* ``--watchers`` W watchers subscribe, watcher j to presentity j mod P (so
  each presentity has W/P watchers; memory growth / W per watcher);
* then, for each rate of ``--rates`` (changes per second), ``--rounds``
  rounds of changes: in each round every presentity changes once, the P
  changes paced at that rate; every change must reach each of its watchers.

Per side and rate we count the changes actually delivered to the watchers
(NOTIFYs received, events received), the missing ones, failures, the
server's CPU seconds (user + system, ``/proc/PID/stat`` of all its
processes) from the first change to the last delivery, per 1,000
deliveries, and the load generators' own CPU (% of one core) so that a
saturated generator is not mistaken for a slow server. The server's idle
CPU (% of one core over 3 s before the changes, with every watcher
subscribed) is printed too: at a low rate it is a visible share of the
CPU per delivery.

* **Kamailio** (``bench/kamailio/presence.cfg``: presence + presence_xml,
  presentities and subscriptions in memory only, no database, no
  authorisation, ``children=1``) on 127.0.225.1, driven by SIPp 3.6 over UDP
  (``bench/presence/*.xml``): ``publish.xml`` (PUBLISH with a PIDF body, a
  round's PUBLISHes carry the SIP-If-Match of the previous round's 200),
  ``subscribe.xml`` (SUBSCRIBE, Event: presence, the Contact naming the
  NOTIFY receiver) and ``notify.xml`` (one SIPp UAS answering every NOTIFY;
  its message counts are the deliveries). Memory: Kamailio's shared-memory
  pool in use (``kamcmd core.shmmem`` real_used: presentities and
  subscriptions live there) and PSS of all its processes.
* **ours**: a real ``sipcluster status-aggregator`` process (mutual TLS) on
  127.0.226.1; one publisher (our client library, changes batched per 20 ms
  tick as a site's server does), W watches spread over ``--watch-connections``
  consumer connections, in this process on 127.0.226.9. Memory: VmRSS.

Median of ``--runs`` (ours, then Kamailio, in each run). A side with
failures, missing deliveries or errors in the server's log is reported as
such and gets no ratio.

Usage: ``.venv/bin/python bench/bench_presence.py [--presentities 1000]
[--watchers 2000] [--rates 200,1000] [--rounds 4] [--watch-connections 20]
[--runs 3] [--sides ours,kamailio]``. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_proxy as bp  # noqa: E402  (Kamailio's memory options)
import bench_status  # noqa: E402  (the aggregator harness: daemon, clients, /proc readers)

from daemons.runtime import certs  # noqa: E402
from daemons.runtime.logs import configure_logging  # noqa: E402
from daemons.runtime.status_client import StatusClient  # noqa: E402
from protocols.status.messages import Role, StatusRecord  # noqa: E402

#: this benchmark's own addresses: Kamailio, the SIPp clients, the NOTIFY receiver
KAMAILIO, SIPP_CLIENT, NOTIFY_UAS = "127.0.225.1", "127.0.225.2", "127.0.225.3"
#: the aggregators and the client library's side (bench_status's harness, moved here)
OUR_HOSTS = {"SA_1": "127.0.226.1", "SA_2": "127.0.226.2"}
OUR_CLIENT = "127.0.226.9"
SCENARIOS = HERE / "presence"
KAMAILIO_CFG = HERE / "kamailio" / "presence.cfg"
#: SIPp socket buffers, 1 ms timer, short dead-call records (as bench_proxy.py)
SIPP_TUNING = ["-buff_size", str(4 * 2**20), "-timer_resol", "1", "-deadcall_wait", "5000",
               "-nostdin"]
#: Kamailio log lines that make a run not a clean result
KAMAILIO_ERRORS = (" ERROR: ", " CRITICAL: ", " ALERT: ", "out of mem", "could not allocate")
#: the rate of the load phase and of the subscriptions (both sides pace nothing else)
SETUP_RATE = 500
#: memory is read this long after a phase: Kamailio keeps a finished transaction for
#: its wait timer (5 s), which is not presence state; both sides get the same wait
SETTLE = 6.0
#: seconds over which the idle CPU is measured
IDLE = 3.0


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def presentity(i: int) -> str:
    return f"p{i:06d}"


def watcher_targets(args: argparse.Namespace) -> list[int]:
    """Watcher j watches presentity j mod P."""
    return [j % args.presentities for j in range(args.watchers)]


def expected_deliveries(args: argparse.Namespace, changed: list[int]) -> int:
    per: dict[int, int] = {}
    for i in watcher_targets(args):
        per[i] = per.get(i, 0) + 1
    return sum(per.get(i, 0) for i in changed)


# --------------------------------------------------------------------------- Kamailio


def cpu_by_process(pid: int) -> dict[int, float]:
    """User + system seconds of a process and of each of its descendants (/proc/PID/stat)."""
    out: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
    return out


def tree_cpu(pid: int) -> float:
    return sum(cpu_by_process(pid).values())


def busiest(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds of the process that used most between two readings."""
    return max((after[p] - before.get(p, 0.0) for p in after), default=0.0)


def tree_pss(pid: int) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
    return total


def epoch(stamp: str) -> float:
    """SIPp's ``2026-12-06\t07:08:27.689946\t1796540907.689946`` -> seconds."""
    return float(stamp.split("\t")[-1])


def sipp_stat(path: Path) -> dict[str, Any]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    return {"ok": int(row["SuccessfulCall(C)"]), "failed": int(row["FailedCall(C)"]),
            "retrans": int(row["Retransmissions(C)"]),
            "seconds": epoch(row["CurrentTime"]) - epoch(row["StartTime"])}


class KamailioPresence:
    """Kamailio's presence server, SIPp's PUBLISH/SUBSCRIBE UACs and NOTIFY UAS."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port(KAMAILIO)
        self.notify_port = free_port(NOTIFY_UAS)
        self.ctl = work / "ctl.sock"
        self.log = work / "kamailio.log"
        self._log_offset = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: subprocess.Popen[bytes] | None = None
        self.sipp_cpu = 0.0

    def start(self) -> None:
        kam = shutil.which("kamailio") or "/usr/sbin/kamailio"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                # TLSF by default: Debian's (qm) is Kamailio's troubleshooting allocator
                [kam, "-DD", "-E", *bp.kamailio_memory_args(512, 32),
                 "-f", str(KAMAILIO_CFG),
                 "-l", f"udp:{KAMAILIO}:{self.port}", "-Y", str(self.work),
                 "-A", f'CTL_SOCKET="unix:{self.ctl}"'],
                cwd=self.work, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.shm_used()
                break
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"kamailio did not start: {self.log.read_text()[-500:]}") from exc
                time.sleep(0.2)
        notify_dir = self.work / "notify"
        notify_dir.mkdir(exist_ok=True)
        self.notify = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "notify.xml"), "-i", NOTIFY_UAS,
             "-p", str(self.notify_port), *SIPP_TUNING, "-trace_counts", "-fd", "1",
             "-trace_err"], cwd=notify_dir, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def shm_used(self) -> int:
        out = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl}", "core.shmmem"],
                             capture_output=True, text=True, timeout=10)
        for line in out.stdout.splitlines():
            if line.strip().startswith("real_used:"):
                return int(line.split(":")[1])
        raise RuntimeError(f"kamcmd core.shmmem: {out.stdout!r} {out.stderr!r}")

    def cpu(self) -> float:
        assert self.proc is not None
        return tree_cpu(self.proc.pid)

    def pss(self) -> int:
        assert self.proc is not None
        return tree_pss(self.proc.pid)

    def notify_counts(self) -> dict[str, int]:
        """The NOTIFY receiver's counts: first NOTIFYs, change NOTIFYs, unexpected."""
        files = sorted((self.work / "notify").glob("*_counts.csv"))
        if not files:
            return {"first": 0, "changes": 0, "unexpected": 0, "retrans": 0}
        lines = [ln for ln in files[-1].read_text().splitlines() if ln.strip()]
        if len(lines) < 2:
            return {"first": 0, "changes": 0, "unexpected": 0, "retrans": 0}
        row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
        return {"first": int(row.get("0_NOTIFY_Recv", 0)),
                "changes": int(row.get("2_NOTIFY_Recv", 0)),
                "unexpected": sum(int(v) for k, v in row.items() if k.endswith("_Unexp") and v),
                "retrans": sum(int(v) for k, v in row.items()
                               if k.endswith("_NOTIFY_Retrans") and v)}

    def notify_cpu(self) -> float:
        assert self.notify is not None
        return tree_cpu(self.notify.pid)

    def new_log_errors(self) -> list[str]:
        with self.log.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        self._log_offset += len(data)
        return [ln.strip()[:200] for ln in data.decode(errors="replace").splitlines()
                if any(mark in ln for mark in KAMAILIO_ERRORS)]

    def sipp(self, scenario: str, name: str, inf: Path, calls: int, rate: int,
             keys: dict[str, str]) -> dict[str, Any]:
        """Run one SIPp UAC to completion; its stat line and its own CPU seconds."""
        stat = self.work / f"{name}.csv"
        cmd = ["sipp", "-sf", str(SCENARIOS / scenario), f"{KAMAILIO}:{self.port}",
               "-i", SIPP_CLIENT, "-p", "0", "-inf", str(inf), "-m", str(calls),
               "-r", str(rate), "-l", str(max(rate * 4, 1000)), *SIPP_TUNING,
               "-trace_stat", "-stf", str(stat), "-fd", "1", "-trace_logs",
               "-log_file", str(self.work / f"{name}.log"), "-trace_err",
               "-error_file", str(self.work / f"{name}.err"),
               "-timeout", f"{int(30 + 3 * calls / rate)}s", "-timeout_error"]
        for key, value in keys.items():
            cmd += ["-key", key, value]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, cwd=self.work, capture_output=True, timeout=60 + 3 * calls / rate)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.sipp_cpu += cpu
        result = sipp_stat(stat) if stat.exists() else {"ok": 0, "failed": calls, "retrans": 0,
                                                          "seconds": 0.0}
        result["cpu"] = cpu
        return result

    def wait_notifies(self, key: str, expected: int, idle: float = 3.0,
                      limit: float = 60.0) -> int:
        """Until the receiver counted ``expected`` NOTIFYs, or none came for ``idle`` s."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.notify_counts()[key]
            if count >= expected:
                return count
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since > idle:
                return count
            time.sleep(0.25)
        return self.notify_counts()[key]

    def stop(self) -> None:
        for proc in (self.notify, self.proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def etags(log: Path) -> dict[str, str]:
    """``user;SIP-If-Match: etag;`` lines SIPp logged for each 200 to a PUBLISH."""
    out = {}
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split(";")
            if len(parts) >= 2 and parts[1].startswith("SIP-If-Match: "):
                out[parts[0]] = parts[1]
    return out


def run_kamailio(args: argparse.Namespace, run: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-presence-kam{run}-"))
    kam = KamailioPresence(work)
    errors: list[str] = []
    failures = 0
    try:
        kam.start()
        time.sleep(1.0)
        errors += kam.new_log_errors()  # idle: must be clean, or the set-up is wrong
        if errors:
            raise RuntimeError(f"kamailio logged errors while idle: {errors[:3]}")
        shm0, pss0 = kam.shm_used(), kam.pss()
        # load: every presentity publishes once
        inf = work / "publish-0.inf"
        inf.write_text("SEQUENTIAL\n" + "".join(
            f"{presentity(i)};X-Initial: 1;\n" for i in range(args.presentities)))
        load = kam.sipp("publish.xml", "publish-0", inf, args.presentities, SETUP_RATE,
                        {"round": "0"})
        failures += load["failed"]
        errors += kam.new_log_errors()
        time.sleep(SETTLE)
        shm1, pss1 = kam.shm_used(), kam.pss()
        # watchers
        inf = work / "subscribe.inf"
        inf.write_text("SEQUENTIAL\n" + "".join(
            f"w{j:06d};{presentity(i)};\n" for j, i in enumerate(watcher_targets(args))))
        subs = kam.sipp("subscribe.xml", "subscribe", inf, args.watchers, SETUP_RATE,
                        {"notify_host": NOTIFY_UAS, "notify_port": str(kam.notify_port)})
        failures += subs["failed"]
        first = kam.wait_notifies("first", args.watchers)
        errors += kam.new_log_errors()
        time.sleep(SETTLE)
        shm2, pss2 = kam.shm_used(), kam.pss()
        idle0 = kam.cpu()
        time.sleep(IDLE)
        idle = kam.cpu() - idle0
        result: dict[str, Any] = {
            "presentities": load["ok"], "watchers": subs["ok"], "first_notifies": first,
            "shm_bytes_per_presentity": (shm1 - shm0) / max(load["ok"], 1),
            "pss_bytes_per_presentity": (pss1 - pss0) / max(load["ok"], 1),
            "shm_bytes_per_watcher": (shm2 - shm1) / max(subs["ok"], 1),
            "pss_bytes_per_watcher": (pss2 - pss1) / max(subs["ok"], 1),
            "idle_cpu_pct": 100 * idle / IDLE, "failures": failures,
            "log_errors": len(errors), "first_error": errors[0] if errors else "",
            "rates": {},
        }
        # rounds of changes, at each rate
        current = etags(work / "publish-0.log")
        index = {presentity(i): i for i in range(args.presentities)}
        r = 0
        for rate in args.rates:
            expected = changes = failed = retrans = 0
            counts0 = kam.notify_counts()
            base = counts0["changes"]
            cpu0, notify_cpu0, sipp_cpu0 = kam.cpu(), kam.notify_cpu(), kam.sipp_cpu
            assert kam.proc is not None
            procs0 = cpu_by_process(kam.proc.pid)
            sipp_max = 0.0
            send_seconds = 0.0
            for _ in range(args.rounds):
                r += 1
                users = sorted(current)
                inf = work / f"publish-{r}.inf"
                inf.write_text("SEQUENTIAL\n" + "".join(f"{u};{current[u]};\n" for u in users))
                step = kam.sipp("publish.xml", f"publish-{r}", inf, len(users), rate,
                                {"round": str(r)})
                failed += step["failed"]
                send_seconds += step["seconds"]
                sipp_max = max(sipp_max, step["cpu"] / max(step["seconds"], 1e-3))
                retrans += step["retrans"]
                changes += step["ok"]
                new = etags(work / f"publish-{r}.log")
                expected += expected_deliveries(args, [index[u] for u in new])
                failed += len(current) - len(new)  # a PUBLISH without its 200
                current = new
            delivered = kam.wait_notifies("changes", base + expected) - base
            cpu = kam.cpu() - cpu0
            worker = busiest(procs0, cpu_by_process(kam.proc.pid))
            counts = kam.notify_counts()
            step_errors = kam.new_log_errors()
            errors += step_errors
            gen_cpu = (kam.notify_cpu() - notify_cpu0) + (kam.sipp_cpu - sipp_cpu0)
            result["rates"][str(rate)] = {
                "changes": changes, "achieved_rate": changes / max(send_seconds, 1e-3),
                "expected": expected, "delivered": delivered,
                "missing": expected - delivered, "failures": failed,
                "unexpected": counts["unexpected"] - counts0["unexpected"],
                "notify_retrans": counts["retrans"] - counts0["retrans"],
                "publish_retrans": retrans,
                "cpu_s": cpu, "cpu_s_per_1000": cpu / max(delivered, 1) * 1000,
                "offered": rate, "send_seconds": send_seconds,
                "server_cpu_pct": 100 * cpu / max(send_seconds, 1e-3),
                "busiest_process_pct": 100 * worker / max(send_seconds, 1e-3),
                "generator_cpu_pct": 100 * gen_cpu / max(send_seconds, 1e-3),
                "busiest_generator_pct": 100 * max(
                    sipp_max, (kam.notify_cpu() - notify_cpu0) / max(send_seconds, 1e-3)),
                "log_errors": len(step_errors),
                "first_error": step_errors[0] if step_errors else "",
            }
        return result
    finally:
        kam.stop()
        with contextlib.suppress(OSError):
            errors += kam.new_log_errors()


# --------------------------------------------------------------------------- ours


def daemon_errors(log: Path) -> list[str]:
    """Error lines in the aggregator's log (structlog, JSON or console)."""
    return [ln for ln in log.read_text(errors="replace").splitlines()
            if '"level": "error"' in ln or "[error" in ln or "Traceback" in ln]


async def run_ours(args: argparse.Namespace, root: Path, ports: dict[str, int]) -> dict[str, Any]:
    daemon = bench_status.Daemon(root, "SA_1", ports)
    await daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    clients: list[StatusClient] = []
    try:
        users = [f"{presentity(i)}@bench.lab" for i in range(args.presentities)]
        rss0 = bench_status.rss_kib(pid)
        pub = bench_status.client(root, ports, "pub00", Role.PUBLISHER, ["SA_1"])
        clients.append(pub)
        pub.publish([StatusRecord(user=u, status="Available", server="pub00") for u in users])
        loaded, started = 0, time.monotonic()
        while loaded < len(users) and time.monotonic() - started < 60:
            await asyncio.sleep(0.1)
            loaded = await daemon.users()
        await asyncio.sleep(SETTLE)
        rss1 = bench_status.rss_kib(pid)
        delivered = 0

        def on_records(records: list[StatusRecord]) -> None:
            nonlocal delivered
            delivered += sum(1 for r in records if r.detail.startswith("round "))

        conns = args.watch_connections
        watchers = [bench_status.client(root, ports, "desk", Role.CONSUMER, ["SA_1"],
                                        on_records=on_records) for _ in range(conns)]
        clients += watchers
        for w in watchers:
            await w.wait_open(30)
        targets = watcher_targets(args)
        per = -(-len(targets) // conns)
        refused = 0
        for k, w in enumerate(watchers):
            mine = targets[k * per:(k + 1) * per]
            if mine:
                answer = await w.watch([users[i] for i in mine], timeout=60)
                refused += len(answer.refused)
        await asyncio.sleep(SETTLE)
        rss2 = bench_status.rss_kib(pid)
        errors = daemon_errors(daemon.log)
        idle0 = bench_status.cpu_seconds(pid)
        await asyncio.sleep(IDLE)
        idle = bench_status.cpu_seconds(pid) - idle0
        result: dict[str, Any] = {
            "presentities": loaded, "watchers": len(targets),
            "rss_bytes_per_presentity": (rss1 - rss0) * 1024 / max(loaded, 1),
            "rss_bytes_per_watcher": (rss2 - rss1) * 1024 / max(len(targets), 1),
            "idle_cpu_pct": 100 * idle / IDLE,
            "failures": refused + (len(users) - loaded),  # watches refused, users not loaded
            "log_errors": len(errors), "first_error": errors[0] if errors else "",
            "rates": {},
        }
        # rounds of changes at each rate, paced in 20 ms ticks
        tick = 0.02
        r = 0
        for rate in args.rates:
            per_tick = max(1, int(rate * tick))
            total = args.rounds * len(users)
            expected = args.rounds * len(targets)
            base = delivered
            gaps0 = sum(w.gaps for w in watchers)
            cpu0, gen0 = bench_status.cpu_seconds(pid), time.process_time()
            t0 = time.monotonic()
            sent = 0
            while sent < total:
                n = min(per_tick, total - sent)
                records = []
                for k in range(sent, sent + n):
                    i = k % len(users)
                    rnd = r + k // len(users) + 1
                    records.append(StatusRecord(user=users[i],
                                                status="Busy" if rnd % 2 else "Away",
                                                server="pub00", detail=f"round {rnd}"))
                pub.publish(records)
                sent += n
                await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
            r += args.rounds
            send_seconds = time.monotonic() - t0
            last, since = -1, time.monotonic()
            while delivered - base < expected and time.monotonic() - since < 3.0:
                if delivered != last:
                    last, since = delivered, time.monotonic()
                await asyncio.sleep(0.05)
            cpu = bench_status.cpu_seconds(pid) - cpu0
            gen = time.process_time() - gen0
            got = delivered - base
            new_errors = daemon_errors(daemon.log)[len(errors):]
            errors += new_errors
            result["rates"][str(rate)] = {
                "changes": total, "achieved_rate": total / max(send_seconds, 1e-3),
                "expected": expected, "delivered": got, "missing": expected - got,
                "failures": sum(w.gaps for w in watchers) - gaps0, "cpu_s": cpu,
                "cpu_s_per_1000": cpu / max(got, 1) * 1000,
                "offered": rate, "send_seconds": send_seconds,
                "server_cpu_pct": 100 * cpu / max(send_seconds, 1e-3),
                "busiest_process_pct": 100 * cpu / max(send_seconds, 1e-3),
                "generator_cpu_pct": 100 * gen / max(send_seconds, 1e-3),
                "busiest_generator_pct": 100 * gen / max(send_seconds, 1e-3),
                "log_errors": len(new_errors),
                "first_error": new_errors[0][:200] if new_errors else "",
            }
        return result
    finally:
        for c in clients:
            await c.stop()
        await daemon.stop()


def prepare_ours() -> tuple[Path, dict[str, int]]:
    # bench_status's harness, on this benchmark's addresses
    bench_status.HOSTS = OUR_HOSTS
    bench_status.CLIENT_HOST = OUR_CLIENT
    root = Path(tempfile.mkdtemp(prefix="bench-presence-ours-"))
    os.environ["SIPCLUSTER_STATE_DIR"] = str(root / "state")
    ports = bench_status.write_cluster(root, ["pub00"])
    certs.init_ca(root / "certs")
    for name in ["SA_1", "SA_2", "desk", "pub00"]:
        certs.issue(root / "certs", name)
    return root, ports


# --------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def clean(step: dict[str, Any]) -> bool:
    return bool(step["missing"] == 0 and step["failures"] == 0 and step["log_errors"] == 0
                and step.get("unexpected", 0) == 0)


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numbers, sums of the failure counts, the first error."""
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    out: dict[str, Any] = {k: median([float(r[k]) for r in rows if k in r]) for k in keys}
    for k in ("missing", "failures", "log_errors", "unexpected", "notify_retrans",
              "publish_retrans"):
        if k in rows[0]:
            out[k] = sum(int(r[k]) for r in rows)
    out["runs"] = len(rows)
    out["first_error"] = next((r["first_error"] for r in rows if r.get("first_error")), "")
    return out


def summarise(runs: list[dict[str, Any]], rates: list[int]) -> dict[str, Any]:
    if not runs:
        return {}
    out = medians(runs)
    out["rates"] = {}
    for rate in rates:
        steps = [r["rates"][str(rate)] for r in runs if str(rate) in r["rates"]]
        m = medians(steps)
        if m:
            m["clean_runs"] = sum(1 for st in steps if clean(st))
            m["cpu_per_run"] = [round(st["cpu_s_per_1000"], 3) for st in steps]
        out["rates"][str(rate)] = m
    return out


def limit_of(step: dict[str, Any]) -> str:
    """What held a side back at one rate: errors, its own CPU, or the load generator."""
    if not step:
        return "not run"
    if step["failures"] or step["missing"] or step["log_errors"] or step.get("unexpected"):
        return "errors (see failures, missing, log)"
    server, generator = step["busiest_process_pct"], step["busiest_generator_pct"]
    if step["achieved_rate"] >= 0.9 * step["offered"]:
        return f"nothing: rate met, busiest server process at {server:.0f} % of a core"
    if server >= 80 and server >= generator:
        return f"server CPU: its busiest process at {server:.0f} % of a core"
    if generator >= 80:
        return f"load generator CPU: its busiest process at {generator:.0f} % of a core"
    return (f"rate not met, busiest server process {server:.0f} %, "
            f"busiest generator {generator:.0f} % of a core")


def report(args: argparse.Namespace, data: dict[str, list[dict[str, Any]]],
           failures: list[str]) -> dict[str, Any]:
    ours, kam = summarise(data["ours"], args.rates), summarise(data["kamailio"], args.rates)
    print("## status-aggregator vs Kamailio presence\n")
    print(f"{args.presentities:,} presentities, {args.watchers:,} watchers "
          f"({args.watchers / args.presentities:g} per presentity); at each rate "
          f"{args.rounds} rounds of one change per presentity "
          f"({args.rounds * args.presentities:,} changes, {args.rounds * args.watchers:,} "
          f"deliveries expected per run); ours: one publisher, {args.watch_connections} "
          f"consumer connections, mutual TLS; Kamailio: SIPp PUBLISH/SUBSCRIBE/NOTIFY over "
          f"UDP, children=1; median of runs (ours {ours.get('runs', 0)}, Kamailio "
          f"{kam.get('runs', 0)})\n")

    def cell(side: dict[str, Any], key: str, fmt: str) -> str:
        value = side.get(key) if side else None
        return fmt.format(value) if isinstance(value, int | float) else "n/a"

    def ratio(o: dict[str, Any], k: dict[str, Any], key: str) -> float | None:
        if not o or not k or not o.get(key) or not k.get(key):
            return None
        if not o.get("clean_runs", 1) or not k.get("clean_runs", 1):
            return None  # a side with errors: no ratio
        return float(o[key]) / float(k[key])

    def ratio_text(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "n/a"

    figures: dict[str, Any] = {
        "presentities": args.presentities, "watchers": args.watchers,
        "rounds": args.rounds, "rates": args.rates, "ours": ours, "kamailio": kam,
        "failures": failures}
    print("| figure | ours | Kamailio | ratio ours/Kamailio |")
    print("|---|---|---|---|")
    mem_ratio: float | None = None
    if ours.get("rss_bytes_per_presentity") and kam.get("shm_bytes_per_presentity"):
        mem_ratio = ours["rss_bytes_per_presentity"] / kam["shm_bytes_per_presentity"]
    print(f"| memory per presentity | {cell(ours, 'rss_bytes_per_presentity', '{:,.0f} B')} "
          f"RSS | {cell(kam, 'shm_bytes_per_presentity', '{:,.0f} B')} shm (PSS "
          f"{cell(kam, 'pss_bytes_per_presentity', '{:,.0f} B')}) | {ratio_text(mem_ratio)} |")
    w_ratio: float | None = None
    if ours.get("rss_bytes_per_watcher") and kam.get("shm_bytes_per_watcher"):
        w_ratio = ours["rss_bytes_per_watcher"] / kam["shm_bytes_per_watcher"]
    print(f"| memory per watcher | {cell(ours, 'rss_bytes_per_watcher', '{:,.0f} B')} RSS | "
          f"{cell(kam, 'shm_bytes_per_watcher', '{:,.0f} B')} shm (PSS "
          f"{cell(kam, 'pss_bytes_per_watcher', '{:,.0f} B')}) | {ratio_text(w_ratio)} |")
    print(f"| server idle CPU, watchers subscribed | {cell(ours, 'idle_cpu_pct', '{:.1f} %')} | "
          f"{cell(kam, 'idle_cpu_pct', '{:.1f} %')} | |")
    print(f"| set-up failures, log errors | {ours.get('failures', 'n/a')}, "
          f"{ours.get('log_errors', 'n/a')} | {kam.get('failures', 'n/a')}, "
          f"{kam.get('log_errors', 'n/a')} | |")
    figures["memory_per_presentity_ratio"] = mem_ratio
    figures["memory_per_watcher_ratio"] = w_ratio
    rows = [
        ("changes/s achieved", "achieved_rate", "{:,.0f}"),
        ("deliveries received", "delivered", "{:,.0f}"),
        ("deliveries missing (all runs)", "missing", "{:,}"),
        ("failures (all runs)", "failures", "{:,}"),
        ("PUBLISH retransmissions (SIPp; all runs)", "publish_retrans", "{:,}"),
        ("NOTIFY retransmissions (Kamailio; all runs)", "notify_retrans", "{:,}"),
        ("errors in the server's log (all runs)", "log_errors", "{:,}"),
        ("server CPU s / 1,000 deliveries", "cpu_s_per_1000", "{:.3f}"),
        ("server CPU while sending, % of one core (all processes)", "server_cpu_pct",
         "{:.0f} %"),
        ("its busiest process, % of one core", "busiest_process_pct", "{:.0f} %"),
        ("load generator CPU while sending, % of one core", "generator_cpu_pct", "{:.0f} %"),
        ("its busiest process, % of one core", "busiest_generator_pct", "{:.0f} %"),
    ]
    for rate in args.rates:
        o = ours.get("rates", {}).get(str(rate), {})
        k = kam.get("rates", {}).get(str(rate), {})
        print(f"| **{rate:,} changes/s offered** | | | |")
        for what, key, fmt in rows:
            text = ratio_text(ratio(o, k, key)) if key == "cpu_s_per_1000" else ""
            print(f"| {what} | {cell(o, key, fmt)} | {cell(k, key, fmt)} | {text} |")
        print(f"| what limited it | {limit_of(o)} | {limit_of(k)} | |")
        figures[f"cpu_ratio_{rate}"] = ratio(o, k, "cpu_s_per_1000")
    print()
    for rate in args.rates:
        o = ours.get("rates", {}).get(str(rate), {})
        k = kam.get("rates", {}).get(str(rate), {})
        print(f"CPU s / 1,000 deliveries per run at {rate:,}/s: ours {o.get('cpu_per_run', [])}, "
              f"Kamailio {k.get('cpu_per_run', [])}")
    for side, sm in (("ours", ours), ("Kamailio", kam)):
        first = sm.get("first_error") or next(
            (st.get("first_error") for st in sm.get("rates", {}).values()
             if st.get("first_error")), "")
        if first:
            print(f"\n{side} first log error: {first}")
    for failure in failures:
        print(f"\nFAILED: {failure}")
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presentities", type=int, default=1000)
    parser.add_argument("--watchers", type=int, default=2000)
    parser.add_argument("--rates", default="200,1000",
                        help="changes per second, comma-separated, one step each")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--watch-connections", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sides", default="ours,kamailio")
    parser.add_argument("--kamailio-allocator", choices=bp.KAMAILIO_ALLOCATORS,
                        default=bp.KAMAILIO_ALLOCATORS[0],
                        help="Kamailio's memory manager (-x/-X); qm only to reproduce "
                             "older figures")
    args = parser.parse_args(argv)
    bp.KAMAILIO_ALLOCATOR = args.kamailio_allocator
    args.rates = [int(r) for r in str(args.rates).split(",") if r]
    sides = [s for s in args.sides.split(",") if s]
    failures: list[str] = []
    if "kamailio" in sides and not (
            shutil.which("sipp") and shutil.which("kamcmd")
            and Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/presence.so").exists()):
        failures.append("kamailio, kamailio-presence-modules or sipp not installed "
                        "(make bench-tools): Kamailio side skipped")
        sides.remove("kamailio")
    configure_logging("warning")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(f"started {datetime.now():%Y-%m-%d %H:%M}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr, flush=True)
    data: dict[str, list[dict[str, Any]]] = {"ours": [], "kamailio": []}
    root, ports = prepare_ours() if "ours" in sides else (Path(), {})
    for run in range(1, args.runs + 1):
        if "ours" in sides:
            try:
                result = asyncio.run(run_ours(args, root, ports))
                data["ours"].append(result)
                print(f"ours run {run}: {json.dumps(result)}", file=sys.stderr, flush=True)
            except Exception as exc:  # a failed run is reported, not hidden
                failures.append(f"ours run {run}: {exc!r}")
        if "kamailio" in sides:
            try:
                result = run_kamailio(args, run)
                data["kamailio"].append(result)
                print(f"kamailio run {run}: {json.dumps(result)}", file=sys.stderr, flush=True)
            except Exception as exc:
                failures.append(f"kamailio run {run}: {exc!r}")
    figures = report(args, data, failures)
    print("RESULT " + json.dumps(figures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
