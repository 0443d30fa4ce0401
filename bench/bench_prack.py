"""What reliable provisional responses (RFC 3262) cost a node: the same SIPp load
of basic calls with an unreliable 180 and with a reliable 183 + PRACK relayed
end to end, side by side on one node.

plain: SIPp UAC (built-in ``uac``: INVITE, ACK, BYE) -> sip-server -> SIPp UAS
(built-in ``uas``: 180, 200) on DN 3001's fixed contact.
100rel: SIPp UAC requiring 100rel (bench/prack/uac_100rel.xml: PRACK at once)
-> sip-server -> SIPp UAS (bench/prack/uas_reliable_183.xml: reliable 183 with
SDP, 200 PRACK, 200 INVITE) on DN 3002's. Per call the 100rel flow has two
more transactions on each leg (PRACK in, PRACK out) and the node's own RSeq.

Runs alternate between the two; prints per flow the median call rate, SIPp
failed calls and retransmissions, the node's CPU seconds per 1,000 calls
(psutil), and the ratio 100rel / plain. Addresses: 127.0.246.x. Last line:
``RESULT {json}``.

    .venv/bin/python bench/bench_prack.py [--calls 300] [--rate 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_call_load import (
    call_figures,
    cpu,
    free_port,
    medians,
    run_sipp,
    start,
    stop,
)

HERE = Path(__file__).resolve().parent / "prack"
NET = "127.0.246."
HOSTS = {"node": NET + "11", "plain": NET + "101", "reliable": NET + "102",
         "caller": NET + "200"}
FLOWS = {"plain": ("3001", None), "100rel": ("3002", HERE / "uac_100rel.xml")}


def cluster(path: Path, ports: dict[str, int]) -> Path:
    path.write_text(f"""
[switch]
name = "Bench"
domain = "bench.test"

[switch.tserver]
extn-no-answer-timeout = 10
sip-enable-strict-auth = false

[dns.Nodes]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_bench"]

[dns.3001]
type = "Extension"
contact = "sip:3001@{HOSTS['plain']}:{ports['plain']}"

[dns.3002]
type = "Extension"
contact = "sip:3002@{HOSTS['reliable']}:{ports['reliable']}"

[applications.SIPS_bench]
kind = "sip-server"
host = "{HOSTS['node']}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}
http-port = {ports['http']}

[applications.TC_bench]
kind = "t-controller"
host = "{HOSTS['node']}"
sip-server = "SIPS_bench"
tc-port = {ports['tc']}
""")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rate", type=int, default=50, help="offered calls/s")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (apt-get install sip-tester)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-prack-"))
    ports = {"plain": free_port(HOSTS["plain"]), "reliable": free_port(HOSTS["reliable"])}
    for key in ("sip", "default", "http", "tc"):
        ports[key] = free_port(HOSTS["node"])  # tc: named in the file, not started
    config = cluster(tmp / "cluster.toml", ports)
    phones = [
        subprocess.Popen([sipp, "-sn", "uas", "-i", HOSTS["plain"], "-p", str(ports["plain"]),
                          "-nostdin", "-fd", "3600"], cwd=tmp, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([sipp, "-sf", str(HERE / "uas_reliable_183.xml"), "-i",
                          HOSTS["reliable"], "-p", str(ports["reliable"]), "-nostdin",
                          "-fd", "3600"], cwd=tmp, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]
    node: subprocess.Popen[bytes] | None = None
    results: dict[str, list[dict[str, float]]] = {flow: [] for flow in FLOWS}
    try:
        node = start("sip-server", config, "SIPS_bench",
                     f"http://{HOSTS['node']}:{ports['http']}/healthz", tmp / "node.log")
        ps = psutil.Process(node.pid)
        run_no = 0
        for _ in range(args.runs):
            for flow in FLOWS:
                run_no += 1
                before = cpu(ps)
                dn, scenario = FLOWS[flow]
                scen = ["-sn", "uac"] if scenario is None else [
                    "-sf", str(scenario), "-set", "caller", "+15550100", "-set", "domain",
                    "bench.test"]
                row = run_sipp(sipp, f"{HOSTS['node']}:{ports['sip']}", scen, dn,
                               HOSTS["caller"], args.calls, args.rate,
                               tmp / f"run-{run_no}-{flow}")
                ok, figures = call_figures(row)
                results[flow].append({
                    **figures,
                    "node_cpu_per_1000": (cpu(ps) - before) * 1000 / max(ok, 1),
                })
    finally:
        if node is not None:
            stop([node])
        for phone in phones:
            phone.kill()
    summary: dict[str, Any] = {"calls": args.calls, "rate_offered": args.rate,
                               "runs": args.runs}
    for flow, runs in results.items():
        summary[flow] = medians(runs)
    summary["node_cpu_ratio_100rel_over_plain"] = round(
        summary["100rel"]["node_cpu_per_1000"]
        / max(summary["plain"]["node_cpu_per_1000"], 1e-9), 2)
    for flow in FLOWS:
        s = summary[flow]
        print(f"{flow:6} median {s['rate']:.1f} calls/s, failed {s['failed_total']}, "
              f"retransmissions {s['retransmissions']:.0f}, node CPU "
              f"{s['node_cpu_per_1000']:.2f} s / 1000 calls")
    print(f"node CPU per call with 100rel / without: "
          f"{summary['node_cpu_ratio_100rel_over_plain']}")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
