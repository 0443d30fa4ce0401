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

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_call_load as load

HERE = Path(__file__).resolve().parent / "prack"
NET = "127.0.246."
HOSTS = {"node": NET + "11", "plain": NET + "101", "reliable": NET + "102",
         "caller": NET + "200"}
FLOWS = {"plain": ("3001", None), "100rel": ("3002", HERE / "uac_100rel.xml")}


def cluster(path: Path, ports: dict[str, int]) -> Path:
    path.write_text(load.node_cluster("bench", HOSTS["node"], ports, {
        "3001": f"sip:3001@{HOSTS['plain']}:{ports['plain']}",
        "3002": f"sip:3002@{HOSTS['reliable']}:{ports['reliable']}"}))
    return path


def main() -> int:
    args = load.load_arguments(__doc__, calls=300, rate=50)
    sipp = load.find_sipp()
    if sipp is None:
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-prack-"))
    ports = {"plain": load.free_port(HOSTS["plain"]),
             "reliable": load.free_port(HOSTS["reliable"])}
    for key in ("sip", "default", "http", "tc"):
        ports[key] = load.free_port(HOSTS["node"])  # tc: named in the file, not started
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
        node = load.start("sip-server", config, "SIPS_bench",
                          f"http://{HOSTS['node']}:{ports['http']}/healthz",
                          tmp / "node.log")
        ps = psutil.Process(node.pid)
        run_no = 0
        for _ in range(args.runs):
            for flow in FLOWS:
                run_no += 1
                before = load.cpu(ps)
                dn, scenario = FLOWS[flow]
                scen = ["-sn", "uac"] if scenario is None else [
                    "-sf", str(scenario), "-set", "caller", "+15550100", "-set", "domain",
                    "bench.test"]
                row = load.run_sipp(sipp, f"{HOSTS['node']}:{ports['sip']}", scen, dn,
                                    HOSTS["caller"], args.calls, args.rate,
                                    tmp / f"run-{run_no}-{flow}")
                ok, figures = load.call_figures(row)
                results[flow].append({
                    **figures,
                    "node_cpu_per_1000": (load.cpu(ps) - before) * 1000 / max(ok, 1),
                })
    finally:
        if node is not None:
            load.stop([node])
        for phone in phones:
            phone.kill()
    summary = load.summarize(args.calls, args.rate, results)
    summary["node_cpu_ratio_100rel_over_plain"] = load.cpu_ratio(summary, "100rel")
    for flow in FLOWS:
        print(load.flow_line(flow, summary[flow]))
    print(f"node CPU per call with 100rel / without: "
          f"{summary['node_cpu_ratio_100rel_over_plain']}")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
