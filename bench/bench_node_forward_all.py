"""What the forward-all look-up costs a node: calls to an extension through a
node without a dial plan and through a node that asks the feature-server
(``reason=all``) before it rings the DN, side by side on the same SIPp load.

SIPp UAC (built-in ``uac``: INVITE, ACK, BYE) -> sip-server -> SIPp UAS (built-in
``uas``, DN 2002's fixed contact). Two nodes run at once, each from its own
cluster file: SIPS_plain (no Dial Plan DN) and SIPS_fs (FS_bench's dial plan,
whose profile has no forward-all for 2002, so every call is asked about and
rings). Runs alternate between them; prints per node the median call rate,
SIPp failed calls and retransmissions, the node's and the feature-server's CPU
seconds per 1,000 calls (psutil), and the ratio with / without. Addresses:
127.0.222.x. Last line: ``RESULT {json}``.

    .venv/bin/python bench/bench_node_forward_all.py [--calls 600] [--rate 100] [--runs 3]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_call_load as load

NET = "127.0.222."
HOSTS = {"plain": NET + "51", "fs": NET + "52", "feature-server": NET + "53",
         "phone": NET + "54", "caller": NET + "55"}


def cluster(path: Path, ports: dict[str, int], node: str, *, dial_plan: bool) -> Path:
    text = load.node_cluster(
        node, HOSTS[node], {"sip": ports[node], "default": ports[node + "_default"],
                            "http": ports[node + "_http"], "tc": ports[node + "_tc"]},
        {"2002": f"sip:2002@{HOSTS['phone']}:{ports['phone']}"})
    if dial_plan:
        text += f"""
[dns.DialPlan]
type = "VoIPService"
service-type = "feature-server"
url = "http://{HOSTS['feature-server']}:{ports['feature_server_http']}/dialplan"

[applications.FS_bench]
kind = "feature-server"
host = "{HOSTS['feature-server']}"
geo-location = "dc1"
http-port = {ports['feature_server_http']}

[applications.FS_bench.options]
state-dir = "{path.parent / 'fs-state'}"
[applications.FS_bench.options.partitions.Basic]
rules = [".=>${{DIGITS}}"]
[applications.FS_bench.options.calling-profiles.System]
partitions = ["Basic"]
forward-busy = "gcti::voicemail"
[applications.FS_bench.options.assignments.switch]
internal = "System"
external = "System"
"""
    path.write_text(text)
    return path


def main() -> int:
    args = load.load_arguments(__doc__, calls=600, rate=100)
    sipp = load.find_sipp()
    if sipp is None:
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-forward-all-"))
    ports = {"plain": load.free_port(HOSTS["plain"]), "fs": load.free_port(HOSTS["fs"]),
             "phone": load.free_port(HOSTS["phone"]),
             "feature_server_http": load.free_port(HOSTS["feature-server"])}
    for node in ("plain", "fs"):
        ports[node + "_default"] = load.free_port(HOSTS[node])
        ports[node + "_http"] = load.free_port(HOSTS[node])
        ports[node + "_tc"] = load.free_port(HOSTS[node])  # named in the file, not started
    plain_cfg = cluster(tmp / "plain.toml", ports, "plain", dial_plan=False)
    fs_cfg = cluster(tmp / "fs.toml", ports, "fs", dial_plan=True)
    phone = subprocess.Popen(
        [sipp, "-sn", "uas", "-i", HOSTS["phone"], "-p", str(ports["phone"]), "-nostdin",
         "-fd", "3600"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[str, list[dict[str, float]]] = {"plain": [], "fs": []}
    try:
        procs["feature-server"] = load.start(
            "feature-server", fs_cfg, "FS_bench",
            f"http://{HOSTS['feature-server']}:{ports['feature_server_http']}/healthz",
            tmp / "fs.log")
        procs["plain"] = load.start("sip-server", plain_cfg, "SIPS_plain",
                                    f"http://{HOSTS['plain']}:{ports['plain_http']}/healthz",
                                    tmp / "plain.log")
        procs["fs"] = load.start("sip-server", fs_cfg, "SIPS_fs",
                                 f"http://{HOSTS['fs']}:{ports['fs_http']}/healthz",
                                 tmp / "fs-node.log")
        ps = {k: psutil.Process(p.pid) for k, p in procs.items()}
        run_no = 0
        for _ in range(args.runs):
            for node in ("plain", "fs"):
                run_no += 1
                before = {k: load.cpu(p) for k, p in ps.items()}
                row = load.run_sipp(sipp, f"{HOSTS[node]}:{ports[node]}", ["-sn", "uac"],
                                    "2002", HOSTS["caller"], args.calls, args.rate,
                                    tmp / f"run-{run_no}-{node}")
                after = {k: load.cpu(p) for k, p in ps.items()}
                ok, figures = load.call_figures(row)
                results[node].append({
                    **figures,
                    "node_cpu_per_1000": (after[node] - before[node]) * 1000 / max(ok, 1),
                    "fs_cpu_per_1000": (after["feature-server"] - before["feature-server"])
                    * 1000 / max(ok, 1),
                })
    finally:
        load.stop(procs.values())
        phone.kill()
    summary = load.summarize(args.calls, args.rate, results)
    summary["node_cpu_ratio_fs_over_plain"] = load.cpu_ratio(summary, "fs")
    for node in ("plain", "fs"):
        print(f"{load.flow_line(node, summary[node])}, feature-server CPU "
              f"{summary[node]['fs_cpu_per_1000']:.2f} s / 1000 calls")
    print(f"node CPU per call with the forward-all look-up / without: "
          f"{summary['node_cpu_ratio_fs_over_plain']}")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
