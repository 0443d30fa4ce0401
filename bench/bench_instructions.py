"""Instructions per proxied transaction, counted by callgrind: a CPU figure
that a shared or loaded host does not blur.

    .venv/bin/python bench/bench_instructions.py [--baseline-rev REV] [--runs 3]
        [--registers 300] [--calls 100] [--subnet 127.0.230] [--kamailio]

The sip-proxy runs under ``valgrind --tool=callgrind`` with the same cluster
file and SIPp peers as ``bench/bench_proxy.py`` (a SIPp node answering
REGISTER and OPTIONS, a registered SIPp phone answering INVITE). After a
warm-up, the counters are zeroed (``callgrind_control --zero``), SIPp sends
``--registers`` REGISTERs (then ``--calls`` INVITE/180/200/ACK/BYE dialogs)
at a low rate, and the counters are dumped (``callgrind_control --dump``): the
instructions of the whole proxy process (event loop, parsing, transactions,
logging and timers included) divided by the transactions SIPp completed. The
rate is low on purpose, so that no retransmission or overload path is
counted; a run in which SIPp saw a failure or a retransmission, or the
proxy logged an error, is reported and left out of the median. The idle work
of each second (timers, the OPTIONS probe of the node) is counted too and
shared over the transactions of that second, so figures taken at different
``--rate`` values do not compare; ours and before in one run always share it.

``--baseline-root DIR`` takes an already exported and compiled tree instead.
``--baseline-rev REV`` measures the sip-proxy of git revision ``REV`` the same
way in the same run (its sources exported with ``git archive`` and compiled
with mypyc as ``setup.py`` does there: the SIP stack, and the sip-proxy's core
where that revision compiles it) and prints
ours/before side by side.

``--kamailio`` counts Kamailio the same way in the same run: the
``bench/bench_proxy.py`` configuration and options (``-m 1024 -M 32 -n 1``,
the allocator of ``--kamailio-allocator``, TLSF by default),
under callgrind with ``--trace-children=yes``. Kamailio is several processes
(the UDP receiver, timers, the main process); each is zeroed and dumped, and
its figure is the sum over all of them, so its idle work is counted as ours
is. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_proxy as bp  # noqa: E402

#: callgrind makes the proxy ~50x slower: SIPp waits this long for answers
SIPP_TIMEOUT = 300.0


def export_rev(rev: str, dest: Path) -> Path:
    """The sources of ``rev`` in ``dest``, compiled with mypyc as its setup.py says."""
    archive = subprocess.run(["git", "archive", rev, "daemons", "protocols", "setup.py",
                              "pyproject.toml"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=dest,
                   check=True, capture_output=True)
    return dest


def _total(out_file: Path) -> int:
    """The event total of a callgrind dump (its ``totals:`` or ``summary:`` line)."""
    text = out_file.read_text(errors="replace")
    m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"no totals in {out_file}")
    return int(m.group(1))


def _control(pid: int, command: str) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], check=True,
                   capture_output=True, timeout=120)


def dump_pid(prefix: Path, pid: int, proc: subprocess.Popen[bytes] | None) -> int:
    """Dump the counters of process ``pid`` since its last zero; their instruction total.

    Only numbered dumps (``PREFIX.PID.N``) are read: callgrind writes ``PREFIX.PID``
    when the process ends, and that file counts the whole run."""
    before = set(prefix.parent.glob(f"{prefix.name}.{pid}.*"))
    _control(pid, "--dump")
    deadline = time.monotonic() + 60
    while True:
        new = set(prefix.parent.glob(f"{prefix.name}.{pid}.*")) - before
        if new:
            time.sleep(0.5)  # the file is complete once callgrind_control returned
            return _total(max(new, key=lambda p: p.stat().st_mtime))
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited ({proc.returncode}) while {pid} was dumped")
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no dump for process {pid}")
        time.sleep(0.2)


class CallgrindProxy(bp.Server):
    """The sip-proxy of one source tree under callgrind."""

    def __init__(self, name: str, host: str, port: int, root: Path) -> None:
        super().__init__(host, port)
        self.name = name
        self.root = root
        self.out_prefix: Path | None = None

    #: ``--dump-instr``: per-instruction counts in the dumps (callgrind_annotate --auto=yes)
    dump_instr = "no"

    def start(self, work: Path, node_port: int) -> None:
        config = work / f"cluster-{self.name}.toml"
        bp.write_cluster(config, self.port, node_port, self.host)
        self.out_prefix = work / f"callgrind-{self.name}"
        self.log_path = work / f"{self.name}.log"
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out_prefix}.%p",
             f"--dump-instr={self.dump_instr}", "--compress-strings=no", sys.executable,
             "-m", "daemons.cli", "sip-proxy", "--config", str(config), "--name", "SPX_1",
             "--rate-limit", "0", "--log-level", "error", "--log-format", "json"],
            env=env, cwd=self.root, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)

    def zero(self) -> None:
        assert self.proc is not None
        _control(self.proc.pid, "--zero")

    def dump(self) -> int:
        """Dump the counters since the last zero; their instruction total."""
        assert self.proc is not None and self.out_prefix is not None
        return dump_pid(self.out_prefix, self.proc.pid, self.proc)


class CallgrindKamailio(bp.Kamailio):
    """Kamailio under callgrind: every process of it counted."""

    dump_instr = "no"

    def __init__(self, name: str, host: str, port: int) -> None:
        super().__init__(host, port)
        self.name = name
        self.out_prefix: Path | None = None

    def start(self, work: Path, node_port: int) -> None:
        kam = shutil.which("kamailio") or "/usr/sbin/kamailio"
        self.out_prefix = work / f"callgrind-{self.name}"
        self.log_path = work / f"{self.name}.log"
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--trace-children=yes",
             f"--callgrind-out-file={self.out_prefix}.%p", f"--dump-instr={self.dump_instr}",
             "--compress-strings=no", kam, "-DD", "-E", *bp.kamailio_memory_args(), "-n", "1",
             "-f", str(bp.KAMAILIO_CFG), "-l", f"udp:{self.host}:{self.port}", "-Y", str(work),
             "-A", "REGISTRAR_FRONT", "-A", f'NODE="sip:{bp.NODE}:{node_port}"'],
            cwd=work, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"))

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes()]

    def zero(self) -> None:
        for pid in self.pids():
            _control(pid, "--zero")

    def dump(self) -> int:
        """Dump every process's counters since the last zero; the sum of their totals."""
        assert self.out_prefix is not None
        return sum(dump_pid(self.out_prefix, pid, self.proc) for pid in self.pids())


