"""sip-proxy benchmark, side by side with Kamailio on the same SIPp loads.

    .venv/bin/python bench/bench_proxy.py [--runs 3] [--step-seconds 3]
        [--register-rates 500,1000,2000,3000,4000] [--call-rates 250,500,1000,1500,2000]
        [--servers ours,kamailio] [--baseline-root DIR] [--bindings 100000 | --skip-store]
        [--subnet 127.0.1] [--workers N] [--sipp-transport u1|un] [--cpu-per-worker F]

``--workers N`` runs the sip-proxy with ``workers = N`` (docs/sip-proxy.md,
"Workers") and Kamailio with ``-n N`` (``children=N``: N UDP worker
processes), side by side on the same SIPp loads. With N > 1 SIPp sends each
call from a socket of its own (``-t un``, as many phones would), since the
kernel spreads a shared port's datagrams over the workers by source address
and port (a single SIPp socket would reach one worker); ``--sipp-transport
un`` gives the N = 1 run the same load, for a like-for-like 1 -> N ratio.

``--cpu-per-worker F`` gives each server a CPU budget of N x F cores (a cgroup
cpu quota over all its processes, 100 ms periods; root): on a host with fewer
free cores than N + the load generator needs, this measures how the server
grows from 1 to N workers with the load generator outside the budget -- each
"core" is F of a real one, so memory bandwidth and caches are not what N real
cores would give. The steps print each server's CPU use against its budget,
so a server stopped by its budget says so.

``--baseline-root DIR`` adds a third server, ``sip-proxy-before``: the sip-proxy
run from another source tree (e.g. ``git archive HEAD daemons protocols | tar -x
-C DIR``), so a change is measured before/after in the same run.

Loads (SIPp 3.6 on loopback, UDP):

* ``register``: SIPp UAC -> proxy -> node, digest off. The node is SIPp
  itself (a UAS scenario answering REGISTER and the proxy's OPTIONS checks
  with 200, echoing the Contact), so the node is never the bottleneck.
* ``invite``: proxy-only dialogs: a SIPp UAC standing at the node's address
  calls ``sip:1001@cluster.lab`` through the proxy; the proxy finds the
  registered SIPp UAS (the phone) in its location table, record-routes, and
  ACK + BYE follow the Route set (INVITE/180/200/ACK/BYE/200 per call).

The same SIPp commands drive Kamailio (``bench/kamailio/kamailio.cfg``), run in
the foreground with ``-DD -E -m 1024 -M 32`` and ``-n N`` (``children=N``,
``--workers``; 1 by default: one UDP worker, like the sip-proxy's one event
loop; Kamailio also runs its timer processes) on its own loopback address.
Memory is sized as Kamailio's documentation says for a load with 30 s
transaction timers: 1,024 MB of shared memory (``-m``; the 64 MB default runs
out at 2,000 REGISTER/s: ``tm: build_cell(): could not allocate shared
memory``) and 32 MB of private memory per process (``-M``), and both pools use
the TLSF allocator (``-x tlsf -X tlsf``, ``--kamailio-allocator``). Debian's
Kamailio defaults to ``qm``, the allocator Kamailio's authors describe as the
one for troubleshooting memory use: its private-memory ``qm_malloc`` walks
free lists, and under callgrind it was 86 % of the UDP worker's instructions
per relayed REGISTER (584,000 instructions per REGISTER with ``qm``, 84,000
with ``tlsf``, 85,000 with ``fm``; ``bench/bench_instructions.py
--kamailio``). Each server's log
is read after every step: a step in which a server logged an error counts as
failed for that server, and no ours/Kamailio ratio is printed for a load where
either side logged errors or failed at the lowest (idle-like) step -- that is a
wrong set-up, not a result. Fairest REGISTER comparison: Kamailio does what the
sip-proxy does -- it adds Path, relays the REGISTER statefully to the same SIPp
node and stores the binding from the node's 200 (``save()`` on the reply) --
instead of answering as the registrar itself, which would halve its messages.

Each load is a short step search per server: offered rates in increasing
order, ``rate x step-seconds`` calls each (``-r``, ``-m``), stop at the first
step that does not pass. The rate of a step is SIPp's successful calls
divided by the time from SIPp's start to its last call's end (``-trace_stat``
StartTime/CurrentTime), so a server that falls behind shows a lower rate. A
step passes only with zero failed calls, every call successful, and a rate of
at least 90 % of the offered rate; retransmissions are printed next to every
rate, and so is the load generator's own CPU (SIPp UAC and the SIPp node/phone,
% of one core) so a saturated SIPp is not mistaken for a slow server. SIPp
runs with large socket buffers, a 1 ms timer resolution and dead-call records
kept 5 s (not 33 s) so that it stays well below one core at the top steps. Server CPU is
user+system seconds (psutil; Kamailio: all its processes) per 1,000 calls;
memory is PSS after the load. Median over ``--runs``; ours and Kamailio run
one after the other in the same run. Also: memory per binding at 100,000
bindings and catch-up time of 100,000 bindings. The last line is
``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemons.sip_proxy.registrar import Binding, BindingStore  # noqa: E402
from daemons.sip_proxy.replication import PeerAddress, Replicator  # noqa: E402
from tests.support.sip_proxy_site import (  # noqa: E402
    NODE_XML,
    PHONE_XML,
    call_xml,
    write_proxy_site,
)

OURS, KAMAILIO, BEFORE = "127.0.1.151", "127.0.1.152", "127.0.1.153"
NODE, PHONE, REG_UAC = "127.0.1.141", "127.0.1.161", "127.0.1.171"
#: SIPp socket buffers: a scheduling hiccup on a shared machine must not drop datagrams.
SIPP_BUFFER = 4 * 2**20
#: Options of every SIPp instance: big buffers, 1 ms timer, short dead-call records.
SIPP_TUNING = ["-buff_size", str(SIPP_BUFFER), "-timer_resol", "1", "-deadcall_wait", "5000",
               "-nostdin"]
#: A step passes when its rate is at least this share of the offered rate.
RATE_SHARE = 0.9
KAMAILIO_CFG = ROOT / "bench" / "kamailio" / "kamailio.cfg"
#: sip-proxy workers and Kamailio children (--workers)
WORKERS = 1
#: Kamailio's UDP children (-n; --kamailio-children, default WORKERS): its usual
#: several children on the budget of WORKERS workers
KAMAILIO_CHILDREN: int | None = None
#: the sip-proxy's --replication-batch-ms (workers' binding frames; None: its default)
REPLICATION_BATCH_MS: float | None = None
#: SIPp's UDP socket mode (--sipp-transport): u1 one socket, un one per call
SIPP_TRANSPORT = "u1"
#: each server's CPU budget per worker, in cores (--cpu-per-worker; None: no limit)
CPU_PER_WORKER: float | None = None
#: Kamailio's memory manager for shared and private memory (--kamailio-allocator):
#: tlsf or fm for a production comparison; qm (Debian's default) is the
#: troubleshooting allocator, kept selectable to reproduce the older figures
KAMAILIO_ALLOCATORS = ("tlsf", "fm", "qm")
KAMAILIO_ALLOCATOR = KAMAILIO_ALLOCATORS[0]


def kamailio_memory_args(shm_mb: int = 1024, pkg_mb: int = 32) -> list[str]:
    """Kamailio's memory options: the shared pool (``-m``, sized here for 30 s
    transaction timers), each process's private pool (``-M``), and the allocator
    of both (KAMAILIO_ALLOCATOR). bench_presence.py and bench_director.py take
    theirs from here too, with pools of their own size."""
    return ["-m", str(shm_mb), "-M", str(pkg_mb), "-x", KAMAILIO_ALLOCATOR,
            "-X", KAMAILIO_ALLOCATOR]
#: CFS period of the budget (the kernel's default). Not shorter: the kernel hands
#: quota to each CPU in 5 ms slices (sched_cfs_bandwidth_slice_us), and with a
#: quota of one slice or less per period a process on one CPU starves its
#: siblings on the other (Kamailio's timer processes, a second worker).
CPU_PERIOD_US = 100_000


class CpuBudget:
    """A cgroup with a CPU quota that a server's processes start in (cgroup v1's
    cpu controller, or v2's cpu.max)."""

    def __init__(self, name: str, cores: float) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists() and "cpu" in v2.read_text().split():
            self.dir = Path("/sys/fs/cgroup") / name
            self.dir.mkdir(exist_ok=True)
            (self.dir / "cpu.max").write_text(f"{int(cores * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        elif Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists():
            self.dir = Path("/sys/fs/cgroup/cpu") / name
            self.dir.mkdir(exist_ok=True)
            (self.dir / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.dir / "cpu.cfs_quota_us").write_text(str(int(cores * CPU_PERIOD_US)))
        else:
            raise SystemExit("--cpu-per-worker: no cgroup cpu controller here")
        self.cores = cores
        atexit.register(self.remove)  # also when the run ends with an exception

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside the cgroup (so every process it forks is too)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.dir / "cgroup.procs"),
                *argv]

    def throttled_seconds(self) -> float:
        """Time the cgroup's processes waited for the next period so far."""
        with contextlib.suppress(OSError):
            for line in (self.dir / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "throttled_time":  # v1: ns
                    return int(value) / 1e9
                if key == "throttled_usec":  # v2
                    return int(value) / 1e6
        return 0.0

    def remove(self) -> None:
        if not self.dir.exists():
            return
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:  # its last process is still exiting
                time.sleep(0.1)

REGISTER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500"><![CDATA[
REGISTER sip:cluster.lab SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:u[call_number]@cluster.lab>;tag=[call_number]
To: <sip:u[call_number]@cluster.lab>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:u[call_number]@[local_ip]:[local_port]>
Expires: 600
Max-Forwards: 70
User-Agent: SIPp
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

UAS_XML = PHONE_XML
UAC_XML = call_xml("1001")


def free_port(host: str) -> int:
    """A port free for UDP and TCP on ``host``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port")


def write_cluster(path: Path, proxy_port: int, node_port: int, host: str = OURS,
                  workers: int = 1) -> None:
    """The cluster file of the sip-proxy at ``host`` in front of the SIPp node."""
    write_proxy_site(path, proxy_host=host, proxy_port=proxy_port, node_host=NODE,
                     node_port=node_port, workers=workers)


# --------------------------------------------------------------------------- SIPp


@dataclass
class Step:
    """One SIPp run at one offered rate."""

    offered: int
    calls: int
    ok: int
    failed: int
    retrans: int
    seconds: float
    cpu_s: float
    sipp_cpu: float = 0.0  # the SIPp UAC's CPU, % of one core
    peer_cpu: float = 0.0  # the SIPp node and phone, % of one core
    log_errors: tuple[str, ...] = ()  # error lines the server logged during the step
    server_cpu: float = 0.0  # the server's CPU over the step, % of one core
    throttled_s: float = 0.0  # time its CPU budget held it back (--cpu-per-worker)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_1000(self) -> float:
        return 1000.0 * self.cpu_s / max(self.ok, 1)

    @property
    def clean(self) -> bool:
        """Zero failed calls, every call successful, the rate kept up and no error
        in the server's log."""
        return self.failed == 0 and self.ok == self.calls and \
            self.rate >= RATE_SHARE * self.offered and not self.log_errors


def _epoch(field: str) -> float:
    # "2026-11-22\t03:00:14.017406\t1795316414.017406": the last part is epoch seconds
    return float(field.split("\t")[-1])


def sipp_stat(path: Path) -> tuple[int, int, int, float]:
    """(successful, failed, retransmissions, seconds from start to the last
    call's end) from the last line of SIPp's ``-trace_stat`` file."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    seconds = _epoch(row["CurrentTime"]) - _epoch(row["StartTime"])
    return (int(row["SuccessfulCall(C)"]), int(row["FailedCall(C)"]),
            int(row["Retransmissions(C)"]), seconds)


def sipp_failure_reasons(path: Path) -> dict[str, int]:
    """Why SIPp failed calls, from its ``-trace_err`` file: each event's kind
    ("unexpected 180 Ringing", "max retransmissions" ...), counted."""
    if not path.exists():
        return {}
    reasons: dict[str, int] = {}
    for m in re.finditer(r"Aborting call on unexpected message for Call-Id '[^']*': "
                         r"while \w+ \(index \d+\), received '([^\r\n']*)", path.read_text(
                             errors="replace")):
        key = f"unexpected {m.group(1)[:40]}"
        reasons[key] = reasons.get(key, 0) + 1
    text = path.read_text(errors="replace")
    for kind in ("Max retransmission", "timeout", "Call-Id not found"):
        n = text.count(kind)
        if n:
            reasons[kind] = n
    if not reasons:
        first = next((line for line in text.splitlines() if line.startswith("20")), "")
        if first:
            reasons[first.split(": ", 1)[-1][:80]] = 1
    return reasons


def run_sipp(args: list[str], work: Path, name: str,
             timeout: float) -> tuple[int, int, int, float, float]:
    """Run one SIPp UAC; its stat line plus its own CPU seconds. Its error events
    go to ``NAME.errors`` (read by :func:`sipp_failure_reasons`)."""
    stat = work / f"{name}.csv"
    errors = work / f"{name}.errors"
    for old in (stat, errors):
        if old.exists():
            old.unlink()
    cmd = ["sipp", *args, *SIPP_TUNING, "-trace_stat", "-stf", str(stat),
           "-trace_err", "-error_file", str(errors),
           "-fd", "1", "-timeout", f"{int(timeout)}s", "-timeout_error"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=work, capture_output=True, timeout=timeout + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if not stat.exists():
        return 0, 0, 0, 0.0, cpu
    return (*sipp_stat(stat), cpu)


def proc_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(p.pid).cpu_times()
            total += t.user + t.system
    return total


# --------------------------------------------------------------------------- servers


class Server:
    """A proxy under test: where it listens and how much CPU/memory it used."""

    name = ""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log_offset = 0
        self.budget: CpuBudget | None = None

    def limited(self, argv: list[str]) -> list[str]:
        """``argv`` within this server's CPU budget (--cpu-per-worker), if any."""
        if CPU_PER_WORKER is None:
            return argv
        if self.budget is None:
            self.budget = CpuBudget(f"sipcluster-bench-{self.name}-{os.getpid()}",
                                    WORKERS * CPU_PER_WORKER)
        return self.budget.wrap(argv)

    #: what marks an error line in this server's log
    ERROR_MARKS: tuple[str, ...] = ('"level": "error"', '"level": "critical"', "Traceback")

    def new_log_errors(self) -> tuple[str, ...]:
        """Error lines logged since the last call (the server's own log)."""
        if self.log_path is None or not self.log_path.exists():
            return ()
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        self._log_offset += len(data)
        lines = data.decode(errors="replace").splitlines()
        return tuple(line.strip()[:200] for line in lines
                     if any(mark in line for mark in self.ERROR_MARKS))

    def start(self, work: Path, node_port: int) -> None:
        raise NotImplementedError

    def processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        return [p, *p.children(recursive=True)]

    def cpu(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def memory_mb(self) -> float:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total / 2**20

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.budget is not None:
            self.budget.remove()
            self.budget = None


class OurProxy(Server):
    name = "sip-proxy"

    def start(self, work: Path, node_port: int) -> None:
        write_cluster(work / "cluster.toml", self.port, node_port, self.host, WORKERS)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log_path = work / "sip-proxy.log"
        self.proc = subprocess.Popen(self.limited(
            [sys.executable, "-m", "daemons.cli", "sip-proxy", "--config",
             str(work / "cluster.toml"), "--name", "SPX_1", "--rate-limit", "0",
             "--log-level", "error", "--log-format", "json",
             *(() if REPLICATION_BATCH_MS is None
               else ("--replication-batch-ms", f"{REPLICATION_BATCH_MS:g}"))]),
            env=env, cwd=ROOT, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)


class OurProxyBefore(OurProxy):
    """The sip-proxy run from another source tree (``--baseline-root``)."""

    name = "sip-proxy-before"

    def __init__(self, host: str, port: int, root: Path) -> None:
        super().__init__(host, port)
        self.root = root

    def start(self, work: Path, node_port: int) -> None:
        write_cluster(work / "cluster-before.toml", self.port, node_port, self.host)
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        self.log_path = work / "sip-proxy-before.log"
        self.proc = subprocess.Popen(self.limited(
            [sys.executable, "-m", "daemons.cli", "sip-proxy", "--config",
             str(work / "cluster-before.toml"), "--name", "SPX_1", "--rate-limit", "0",
             "--log-level", "error", "--log-format", "json"]), env=env, cwd=self.root,
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)


class Kamailio(Server):
    name = "kamailio"
    #: Kamailio's log levels that mean the step is not a clean result
    ERROR_MARKS = (" ERROR: ", " CRITICAL: ", " ALERT: ", "out of mem",
                   "could not allocate")

    def start(self, work: Path, node_port: int) -> None:
        kam = shutil.which("kamailio") or "/usr/sbin/kamailio"
        self.log_path = work / "kamailio.log"
        self.proc = subprocess.Popen(self.limited(
            [kam, "-DD", "-E", *kamailio_memory_args(), "-n", str(KAMAILIO_CHILDREN or WORKERS),
             "-f", str(KAMAILIO_CFG),
             "-l", f"udp:{self.host}:{self.port}", "-Y", str(work),
             "-A", "REGISTRAR_FRONT", "-A", f'NODE="sip:{NODE}:{node_port}"']),
            cwd=work, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"))


def register_contact(server: Server, contact: tuple[str, int], user: str = "1001") -> None:
    """REGISTER sip:USER from another port of the phone's host, Contact = the UAS."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((contact[0], 0))
        port = s.getsockname()[1]
        msg = (f"REGISTER sip:cluster.lab SIP/2.0\r\nVia: SIP/2.0/UDP {contact[0]}:{port};"
               f"branch=z9hG4bKbr{time.time_ns()}\r\nFrom: <sip:{user}@cluster.lab>;tag=b\r\n"
               f"To: <sip:{user}@cluster.lab>\r\nCall-ID: bench-reg-{time.time_ns()}@x\r\n"
               "CSeq: 1 REGISTER\r\n"
               f"Contact: <sip:{user}@{contact[0]}:{contact[1]}>\r\nExpires: 3600\r\n"
               "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        s.settimeout(3)
        s.sendto(msg, (server.host, server.port))
        data, _ = s.recvfrom(65535)
        if not data.startswith(b"SIP/2.0 200"):
            raise RuntimeError(f"{server.name}: phone registration failed: {data[:60]!r}")


def wait_ready(server: Server, timeout: float = 15.0) -> None:
    """Until the server answers a REGISTER with 200 (node in service, synced), from
    several source ports in a row (each may reach another worker)."""
    deadline = time.monotonic() + timeout
    answered = 0
    while answered < 4 * WORKERS:
        try:
            # another user than the called one: 1001 keeps one contact, the phone
            # (Kamailio would fork every call to a second one)
            register_contact(server, (REG_UAC, 9), "ready")
            answered += 1
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            answered = 0
            time.sleep(0.3)


def wait_idle(server: Server, peers: list[subprocess.Popen[bytes]],
              limit: float = 45.0) -> None:
    """Until the server and the SIPp peers are idle (under 5 % of a core for 1 s):
    after an overloaded step their transactions still retransmit and time out for
    up to 64*T1, and that work must not be charged to the next step or server."""
    deadline = time.monotonic() + limit
    before = server.cpu() + proc_cpu(peers)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = server.cpu() + proc_cpu(peers)
        if now - before < 0.05:
            return
        before = now


def step_search(server: Server, rates: list[int], seconds: float, work: Path,
                sipp_args: Callable[[Server, int, int], list[str]], tag: str,
                peers: list[subprocess.Popen[bytes]]) -> list[Step]:
    steps: list[Step] = []
    wait_idle(server, peers)
    for rate in rates:
        calls = int(rate * seconds)
        cpu0, peer0 = server.cpu(), proc_cpu(peers)
        held0 = server.budget.throttled_seconds() if server.budget else 0.0
        ok, failed, retrans, secs, sipp_cpu = run_sipp(
            sipp_args(server, rate, calls), work, f"{tag}-{server.name}-{rate}", 30 + seconds * 3)
        cpu = server.cpu() - cpu0
        peer = proc_cpu(peers) - peer0
        wall = max(secs, 1e-3)
        held = (server.budget.throttled_seconds() - held0) if server.budget else 0.0
        step = Step(rate, calls, ok, failed, retrans, secs, cpu,
                    round(100 * sipp_cpu / wall), round(100 * peer / wall),
                    server.new_log_errors(), round(100 * cpu / wall), round(held, 2))
        steps.append(step)
        budget = (f" of {100 * server.budget.cores:.0f}%, held back {held:.2f} s"
                  if server.budget else "")
        why = sipp_failure_reasons(work / f"{tag}-{server.name}-{rate}.errors") \
            if failed else {}
        print(f"  {tag:8} {server.name:16} offered {rate:5}/s: {step.rate:7.0f}/s "
              f"retrans {retrans:5} ok {ok:6} failed {failed:4} "
              f"{'pass' if step.clean else 'FAIL'}  CPU {step.cpu_per_1000:.3f} s/1000, "
              f"{step.server_cpu:.0f}%{budget}  "
              f"(SIPp UAC {step.sipp_cpu:.0f}%, node+phone {step.peer_cpu:.0f}%)"
              + (f"  LOG ERRORS {len(step.log_errors)}: {step.log_errors[0]}"
                 if step.log_errors else "")
              + (f"  SIPp: {why}" if why else ""),
              flush=True)
        time.sleep(1.0)  # let the servers drain before the next step
        if not step.clean:
            wait_idle(server, peers)
            settle_log(server)
            break
    return steps


def settle_log(server: Server, quiet: float = 3.0, limit: float = 45.0) -> None:
    """After a failed step: until the server has logged no error for ``quiet``
    seconds. Its transactions of that step still time out for up to 30 s
    (Kamailio's fr_timer) after the CPU is idle, and what they log belongs to
    the failed step, not to the next load."""
    deadline = time.monotonic() + limit
    late = 0
    while time.monotonic() < deadline:
        time.sleep(quiet)
        errors = server.new_log_errors()
        if not errors:
            break
        late += len(errors)
    if late:
        print(f"  {server.name}: {late} error lines logged after its failed step "
              "(counted with it)", flush=True)


def register_args(server: Server, rate: int, calls: int) -> list[str]:
    # -nd: a REGISTER that timed out has no dialog to end; without it SIPp sends a
    # BYE on the REGISTER's to-tag for every late 200, a load neither server is for
    return ["-sf", "register.xml", f"{server.host}:{server.port}", "-i", REG_UAC, "-p", "0",
            "-nd",
            "-m", str(calls), "-r", str(rate), "-l", str(max(rate * 4, 1000)),
            "-t", SIPP_TRANSPORT, "-max_socket", "15000"]


def invite_args(server: Server, rate: int, calls: int) -> list[str]:
    return ["-sf", "uac.xml", f"{server.host}:{server.port}", "-i", NODE, "-p", "0",
            "-m", str(calls), "-r", str(rate), "-l", str(max(rate * 4, 1000)),
            "-t", SIPP_TRANSPORT, "-max_socket", "15000"]


def best(steps: list[Step]) -> dict[str, Any]:
    """The highest step with zero failures, and the first failing one."""
    clean = [s for s in steps if s.clean]
    top = clean[-1] if clean else None
    failing = next((s for s in steps if not s.clean), None)
    return {
        "offered": top.offered if top else 0,
        "rate": round(top.rate) if top else 0,
        "failed": top.failed if top else None,
        "retrans": top.retrans if top else None,
        "cpu_per_1000": round(top.cpu_per_1000, 4) if top else None,
        "first_failing": ({"offered": failing.offered, "rate": round(failing.rate),
                           "failed": failing.failed, "retrans": failing.retrans,
                           "cpu_per_1000": round(failing.cpu_per_1000, 4),
                           "log_errors": list(failing.log_errors[:3])}
                          if failing else None),
        "failed_at_lowest_step": bool(steps) and not steps[0].clean,
        "steps": [{**asdict(s), "rate": round(s.rate)} for s in steps],
    }


def sip_load(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("sipp") is None:
        return {"error": "sipp not installed"}
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if "kamailio" in names and shutil.which("kamailio") is None \
            and not Path("/usr/sbin/kamailio").exists():
        print("kamailio not installed (apt-get install -y kamailio): ours only")
        names.remove("kamailio")
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    (work / "register.xml").write_text(REGISTER_XML)
    (work / "uac.xml").write_text(UAC_XML)
    (work / "node.xml").write_text(NODE_XML)
    (work / "phone.xml").write_text(UAS_XML)
    nport, uport = free_port(NODE), free_port(PHONE)
    node = subprocess.Popen(["sipp", "-sf", "node.xml", "-i", NODE, "-p", str(nport),
                             *SIPP_TUNING], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uas = subprocess.Popen(["sipp", "-sf", "phone.xml", "-i", PHONE, "-p", str(uport),
                            *SIPP_TUNING], cwd=work, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    servers: list[Server] = []
    if "ours" in names:
        servers.append(OurProxy(OURS, free_port(OURS)))
    if args.baseline_root:
        servers.append(OurProxyBefore(BEFORE, free_port(BEFORE),
                                      Path(args.baseline_root).resolve()))
    if "kamailio" in names:
        servers.append(Kamailio(KAMAILIO, free_port(KAMAILIO)))
    out: dict[str, Any] = {s.name: {"register": [], "invite": [], "memory_mb": []}
                           for s in servers}
    try:
        for s in servers:
            s.start(work, nport)
        for s in servers:
            wait_ready(s)
            register_contact(s, (PHONE, uport))
        reg_rates = [int(r) for r in args.register_rates.split(",")]
        call_rates = [int(r) for r in args.call_rates.split(",")]
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for s in servers:
                steps = step_search(s, reg_rates, args.step_seconds, work, register_args,
                                    f"reg{run}", [node])
                out[s.name]["register"].append(best(steps))
            for s in servers:
                wait_ready(s, 30)  # a server may still drain the failed top REGISTER step
                register_contact(s, (PHONE, uport))
                steps = step_search(s, call_rates, args.step_seconds, work, invite_args,
                                    f"inv{run}", [uas])
                out[s.name]["invite"].append(best(steps))
                out[s.name]["memory_mb"].append(round(s.memory_mb(), 1))
    finally:
        for s in servers:
            s.stop()
        for p in (node, uas):
            p.terminate()
            p.wait(5)
    return out


def summarise(load: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Markdown table (medians of the runs) and the RESULT fields."""
    rows = ["| load | server | max zero-failure offered /s | rate /s (SIPp ok / s) | failed "
            "| retrans | CPU s per 1,000 | memory PSS MB | first failing step |",
            "|---|---|---|---|---|---|---|---|---|"]
    result: dict[str, Any] = {}
    for kind in ("register", "invite"):
        meds: dict[str, dict[str, float]] = {}
        for name, data in load.items():
            runs = data[kind]
            if not runs:
                continue
            cpu = [r["cpu_per_1000"] for r in runs if r["cpu_per_1000"] is not None]
            fails = [r["first_failing"] for r in runs if r["first_failing"]]
            med = {"offered": statistics.median(r["offered"] for r in runs),
                   "rate": statistics.median(r["rate"] for r in runs),
                   "cpu": statistics.median(cpu) if cpu else float("nan"),
                   "failed": sum(r["failed"] or 0 for r in runs),
                   "retrans": statistics.median(r["retrans"] or 0 for r in runs),
                   "memory": statistics.median(data["memory_mb"]) if data["memory_mb"] else 0}
            meds[name] = med
            first = ", ".join(f"{f['offered']}/s: {f['rate']}/s, {f['failed']} failed, "
                              f"{f['retrans']} retrans"
                              + (f", log: {f['log_errors'][0]}" if f.get("log_errors") else "")
                              for f in fails) or "none up to the top step"
            med["broken"] = float(any(r.get("failed_at_lowest_step") for r in runs))
            rows.append(f"| {kind} | {name} | {med['offered']:.0f} | {med['rate']:.0f} | "
                        f"{med['failed']} | {med['retrans']:.0f} | {med['cpu']:.3f} | "
                        f"{med['memory']:.1f} | {first} |")
            key = {"sip-proxy": "ours", "sip-proxy-before": "before"}.get(name, name)
            by_rate: dict[int, list[float]] = {}
            for r in runs:
                for st in r["steps"]:
                    by_rate.setdefault(st["offered"], []).append(
                        1000.0 * st["cpu_s"] / max(st["ok"], 1))
            cpu_at = {rate: round(statistics.median(v), 4) for rate, v in sorted(by_rate.items())}
            rows.append(f"| {kind} | {name}: CPU s per 1,000 by offered rate | "
                        + ", ".join(f"{rate}/s: {v:.3f}" for rate, v in cpu_at.items())
                        + " | | | | | | |")
            result[f"{kind}_{key}"] = {"cpu_s_per_1000_by_offered_rate": cpu_at,
                                       "max_zero_failure_offered": med["offered"],
                                       "rate": med["rate"], "failed": med["failed"],
                                       "retrans": med["retrans"],
                                       "cpu_s_per_1000": round(med["cpu"], 4),
                                       "runs": [{k: v for k, v in r.items() if k != "steps"}
                                                for r in data[kind]]}
        broken = [n for n in ("sip-proxy", "kamailio") if meds.get(n, {}).get("broken")]
        if broken:
            rows.append(f"| {kind} | no ratio ours/Kamailio | | {', '.join(broken)} failed at "
                        "the lowest step: the set-up is wrong, not a result | | | | | |")
        elif "sip-proxy" in meds and "kamailio" in meds:
            o, k = meds["sip-proxy"], meds["kamailio"]
            cpu_ratio = o["cpu"] / k["cpu"] if k["cpu"] else float("nan")
            rate_ratio = o["rate"] / k["rate"] if k["rate"] else float("nan")
            rows.append(f"| {kind} | ratio ours/Kamailio | | {rate_ratio:.2f} | | | "
                        f"{cpu_ratio:.2f} | | |")
            result[f"{kind}_cpu_ratio_ours_over_kamailio"] = round(cpu_ratio, 2)
            result[f"{kind}_rate_ratio_ours_over_kamailio"] = round(rate_ratio, 2)
        if "sip-proxy" in meds and "sip-proxy-before" in meds:
            o, b = meds["sip-proxy"], meds["sip-proxy-before"]
            cpu_ratio = o["cpu"] / b["cpu"] if b["cpu"] else float("nan")
            rows.append(f"| {kind} | ratio ours/before | | "
                        f"{o['rate'] / b['rate'] if b['rate'] else float('nan'):.2f} | | | "
                        f"{cpu_ratio:.2f} | | |")
            result[f"{kind}_cpu_ratio_ours_over_before"] = round(cpu_ratio, 2)
    return rows, result


# --------------------------------------------------------------------------- binding store


def fill(store: BindingStore, n: int, origin: str) -> None:
    now = time.time()
    for i in range(n):
        store.apply(Binding(f"{100000 + i}@cluster.lab",
                            f"sip:{100000 + i}@10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:5060",
                            now + 3600, now, origin, "UDP", f"192.0.2.{i & 255}:{1024 + i % 60000}",
                            (), None, None, "Bench/1.0", None))


def memory_per_binding(n: int) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = BindingStore()
    fill(store, n, "P1")
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(store) == n
    return (after - before) / n


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


async def catch_up(n: int) -> float:
    src = BindingStore()
    fill(src, n, "P1")
    p1 = Replicator("P1", "127.0.1.151", 0, src, [], log=_Log())
    await p1.start()
    dst = BindingStore()
    p2 = Replicator("P2", "127.0.1.152", 0, dst,
                    [PeerAddress("P1", "127.0.1.151", p1.port)], log=_Log())
    p1.peers = {"P2": PeerAddress("P2", "127.0.1.152", 0)}
    t0 = time.perf_counter()
    await p2.start()
    await asyncio.wait_for(p2.wait_synced(), 60)
    took = time.perf_counter() - t0
    assert len(dst) == n, len(dst)
    await p2.close()
    await p1.close()
    return took


def use_subnet(prefix: str) -> None:
    """Put every address of the benchmark in ``prefix``.0/24 (same last octets)."""
    global OURS, KAMAILIO, BEFORE, NODE, PHONE, REG_UAC
    OURS, KAMAILIO, BEFORE = f"{prefix}.151", f"{prefix}.152", f"{prefix}.153"
    NODE, PHONE, REG_UAC = f"{prefix}.141", f"{prefix}.161", f"{prefix}.171"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--register-rates", default="500,1000,2000,3000,4000")
    ap.add_argument("--call-rates", default="250,500,1000,1500,2000")
    ap.add_argument("--step-seconds", type=float, default=3.0)
    ap.add_argument("--servers", default="ours,kamailio", help="ours, kamailio or both")
    ap.add_argument("--baseline-root", default=None,
                    help="also run the sip-proxy from this source tree (before/after)")
    ap.add_argument("--subnet", default="127.0.1",
                    help="the /24 on loopback the servers and SIPp use (default: DC1's)")
    ap.add_argument("--bindings", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-store", action="store_true",
                    help="skip memory per binding and catch-up")
    ap.add_argument("--skip-sipp", action="store_true")
    ap.add_argument("--kamailio-allocator", choices=KAMAILIO_ALLOCATORS,
                    default=KAMAILIO_ALLOCATORS[0],
                    help="Kamailio's memory manager (-x/-X); qm only to reproduce older figures")
    ap.add_argument("--workers", type=int, default=1,
                    help="sip-proxy workers = N and Kamailio children = N (-n N)")
    ap.add_argument("--kamailio-children", type=int, default=None, metavar="M",
                    help="Kamailio's UDP children (-n M) instead of --workers, e.g. its "
                         "usual 8 on the budget of --workers N")
    ap.add_argument("--replication-batch-ms", type=float, default=None, metavar="MS",
                    help="the sip-proxy's --replication-batch-ms (how often a worker sends "
                         "its siblings the bindings it stored); default its own")
    ap.add_argument("--cpu-per-worker", type=float, default=None, metavar="F",
                    help="each server's CPU budget: workers x F cores (cgroup quota; root)")
    ap.add_argument("--sipp-transport", choices=("u1", "un"), default=None,
                    help="SIPp's UDP sockets: one (u1) or one per call (un); default u1, "
                         "un with --workers > 1")
    args = ap.parse_args()
    use_subnet(args.subnet)
    global WORKERS, SIPP_TRANSPORT, CPU_PER_WORKER, KAMAILIO_ALLOCATOR, KAMAILIO_CHILDREN
    global REPLICATION_BATCH_MS
    REPLICATION_BATCH_MS = args.replication_batch_ms
    WORKERS = args.workers
    if args.kamailio_children is not None and args.kamailio_children < 1:
        ap.error("--kamailio-children must be at least 1")
    KAMAILIO_CHILDREN = args.kamailio_children
    KAMAILIO_ALLOCATOR = args.kamailio_allocator
    if args.cpu_per_worker is not None and not 0 < args.cpu_per_worker <= os.cpu_count():
        ap.error("--cpu-per-worker must be above 0 and at most the host's cores")
    CPU_PER_WORKER = args.cpu_per_worker
    SIPP_TRANSPORT = args.sipp_transport or ("un" if args.workers > 1 else "u1")
    result: dict[str, Any] = {}
    if not args.skip_store:
        mem = statistics.median(memory_per_binding(args.bindings) for _ in range(args.runs))
        print(f"memory per binding at {args.bindings}: {mem:.0f} B (target <= 2048)")
        result["bytes_per_binding"] = round(mem)
        times = [asyncio.run(catch_up(args.bindings)) for _ in range(args.runs)]
        print(f"catch-up of {args.bindings} bindings: median {statistics.median(times):.2f} s "
              f"(runs {[round(t, 2) for t in times]}; target < 10 s)")
        result["catch_up_seconds"] = round(statistics.median(times), 3)
    if not args.skip_sipp:
        load = sip_load(args)
        if "error" in load:
            print(load["error"])
            result["sipp_error"] = load["error"]
        else:
            rows, fields = summarise(load)
            print()
            children = KAMAILIO_CHILDREN or WORKERS
            print(f"Median of {args.runs} runs; steps of {args.step_seconds:g} s; sip-proxy "
                  f"workers={WORKERS}, Kamailio children={children} (-n {children}); SIPp "
                  f"-t {SIPP_TRANSPORT}; "
                  + (f"each server's CPU budget {WORKERS} x {CPU_PER_WORKER:g} cores; "
                     if CPU_PER_WORKER else "")
                  + "REGISTER relayed to the same SIPp node "
                  "with Path and saved from the node's 200, as the sip-proxy does.")
            print()
            print("\n".join(rows))
            print()
            result.update(fields)
    result["workers"] = WORKERS
    result["kamailio_children"] = KAMAILIO_CHILDREN or WORKERS
    result["replication_batch_ms"] = REPLICATION_BATCH_MS
    result["cpu_per_worker"] = CPU_PER_WORKER
    result["sipp_transport"] = SIPP_TRANSPORT
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
