"""sip-proxy benchmark: REGISTER and INVITE-dialog rates through the proxy with
SIPp, proxy CPU seconds per 1,000, memory per binding at 100,000 bindings,
catch-up time of 100,000 bindings. Median of 3 runs, failures reported; the
last line is ``RESULT {json}``.

    .venv/bin/python bench/bench_proxy.py [--registers 6000 --register-rate 3000]
        [--calls 3000 --call-rate 1000] [--bindings 100000] [--runs 3]

REGISTER: SIPp UAC -> proxy -> node (``sipcluster sip responder`` without
digest). INVITE: SIPp UAC at a node's address calls the AoR of a SIPp UAS that
registered through the proxy (proxy-only dialogs, the UAS is the phone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemons.sip_proxy.registrar import Binding, BindingStore  # noqa: E402
from daemons.sip_proxy.replication import PeerAddress, Replicator  # noqa: E402

PROXY, NODE, PHONE, CALLER = "127.0.1.151", "127.0.1.141", "127.0.1.161", "127.0.1.142"

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
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

UAC_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac">
  <send retrans="500"><![CDATA[
INVITE sip:1001@cluster.lab SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:node@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:1001@cluster.lab>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:node@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:node@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:1001@cluster.lab>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
[routes]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:node@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:1001@cluster.lab>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
[routes]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def free_port(host: str) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port > 64000:
            continue
        try:
            for p in (port, port + 1000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind((host, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no port")


def write_cluster(path: Path, proxy_port: int, node_port: int) -> None:
    path.write_text(f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"
[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
siproxy-applications = ["SPX_1"]
[applications.SIPS_1]
kind = "sip-server"
host = "{NODE}"
geo-location = "dc1"
sip-port = {node_port}
default-port = 0
[applications.TC_1]
kind = "t-controller"
host = "{NODE}"
sip-server = "SIPS_1"
tc-port = 0
[applications.SPX_1]
kind = "sip-proxy"
host = "{PROXY}"
geo-location = "dc1"
sip-port = {proxy_port}
http-port = 0
[applications.SPX_1.sipproxy]
oos-check = 2
oos-force = 2
""")