def measure(server: CallgrindProxy | CallgrindKamailio, work: Path, kind: str, count: int,
            rate: int, args: Any) -> dict[str, Any]:
    sipp_args = bp.register_args if kind == "register" else bp.invite_args
    # warm-up: imports, caches and the first-time paths out of the count
    bp.run_sipp(sipp_args(server, rate, max(count // 5, 20)), work,
                f"warm-{kind}-{server.name}", SIPP_TIMEOUT)
    time.sleep(2.0)
    server.zero()
    ok, failed, retrans, _secs, _cpu = bp.run_sipp(
        sipp_args(server, rate, count), work, f"{kind}-{server.name}", SIPP_TIMEOUT)
    time.sleep(1.0)  # the last answers' timers and log lines inside the window
    total = server.dump()
    errors = server.new_log_errors()
    return {"ok": ok, "failed": failed, "retrans": retrans, "instructions": total,
            "per_transaction": round(total / max(ok, 1)),
            # a retransmission is work the other side of the comparison may not have had
            "clean": failed == 0 and retrans == 0 and ok == count and not errors,
            "log_errors": list(errors[:3])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    for tool in ("valgrind", "callgrind_control", "sipp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind sip-tester)")
    bp.use_subnet(args.subnet)
    work = Path(tempfile.mkdtemp(prefix="bench-instr-"))
    (work / "register.xml").write_text(bp.REGISTER_XML)
    (work / "uac.xml").write_text(bp.UAC_XML)
    (work / "node.xml").write_text(bp.NODE_XML)
    (work / "phone.xml").write_text(bp.UAS_XML)
    trees: list[tuple[str, Path | None]] = [("ours", ROOT)]
    if args.baseline_root:
        trees.append(("before", Path(args.baseline_root).resolve()))
    elif args.baseline_rev:
        before = work / "before"
        before.mkdir()
        print(f"exporting and compiling {args.baseline_rev} ...", flush=True)
        trees.append(("before", export_rev(args.baseline_rev, before)))
    if args.kamailio:
        if shutil.which("kamailio") is None and not Path("/usr/sbin/kamailio").exists():
            raise SystemExit("kamailio is not installed (apt-get install kamailio)")
        trees.append(("kamailio", None))
    nport, uport = bp.free_port(bp.NODE), bp.free_port(bp.PHONE)
    node = subprocess.Popen(["sipp", "-sf", "node.xml", "-i", bp.NODE, "-p", str(nport),
                             *bp.SIPP_TUNING], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    phone = subprocess.Popen(["sipp", "-sf", "phone.xml", "-i", bp.PHONE, "-p", str(uport),
                              *bp.SIPP_TUNING], cwd=work, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    hosts = {"ours": bp.OURS, "before": bp.BEFORE, "kamailio": bp.KAMAILIO}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"register": [], "invite": []} for name, _ in trees}
    try:
        for run_no in range(args.runs):
            for name, root in trees:
                port = bp.free_port(hosts[name])
                server: CallgrindProxy | CallgrindKamailio = (
                    CallgrindKamailio(name, hosts[name], port) if root is None
                    else CallgrindProxy(name, hosts[name], port, root))
                server.start(work, nport)
                try:
                    try:
                        bp.wait_ready(server, timeout=180)
                        bp.register_contact(server, (bp.PHONE, uport))
                    except (OSError, RuntimeError) as exc:
                        # a proxy that never got ready under callgrind: a failed run of
                        # both loads, said with the reason, and the next run goes on
                        print(f"run {run_no + 1} {name:6}: NOT READY ({exc!r}); run left out",
                              flush=True)
                        for kind in ("register", "invite"):
                            results[name][kind].append({"clean": False, "per_transaction": 0,
                                                        "not_ready": repr(exc)})
                        continue
                    for kind, count in (("register", args.registers), ("invite", args.calls)):
                        r = measure(server, work, kind, count, args.rate, args)
                        results[name][kind].append(r)
                        print(f"run {run_no + 1} {name:6} {kind:8}: {r['per_transaction']:>9,} "
                              f"instructions per transaction (ok {r['ok']}, failed "
                              f"{r['failed']}, retrans {r['retrans']})"
                              + ("" if r["clean"] else f"  NOT CLEAN (failures, "
                                 f"retransmissions or log errors {r['log_errors']})"),
                              flush=True)
                finally:
                    server.stop()
    finally:
        for p in (node, phone):
            p.terminate()
            p.wait(5)
    summary: dict[str, Any] = {}
    others = [name for name, _ in trees if name != "ours"]
    print()
    print(f"| load | {' | '.join(n for n, _ in trees)} |"
          + "".join(f" ours/{o} |" for o in others))
    print("|---|" + "---|" * (len(trees) + len(others)))
    for kind in ("register", "invite"):
        medians = {}
        for name, _ in trees:
            clean = [r["per_transaction"] for r in results[name][kind] if r["clean"]]
            medians[name] = statistics.median(clean) if clean else None
            summary[f"{kind}_instructions_{name}"] = medians[name]
            summary[f"{kind}_failed_runs_{name}"] = sum(not r["clean"]
                                                       for r in results[name][kind])
        cells = [f"{m:,.0f}" if m else "no clean run" for m in medians.values()]
        ratios = ""
        for other in others:
            if medians["ours"] and medians[other]:
                # ours/before keeps its old key; ours/kamailio is kamailio_ratio
                key = f"{kind}_ratio" if other == "before" else f"{kind}_{other}_ratio"
                summary[key] = round(medians["ours"] / medians[other], 3)
                ratios += f" {summary[key]:.3f} |"
            else:
                ratios += " n/a |"
        label = "REGISTER (relayed to the node)" if kind == "register" \
            else "INVITE dialog (INVITE..BYE)"
        print(f"| {label} | {' | '.join(cells)} |{ratios}")
    print(f"\ncallgrind dumps (one per measured load, in the order run): "
          f"{work}/callgrind-NAME.PID.N; read one with `callgrind_annotate --inclusive=yes "
          f"FILE`")
    summary["dumps"] = str(work)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", default=None,
                    help="also count the sip-proxy of this git revision")
    ap.add_argument("--baseline-root", default=None,
                    help="or count the sip-proxy of this source tree (SIP modules compiled)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--registers", type=int, default=300)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rate", type=int, default=10, help="SIPp calls per second")
    ap.add_argument("--subnet", default="127.0.230")
    ap.add_argument("--kamailio", action="store_true",
                    help="also count Kamailio (-n 1) the same way")
    ap.add_argument("--kamailio-allocator", choices=bp.KAMAILIO_ALLOCATORS,
                    default=bp.KAMAILIO_ALLOCATOR, help="Kamailio's memory manager (-x/-X)")
    ap.add_argument("--dump-instr", action="store_true",
                    help="callgrind's per-instruction counts in the dumps, for a profile")
    args = ap.parse_args()
    CallgrindProxy.dump_instr = "yes" if args.dump_instr else "no"
    CallgrindKamailio.dump_instr = CallgrindProxy.dump_instr
    bp.KAMAILIO_ALLOCATOR = args.kamailio_allocator
    summary = run(args)
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
