"""Where each server's CPU goes: the kernel against its own code, under one SIPp load.

    .venv/bin/python bench/bench_cpu_split.py [--load register|invite|both]
        [--register-rate 1000] [--call-rate 460] [--seconds 8] [--runs 3]
        [--workers N] [--sipp-transport u1|un] [--subnet 127.0.253] [--keep DIR]

The sip-proxy and Kamailio (``bench/bench_proxy.py``'s configuration: one UDP
worker each, or ``--workers N`` sip-proxy workers and Kamailio ``-n N``; SIPp
on one socket, or one per call with ``--sipp-transport un``, the default for
N > 1, as in bench_proxy.py), Kamailio on the allocator of ``--kamailio-allocator``, TLSF by
default) take the same SIPp load one after the other, each recorded with
``perf record -F 999 -g`` (software cpu-clock samples: this needs no hardware
counters, which a virtual machine often lacks). The table gives each server's
CPU per 1,000 transactions (user+system from /proc, as bench_proxy.py counts
it), the share of its samples in the kernel and in each of its own objects
(``perf report --sort dso``), and the kernel's and the user part's seconds per
1,000 from those shares: medians of ``--runs`` runs, the servers alternated.
A step with a failed or retransmitted transaction or a logged error is
reported and left out of the median. ``--keep DIR`` keeps the perf files
(``perf report -i DIR/SERVER-LOAD-RUN.data``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_proxy as bp  # noqa: E402

#: perf's sampling frequency (Hz): enough samples in a few seconds, little overhead
FREQUENCY = 999


def dso_shares(data: Path) -> list[tuple[str, float]]:
    """(object, % of samples) from ``perf report --sort dso``, largest first."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso",
                          "--stdio", "-g", "none"], capture_output=True, text=True, timeout=120)
    shares = []
    for line in out.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if m:
            shares.append((m.group(2), float(m.group(1))))
    return shares