def sipp_stat(path: Path) -> tuple[int, int, float]:
    """(successful, failed, elapsed seconds) from the last line of SIPp's -trace_stat."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    head = lines[0].split(";")
    last = lines[-1].split(";")
    row = dict(zip(head, last, strict=False))
    elapsed = row.get("ElapsedTime(C)", "0:0:0")
    h, m, s = elapsed.split(":")[:3]
    secs = int(h) * 3600 + int(m) * 60 + float(s.split(":")[0])
    return int(row.get("SuccessfulCall(C)", 0)), int(row.get("FailedCall(C)", 0)), secs


def run_sipp(args: list[str], work: Path, name: str, timeout: float) -> tuple[int, int, float]:
    stat = work / f"{name}.csv"
    if stat.exists():
        stat.unlink()
    cmd = ["sipp", *args, "-trace_stat", "-stf", str(stat), "-fd", "1", "-nostdin"]
    subprocess.run(cmd, cwd=work, capture_output=True, timeout=timeout)
    return sipp_stat(stat)


def sip_load(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("sipp") is None:
        return {"error": "sipp not installed"}
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    (work / "register.xml").write_text(REGISTER_XML)
    (work / "uac.xml").write_text(UAC_XML)
    pport, nport = free_port(PROXY), free_port(NODE)
    write_cluster(work / "cluster.toml", pport, nport)
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    node = subprocess.Popen([py, "-m", "daemons.cli", "sip", "responder", "--listen",
                             f"{NODE}:{nport}", "--log-level", "error"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([py, "-m", "daemons.cli", "sip-proxy", "--config",
                              str(work / "cluster.toml"), "--name", "SPX_1", "--rate-limit", "0",
                              "--log-level", "error"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, Any] = {"register": [], "invite": []}
    uas: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(2.5)  # node checked in service (oos-check) and proxy synced (alone)
        pp = psutil.Process(proxy.pid)
        for run in range(args.runs):
            cpu0 = sum(pp.cpu_times()[:2])
            ok, failed, secs = run_sipp(
                ["-sf", "register.xml", f"{PROXY}:{pport}", "-i", "127.0.1.171", "-p", "0",
                 "-m", str(args.registers), "-r", str(args.register_rate), "-l", "5000"],
                work, f"reg{run}", 120)
            cpu = sum(pp.cpu_times()[:2]) - cpu0
            out["register"].append({"ok": ok, "failed": failed, "seconds": secs,
                                    "rate": ok / secs if secs else 0.0,
                                    "cpu_per_1000": 1000 * cpu / max(ok, 1)})
        uas_port = free_port(PHONE)
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", PHONE, "-p", str(uas_port),
                                "-nostdin"],
                               cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        # the UAS owns its port: register from a twin socket whose Contact names the UAS
        _register_contact((PROXY, pport), (PHONE, uas_port))
        for run in range(args.runs):
            cpu0 = sum(pp.cpu_times()[:2])
            ok, failed, secs = run_sipp(
                ["-sf", "uac.xml", f"{PROXY}:{pport}", "-i", CALLER, "-p", "0",
                 "-m", str(args.calls), "-r", str(args.call_rate), "-l", "3000"],
                work, f"inv{run}", 120)
            cpu = sum(pp.cpu_times()[:2]) - cpu0
            out["invite"].append({"ok": ok, "failed": failed, "seconds": secs,
                                  "rate": ok / secs if secs else 0.0,
                                  "cpu_per_1000": 1000 * cpu / max(ok, 1)})
    finally:
        for p in (proxy, node, uas):
            if p is not None:
                p.terminate()
                p.wait(5)
    return out


def _register_contact(proxy: tuple[str, int], contact: tuple[str, int]) -> None:
    """REGISTER from another port of the phone's host, Contact = the UAS address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((contact[0], 0))
        port = s.getsockname()[1]
        msg = (f"REGISTER sip:cluster.lab SIP/2.0\r\nVia: SIP/2.0/UDP {contact[0]}:{port};"
               f"branch=z9hG4bKbr{time.time_ns()}\r\nFrom: <sip:1001@cluster.lab>;tag=b\r\n"
               "To: <sip:1001@cluster.lab>\r\nCall-ID: bench-reg@x\r\nCSeq: 1 REGISTER\r\n"
               f"Contact: <sip:1001@{contact[0]}:{contact[1]}>\r\nExpires: 3600\r\n"
               "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        s.settimeout(3)
        s.sendto(msg, proxy)
        data, _ = s.recvfrom(65535)
        if not data.startswith(b"SIP/2.0 200"):
            raise RuntimeError(f"phone registration failed: {data[:60]!r}")


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


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--registers", type=int, default=6000)
    ap.add_argument("--register-rate", type=int, default=3000)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--call-rate", type=int, default=1000)
    ap.add_argument("--bindings", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-sipp", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {}
    mem = statistics.median(memory_per_binding(args.bindings) for _ in range(args.runs))
    print(f"memory per binding at {args.bindings}: {mem:.0f} B (target <= 2048)")
    result["bytes_per_binding"] = round(mem)
    times = [asyncio.run(catch_up(args.bindings)) for _ in range(args.runs)]
    print(f"catch-up of {args.bindings} bindings: median {statistics.median(times):.2f} s "
          f"(runs {[round(t, 2) for t in times]}; target < 10 s)")
    result["catch_up_seconds"] = round(statistics.median(times), 3)
    if not args.skip_sipp:
        load = sip_load(args)
        result["sipp"] = load
        for kind in ("register", "invite"):
            rows = load.get(kind, [])
            if rows:
                print(f"{kind}: median {median(rows, 'rate'):.0f}/s, proxy CPU "
                      f"{median(rows, 'cpu_per_1000'):.2f} s per 1000, failures "
                      f"{[r['failed'] for r in rows]}")
                result[f"{kind}_rate"] = round(median(rows, "rate"))
                result[f"{kind}_cpu_s_per_1000"] = round(median(rows, "cpu_per_1000"), 3)
                result[f"{kind}_failed"] = [r["failed"] for r in rows]
    result.pop("sipp", None)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
