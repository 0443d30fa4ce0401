"""Per-node cost as the cluster grows: 2, 4 and 8 cluster nodes on loopback.

Each node ``k`` is a real ``sipcluster sip-server`` and the ``t-controller``
beside it at 127.0.159.k, all in one cluster file (one SIP Cluster Node DN,
the t-controllers in one mesh, the shipped lab's mesh options:
``smart-proxy-enabled``, ``tc-reconnect-timeout``, ADDP). Every node carries
the same load, whatever the cluster's size:

* a SIPp phone (127.0.159.(100+k)) registers DN ``30kk`` on its node, with
  digest, and answers calls (SIPp ``uas``);
* a SIPp caller sends ``--rate`` calls/s to that DN through the node (SIPp
  ``uac``: INVITE, ACK, BYE);
* a desktop on the node's own t-controller registers that DN, and a second
  desktop, on the *next* node's t-controller, registers it too: its events
  cross the mesh. Each desktop counts the call's events (ringing,
  established, released: 3 per call).

All callers run at once. The figures per cluster size, median of ``--runs``:
CPU seconds per 1,000 calls of each node's sip-server and t-controller
(psutil, over the load window), their mean and worst node, calls failed,
events missing at the desktops, and the per-node cost at each size over that
of the smallest size (flat = 1.00). The last line is ``RESULT {json}``.

    .venv/bin/python bench/bench_cluster_scale.py [--sizes 2,4,8] [--rate 20]
        [--seconds 20] [--runs 3]

A cluster node never talks SIP to another node; what grows with the cluster is
the mesh (each t-controller keeps a link, ADDP and DN ownership with every
other) and the cross-node event stream, so a per-node cost that stays flat
from 4 to 8 nodes says that adding nodes adds capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import node_call_load as load  # noqa: E402

from daemons.runtime.logs import configure_logging  # noqa: E402
from daemons.runtime.tlib_client import TLibClient  # noqa: E402

SUBNET = "127.0.159"
SCENARIOS = ROOT / "tests" / "interop" / "scenarios"
PORTS = {"sip": 5070, "default": 7000, "ip": 7001, "http": 9096,
         "tc": 7002, "sp": 7003, "tc_http": 9097}
EVENTS_PER_CALL = 3  # EventRinging, EventEstablished, EventReleased on the called DN


def node_host(k: int) -> str:
    return f"{SUBNET}.{k}"


def phone_host(k: int) -> str:
    return f"{SUBNET}.{100 + k}"


def dn_of(k: int) -> str:
    return f"30{k:02d}"


def write_cluster(path: Path, size: int) -> None:
    nodes = [f"SIPS_{k}" for k in range(1, size + 1)]
    text = f"""
[switch]
name = "Bench"
domain = "bench.test"

[switch.tserver]
extn-no-answer-timeout = 10
sip-enable-strict-auth = true

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = {json.dumps(nodes)}
dn-owner-applications = ["Cluster"]
agent-state-auto-restore = true
tc-reconnect-timeout = 10
addp-timeout = 7
addp-remote-timeout = 11
smart-proxy-enabled = true
"""
    for k in range(1, size + 1):
        text += f"""
[dns.{dn_of(k)}]
type = "Extension"
contact = "*"
password = "bench-{dn_of(k)}-pw"
"""
    for k in range(1, size + 1):
        text += load.node_applications(str(k), node_host(k), PORTS)
    path.write_text(text)


def sipp(args: list[str], host: str, workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["sipp", *args, "-i", host, "-nostdin", "-trace_stat", "-stf",
         str(workdir / "stat.csv"), "-fd", "1", "-trace_err", "-error_file",
         str(workdir / "errors.log")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TERM": "dumb"})


def last_stats(workdir: Path) -> dict[str, str]:
    try:
        rows = list(csv.DictReader((workdir / "stat.csv").open(), delimiter=";"))
    except OSError:
        return {}
    return rows[-1] if rows else {}


class Desktop:
    """A T-Library desktop on a t-controller that counts the call events of one DN."""

    def __init__(self, client: TLibClient, dn: str) -> None:
        self.client = client
        self.dn = dn
        self.events = 0
        client.add_listener(self._count)

    def _count(self, event: dict[str, Any]) -> None:
        if event.get("AttributeConnID") and event.get("AttributeThisDN") == self.dn:
            self.events += 1

    @classmethod
    async def open(cls, tc: int, dn: str, name: str) -> Desktop:
        client = await TLibClient.connect(node_host(tc), PORTS["tc"], name)
        desk = cls(client, dn)
        await client.request("RequestRegisterAddress", AttributeThisDN=dn)
        return desk


def failure_lines(path: Path) -> list[str]:
    """SIPp's own error lines (its -error_file), the reasons of failed calls."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.strip()[:200] for line in lines if line.strip()][:3]


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import aiohttp

    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: exited: {tail(log)}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not healthy in 60 s: {tail(log)}")