def measure(server: bp.Server, kind: str, rate: int, seconds: int, work: Path,
            keep: Path, run: int) -> dict[str, Any]:
    """One SIPp step against ``server`` under perf record; its figures."""
    pids = ",".join(str(p.pid) for p in server.processes())
    data = keep / f"{server.name}-{kind}-{run}.data"
    perf = subprocess.Popen(["perf", "record", "-F", str(FREQUENCY), "-g", "-o", str(data),
                             "-p", pids], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # perf attached before the load starts
    if perf.poll() is not None:
        raise SystemExit(f"perf record did not start: {perf.stderr.read().decode()[-500:]}"
                         if perf.stderr else "perf record did not start")
    cpu0 = server.cpu()
    args = (bp.register_args if kind == "register" else bp.invite_args)(
        server, rate, rate * seconds)
    ok, failed, retrans, _, _ = bp.run_sipp(args, work, f"split-{server.name}-{kind}-{run}",
                                            60 + seconds * 3)
    cpu = server.cpu() - cpu0
    perf.send_signal(signal.SIGINT)
    perf.wait(60)
    shares = dso_shares(data)
    kernel = sum(share for name, share in shares if name.startswith("[kernel"))
    per_1000 = 1000 * cpu / max(ok, 1)
    errors = server.new_log_errors()
    return {"server": server.name, "load": kind, "run": run, "rate": rate, "ok": ok,
            "failed": failed,
            "retrans": retrans, "log_errors": len(errors),
            "clean": failed == 0 and retrans == 0 and not errors,
            "cpu_s_per_1000": round(per_1000, 3), "kernel_pct": round(kernel, 1),
            "kernel_s_per_1000": round(per_1000 * kernel / 100, 3),
            "user_s_per_1000": round(per_1000 * (100 - kernel) / 100, 3),
            "objects": [(name, share) for name, share in shares[:8]], "perf_data": str(data)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", choices=("register", "invite", "both"), default="both")
    ap.add_argument("--register-rate", type=int, default=1000)
    ap.add_argument("--call-rate", type=int, default=460)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1,
                    help="sip-proxy workers = N and Kamailio -n N (all processes recorded)")
    ap.add_argument("--sipp-transport", choices=("u1", "un"), default=None,
                    help="SIPp's UDP sockets: one (u1) or one per call (un); default u1, "
                         "un with --workers > 1")
    ap.add_argument("--subnet", default="127.0.253")
    ap.add_argument("--kamailio-allocator", choices=bp.KAMAILIO_ALLOCATORS,
                    default=bp.KAMAILIO_ALLOCATORS[0])
    ap.add_argument("--keep", type=Path, default=None,
                    help="directory for the perf files (default: a temporary one, removed)")
    args = ap.parse_args()
    for tool in ("perf", "sipp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make bench-tools)")
    if shutil.which("kamailio") is None and not Path("/usr/sbin/kamailio").exists():
        raise SystemExit("kamailio is not installed (make bench-tools)")
    bp.use_subnet(args.subnet)
    bp.KAMAILIO_ALLOCATOR = args.kamailio_allocator
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    bp.WORKERS = args.workers
    bp.SIPP_TRANSPORT = args.sipp_transport or ("un" if args.workers > 1 else "u1")
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-split-"))
    keep = args.keep or work
    keep.mkdir(parents=True, exist_ok=True)
    (work / "register.xml").write_text(bp.REGISTER_XML)
    (work / "uac.xml").write_text(bp.UAC_XML)
    (work / "node.xml").write_text(bp.NODE_XML)
    (work / "phone.xml").write_text(bp.UAS_XML)
    nport, uport = bp.free_port(bp.NODE), bp.free_port(bp.PHONE)
    peers = [subprocess.Popen(["sipp", "-sf", xml, "-i", host, "-p", str(port),
                               *bp.SIPP_TUNING], cwd=work, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
             for xml, host, port in (("node.xml", bp.NODE, nport),
                                     ("phone.xml", bp.PHONE, uport))]
    servers: list[bp.Server] = [bp.OurProxy(bp.OURS, bp.free_port(bp.OURS)),
                                bp.Kamailio(bp.KAMAILIO, bp.free_port(bp.KAMAILIO))]
    loads = [("register", args.register_rate), ("invite", args.call_rate)]
    if args.load != "both":
        loads = [load for load in loads if load[0] == args.load]
    rows: list[dict[str, Any]] = []
    try:
        for s in servers:
            s.start(work, nport)
        for s in servers:
            bp.wait_ready(s, 30)
            bp.register_contact(s, (bp.PHONE, uport))
        for run, (kind, rate), s in ((run, load, s) for run in range(1, args.runs + 1)
                                     for load in loads for s in servers):
            row = measure(s, kind, rate, args.seconds, work, keep, run)
            rows.append(row)
            print(f"run {run} {kind:8} {s.name:10} {rate}/s: ok {row['ok']} failed "
                  f"{row['failed']} retrans {row['retrans']} log errors {row['log_errors']}; "
                  f"CPU {row['cpu_s_per_1000']:.3f} s/1000, kernel {row['kernel_pct']:.1f} %",
                  flush=True)
            time.sleep(2.0)
    finally:
        for s in servers:
            s.stop()
        for p in peers:
            p.terminate()
            p.wait(5)
    print()
    print(f"Medians of the clean runs of {args.runs}; the objects of the median run by CPU.")
    print()
    print("| load | server | clean runs | CPU s / 1,000 | kernel | kernel s / 1,000 "
          "| user s / 1,000 | largest objects (% of samples) |")
    print("|---|---|---|---|---|---|---|---|")
    medians: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, rate in loads:
        for s in servers:
            mine = [r for r in rows if r["load"] == kind and r["server"] == s.name]
            clean = sorted((r for r in mine if r["clean"]), key=lambda r: r["cpu_s_per_1000"])
            if not clean:
                print(f"| {kind} at {rate}/s | {s.name} | 0 of {len(mine)} | | | | | |")
                continue
            med = {key: statistics.median(r[key] for r in clean)
                   for key in ("cpu_s_per_1000", "kernel_pct", "kernel_s_per_1000",
                               "user_s_per_1000")}
            medians[(kind, s.name)] = med
            middle = clean[len(clean) // 2]
            objects = ", ".join(f"{Path(n).name.split('.cpython')[0]} {p:.1f}"
                                for n, p in middle["objects"][:5])
            print(f"| {kind} at {rate}/s | {s.name} | {len(clean)} of {len(mine)} | "
                  f"{med['cpu_s_per_1000']:.3f} | {med['kernel_pct']:.1f} % | "
                  f"{med['kernel_s_per_1000']:.3f} | {med['user_s_per_1000']:.3f} | "
                  f"{objects} |")
    for kind, _ in loads:
        ours, kam = medians.get((kind, "sip-proxy")), medians.get((kind, "kamailio"))
        if ours and kam:
            print(f"{kind}: ours/Kamailio kernel "
                  f"{ours['kernel_s_per_1000'] / max(kam['kernel_s_per_1000'], 1e-9):.2f}, "
                  f"user {ours['user_s_per_1000'] / max(kam['user_s_per_1000'], 1e-9):.2f}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps({
        "rows": rows, "runs": args.runs, "workers": args.workers,
        "sipp_transport": bp.SIPP_TRANSPORT,
        "medians": {kind: {server: med for (k, server), med in medians.items() if k == kind}
                    for kind, _ in loads}}))
    return 0 if len(medians) == len(loads) * len(servers) else 1


if __name__ == "__main__":
    sys.exit(main())