async def one_run(size: int, rate: int, seconds: float, work: Path) -> dict[str, Any]:
    config = work / "cluster.toml"
    write_cluster(config, size)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    desktops: list[Desktop] = []
    sipps: list[subprocess.Popen[bytes]] = []
    try:
        for kind, prefix in (("sip-server", "SIPS"), ("t-controller", "TC")):
            for k in range(1, size + 1):
                name = f"{prefix}_{k}"
                log = work / f"{name}.log"
                procs[name] = subprocess.Popen(  # noqa: ASYNC220 - run for the whole run
                    [sys.executable, "-m", "daemons.cli", kind, "--config", str(config),
                     "--name", name, "--log-level", "warning", "--log-format", "json"],
                    cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            for k in range(1, size + 1):
                name = f"{prefix}_{k}"
                port = PORTS["http"] if prefix == "SIPS" else PORTS["tc_http"]
                await wait_healthy(f"http://{node_host(k)}:{port}/healthz", procs[name],
                                   work / f"{name}.log")
        calls = max(1, int(rate * seconds))
        # the phones register their DN on their node, then answer
        register = str(SCENARIOS / "register_auth.xml")
        regs = [sipp([f"{node_host(k)}:{PORTS['sip']}", "-sf", register, "-s", dn_of(k),
                      "-au", dn_of(k), "-ap", f"bench-{dn_of(k)}-pw", "-m", "1", "-p", "5060"],
                     phone_host(k), work / f"reg{k}")
                for k in range(1, size + 1)]
        for k, reg in enumerate(regs, 1):
            if await asyncio.to_thread(reg.wait, 30) != 0:
                raise RuntimeError(f"phone {dn_of(k)} did not register on SIPS_{k}")
        sipps += [sipp(["-sn", "uas", "-p", "5060", "-m", str(calls)], phone_host(k),
                       work / f"uas{k}") for k in range(1, size + 1)]
        # the desktops: one on the DN's own node, one on the next node (across the mesh)
        for k in range(1, size + 1):
            desktops.append(await Desktop.open(k, dn_of(k), f"wwe-local-{k}"))
            desktops.append(await Desktop.open(k % size + 1, dn_of(k), f"wwe-remote-{k}"))
        await asyncio.sleep(1.0)  # the remote registrations cross the mesh
        ps = {name: psutil.Process(p.pid) for name, p in procs.items()}
        cpu0 = {name: load.cpu(p) for name, p in ps.items()}
        started = time.monotonic()
        uacs = [sipp([f"{node_host(k)}:{PORTS['sip']}", "-sn", "uac", "-s", dn_of(k),
                      "-m", str(calls), "-r", str(rate), "-d", "0", "-l", str(rate * 4),
                      "-p", "5062"], phone_host(k), work / f"uac{k}")
                for k in range(1, size + 1)]
        sipps += uacs
        for uac in uacs:
            try:
                await asyncio.to_thread(uac.wait, seconds * 3 + 60)
            except subprocess.TimeoutExpired:
                uac.kill()
        window = time.monotonic() - started
        cpu = {name: load.cpu(p) - cpu0[name] for name, p in ps.items()}
        deadline = time.monotonic() + 10
        ok_by_node = {}
        failed = 0
        for k in range(1, size + 1):
            st = last_stats(work / f"uac{k}")
            ok = int(st.get("SuccessfulCall(C)", "0"))
            ok_by_node[k] = ok
            failed += calls - ok
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
                d.events < EVENTS_PER_CALL * ok_by_node[int(d.dn[2:])] for d in desktops):
            await asyncio.sleep(0.2)
        samples: list[str] = []
        if failed:
            for k in range(1, size + 1):
                samples += failure_lines(work / f"uac{k}" / "errors.log")
        missing = sum(max(0, EVENTS_PER_CALL * ok_by_node[int(d.dn[2:])] - d.events)
                      for d in desktops)
        node_cpu = [1000 * cpu[f"SIPS_{k}"] / max(ok_by_node[k], 1) for k in range(1, size + 1)]
        tc_cpu = [1000 * cpu[f"TC_{k}"] / max(ok_by_node[k], 1) for k in range(1, size + 1)]
        per_node = [a + b for a, b in zip(node_cpu, tc_cpu, strict=True)]
        return {
            "nodes": size, "calls_offered": calls * size, "calls_ok": sum(ok_by_node.values()),
            "failed": failed, "events_missing": missing,
            "rate": sum(ok_by_node.values()) / window,
            "node_cpu_per_1000_mean": statistics.mean(node_cpu),
            "tc_cpu_per_1000_mean": statistics.mean(tc_cpu),
            "per_node_cpu_per_1000_mean": statistics.mean(per_node),
            "per_node_cpu_per_1000_max": max(per_node),
            "host_load": os.getloadavg()[0], "failure_sample": samples[:3],
        }
    finally:
        for d in desktops:
            await d.client.close()
        for s in sipps:
            if s.poll() is None:
                s.kill()
                s.wait()
        load.stop(procs.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,4,8", help="cluster sizes, comma-separated")
    parser.add_argument("--rate", type=int, default=20, help="offered calls/s per node")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning")
    if load.find_sipp() is None:
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, list[dict[str, Any]]] = {}
    for size in sizes:
        results[size] = []
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix=f"bench-scale-{size}-") as tmp:
                try:
                    r = asyncio.run(one_run(size, args.rate, args.seconds, Path(tmp)))
                except (RuntimeError, OSError) as exc:
                    print(f"{size} nodes run {run + 1}: FAILED: {exc}", flush=True)
                    results[size].append({"error": str(exc)[:300]})
                    continue
            results[size].append(r)
            print(f"{size} nodes run {run + 1}: {r['calls_ok']}/{r['calls_offered']} calls, "
                  f"{r['rate']:.0f} calls/s, per node {r['per_node_cpu_per_1000_mean']:.2f} "
                  f"CPU s / 1,000 calls (sip-server {r['node_cpu_per_1000_mean']:.2f} + "
                  f"t-controller {r['tc_cpu_per_1000_mean']:.2f}; worst node "
                  f"{r['per_node_cpu_per_1000_max']:.2f}), failed {r['failed']}, "
                  f"events missing {r['events_missing']}, load {r['host_load']:.1f}"
                  + (f"; SIPp: {r['failure_sample']}" if r["failure_sample"] else ""),
                  flush=True)
    keys = ("rate", "node_cpu_per_1000_mean", "tc_cpu_per_1000_mean",
            "per_node_cpu_per_1000_mean", "per_node_cpu_per_1000_max")
    summary: dict[str, Any] = {"rate_per_node": args.rate, "seconds": args.seconds,
                               "runs": args.runs, "sizes": {}}
    base: float | None = None
    print(f"\n## per-node cost by cluster size ({args.rate} calls/s per node, "
          f"{args.seconds:g} s, median of {args.runs})\n")
    print("| nodes | calls/s (all) | sip-server CPU s / 1,000 | t-controller CPU s / 1,000 | "
          "per node (mean, worst) | vs smallest | failed calls | events missing | "
          "failed runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        clean = [r for r in results[size] if "error" not in r]
        failed_runs = len(results[size]) - len(clean)
        if not clean:
            summary["sizes"][str(size)] = {"failed_runs": failed_runs}
            print(f"| {size} | failed | | | | | | | {failed_runs} |")
            continue
        med = {k: statistics.median(r[k] for r in clean) for k in keys}
        med["failed"] = sum(r["failed"] for r in clean)
        med["events_missing"] = sum(r["events_missing"] for r in clean)
        med["failed_runs"] = failed_runs
        if base is None:
            base = med["per_node_cpu_per_1000_mean"]
        med["vs_smallest"] = med["per_node_cpu_per_1000_mean"] / base if base else None
        summary["sizes"][str(size)] = med
        print(f"| {size} | {med['rate']:.0f} | {med['node_cpu_per_1000_mean']:.2f} | "
              f"{med['tc_cpu_per_1000_mean']:.2f} | {med['per_node_cpu_per_1000_mean']:.2f}, "
              f"{med['per_node_cpu_per_1000_max']:.2f} | "
              f"{med['vs_smallest']:.2f} | {med['failed']} | {med['events_missing']} | "
              f"{failed_runs} |")
    print("RESULT " + json.dumps(summary))
    bad = any(v.get("failed") or v.get("events_missing") or v.get("failed_runs")
              for v in summary["sizes"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
