"""Memory of a cluster node per registered DN and per active call (docs/node.md).

The sip-server and its t-controller run as processes from a generated cluster
file with ``--dns`` extensions (10000, 10001, ...) plus DN 2002 for the
callee. Per run (fresh processes each run):

1. **per DN**: SIPp registers every extension (one REGISTER each, the DN
   from a CSV injection file); the sip-server's
   RSS delta / DNs. SIPp 3.6 cannot take the digest username from the
   injection file (a keyword inside ``[authentication ...]`` is not expanded),
   so these extensions have no password and the node accepts the REGISTER
   without a challenge (its rule for password-less DNs). Then a desktop on
   the t-controller's TCport registers every DN and logs an agent in on it
   (``RequestRegisterAddress`` +
   ``RequestAgentLogin``); the sip-server's RSS delta per DN with the agents,
   and the t-controller's RSS delta per DN (from before the registrations to
   after the last login). Target <= 5 KiB per DN with a logged-in agent.
2. **per active call**: SIPp UAS registered as DN 2002, SIPp UAC (built-in
   ``uac``) places ``--calls`` calls through the sip-server (B2BUA) and holds
   each ``--hold`` seconds before BYE; RSS delta with all calls up / calls, beside how many
   the node itself reports connected at that moment (``/status/calls``).
   Target <= 20 KiB per call.

RSS is psutil's resident set size, read after a short settle. Medians of
``--runs``; failures (SIPp failed registrations/calls, refused logins) beside
every figure. Last line: ``RESULT {json}``.

    .venv/bin/python bench/bench_node_memory.py [--dns 10000] [--calls 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemons.runtime.tlib_client import TLibClient  # noqa: E402

HOST = "127.0.0.1"
FIRST_DN = 10000
CALLEE, CALLEE_PW = "2002", "bench-2002-pw"
KIB = 1024

REGISTER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="REGISTER with digest from a CSV file">
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[field0]@[remote_ip]>;tag=[pid]r[call_number]
To: <sip:[field0]@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:[field0]@[local_ip]:[local_port]>
Expires: 3600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def password(dn: int) -> str:
    return f"pw-{dn}-x"


def write_cluster(path: Path, ports: dict[str, int], dns: int) -> None:
    exts = "".join(f'[dns.{dn}]\ntype = "Extension"\ncontact = "*"\n'
                   for dn in range(FIRST_DN, FIRST_DN + dns))
    path.write_text(f"""
[switch]
name = "Bench"
domain = "bench.test"

[dns.Nodes]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_M"]

[dns.{CALLEE}]
type = "Extension"
contact = "*"
password = "{CALLEE_PW}"

{exts}
[applications.SIPS_M]
kind = "sip-server"
host = "{HOST}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}
ip-port = {ports['ip']}
http-port = {ports['http']}

[applications.TC_M]
kind = "t-controller"
host = "{HOST}"
sip-server = "SIPS_M"
tc-port = {ports['tc']}
http-port = {ports['tc_http']}
""")


def sipp(args: list[str], workdir: Path) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["sipp", *args, "-i", HOST, "-nostdin", "-buff_size", str(4 * 2**20),
         "-trace_stat", "-stf", str(workdir / "stat.csv"), "-fd", "1"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TERM": "dumb"})


def stats(workdir: Path) -> dict[str, str]:
    path = workdir / "stat.csv"
    if not path.exists():
        return {}
    rows = list(csv.DictReader(path.open(), delimiter=";"))
    return rows[-1] if rows else {}


def rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


async def settle() -> None:
    await asyncio.sleep(1.0)


async def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            await asyncio.sleep(0.1)


async def calls_connected(http_port: int) -> int:
    """Calls the node reports ``connected`` on ``/status/calls``: every call counted
    in the per-call figure must be fully set up (both dialogs confirmed), not
    still ringing or half-released."""
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{HOST}:{http_port}/status/calls",
            timeout=aiohttp.ClientTimeout(total=30)) as resp:
        calls = await resp.json()
    return sum(1 for call in calls if call.get("state") == "connected")


async def login_agents(tc_port: int, dns: int) -> tuple[TLibClient, int, int]:
    """Register every DN on TCport and log an agent in: (the desktop, logged in, refused).

    The desktop stays connected (it holds the registrations); the caller closes it."""
    client = await TLibClient.connect(HOST, tc_port, "bench-memory", addp_timeout=None)
    ok = refused = 0
    sem = asyncio.Semaphore(200)

    async def one(dn: int) -> None:
        nonlocal ok, refused
        async with sem:
            reg = await client.request("RequestRegisterAddress", AttributeThisDN=str(dn))
            if reg.get("message") == "EventError":
                refused += 1
                return
            login = await client.request("RequestAgentLogin", AttributeThisDN=str(dn),
                                         AttributeAgentID=f"a{dn}")
            if login.get("message") == "EventAgentLogin":
                ok += 1
            else:
                refused += 1

    async with asyncio.timeout(300):
        await asyncio.gather(*(one(dn) for dn in range(FIRST_DN, FIRST_DN + dns)))
    return client, ok, refused


async def one_run(args: argparse.Namespace, index: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-mem-"))
    ports = {name: free_port() for name in ("sip", "default", "ip", "http", "tc", "tc_http")}
    config = tmp / "cluster.toml"
    write_cluster(config, ports, args.dns)
    common = ["--config", str(config), "--log-format", "json", "--log-level", "warning"]
    node_p = subprocess.Popen([sys.executable, "-m", "daemons.cli", "sip-server", *common,  # noqa: ASYNC220
                               "--name", "SIPS_M"], cwd=ROOT,
                              stdout=(tmp / "node.log").open("wb"), stderr=subprocess.STDOUT)
    tc_p = subprocess.Popen([sys.executable, "-m", "daemons.cli", "t-controller", *common,  # noqa: ASYNC220
                             "--name", "TC_M"], cwd=ROOT,
                            stdout=(tmp / "tc.log").open("wb"), stderr=subprocess.STDOUT)
    out: dict[str, Any] = {}
    client: TLibClient | None = None
    try:
        await wait_port(ports["default"], node_p, "sip-server")
        await wait_port(ports["tc"], tc_p, "t-controller")
        node, tc = psutil.Process(node_p.pid), psutil.Process(tc_p.pid)
        await asyncio.sleep(2.0)  # t-controller linked to its node
        node0, tc0 = rss(node), rss(tc)

        # 1. registrations
        (tmp / "register.xml").write_text(REGISTER_XML)
        (tmp / "users.csv").write_text("SEQUENTIAL\n" + "".join(
            f"{dn};{password(dn)}\n" for dn in range(FIRST_DN, FIRST_DN + args.dns)))
        started = time.monotonic()
        reg = sipp([f"{HOST}:{ports['sip']}", "-sf", str(tmp / "register.xml"),
                    "-inf", str(tmp / "users.csv"), "-m", str(args.dns), "-r",
                    str(args.register_rate), "-l", str(args.register_rate * 2),
                    "-p", str(free_port()), "-timeout", "120s"], tmp / f"reg{index}")
        await asyncio.to_thread(reg.wait, 180)
        reg_seconds = time.monotonic() - started
        st = stats(tmp / f"reg{index}")
        reg_ok = int(st.get("SuccessfulCall(C)", "0"))
        await settle()
        node1 = rss(node)
        out["dns"] = args.dns
        out["registered"] = reg_ok
        out["register_failed"] = args.dns - reg_ok
        out["register_seconds"] = round(reg_seconds, 1)
        out["node_bytes_per_dn"] = (node1 - node0) / max(reg_ok, 1)

        # agents on the t-controller
        client, logged, refused = await login_agents(ports["tc"], args.dns)
        await settle()
        node2, tc2 = rss(node), rss(tc)
        out["agents_logged_in"] = logged
        out["agent_refused"] = refused
        out["node_bytes_per_dn_with_agent"] = (node2 - node0) / max(reg_ok, 1)
        out["tc_bytes_per_dn_with_agent"] = (tc2 - tc0) / max(reg_ok, 1)

        # 2. active calls
        uas_port = free_port()
        reg2 = sipp([f"{HOST}:{ports['sip']}", "-sf",
                     str(ROOT / "tests" / "interop" / "scenarios" / "register_auth.xml"),
                     "-s", CALLEE, "-au", CALLEE, "-ap", CALLEE_PW, "-m", "1",
                     "-p", str(uas_port)], tmp / f"calleereg{index}")
        await asyncio.to_thread(reg2.wait, 20)
        uas = sipp(["-sn", "uas", "-p", str(uas_port), "-m", str(args.calls)],
                   tmp / f"uas{index}")
        await settle()
        node3 = rss(node)
        ramp = args.calls / args.call_rate
        hold_ms = int((ramp + args.hold) * 1000)
        uac = sipp([f"{HOST}:{ports['sip']}", "-sn", "uac", "-s", CALLEE, "-m", str(args.calls),
                    "-r", str(args.call_rate), "-l", str(args.calls), "-d", str(hold_ms),
                    "-p", str(free_port())], tmp / f"uac{index}")
        # all calls placed, then a short settle inside the hold
        await asyncio.sleep(ramp + min(3.0, args.hold / 2))
        node4 = rss(node)
        up = stats(tmp / f"uac{index}")
        current = int(up.get("CurrentCall", "0") or 0)
        connected = await calls_connected(ports["http"])
        await asyncio.to_thread(uac.wait, ramp + args.hold + ramp + 120)
        try:
            await asyncio.to_thread(uas.wait, 30)
        except subprocess.TimeoutExpired:
            uas.kill()
        end = stats(tmp / f"uac{index}")
        calls_ok = int(end.get("SuccessfulCall(C)", "0"))
        out["calls"] = args.calls
        out["calls_up_at_sample"] = current
        out["calls_connected_at_sample"] = connected
        out["calls_ok"] = calls_ok
        out["calls_failed"] = args.calls - calls_ok
        out["node_bytes_per_call"] = (node4 - node3) / max(current or args.calls, 1)
        out["node_rss_mb"] = round(node4 / 2**20, 1)
        out["tc_rss_mb"] = round(tc2 / 2**20, 1)
    finally:
        if client is not None:
            await client.close()
        for p in (tc_p, node_p):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for i in range(args.runs):
        run = await one_run(args, i)
        print(f"run {i + 1}: {run['registered']}/{run['dns']} registered "
              f"({run['register_seconds']} s), node {run['node_bytes_per_dn'] / KIB:.2f} KiB/DN, "
              f"with agents {run['node_bytes_per_dn_with_agent'] / KIB:.2f} KiB/DN "
              f"({run['agents_logged_in']} agents, {run['agent_refused']} refused), "
              f"t-controller {run['tc_bytes_per_dn_with_agent'] / KIB:.2f} KiB/DN; "
              f"{run['calls_up_at_sample']} calls up ({run['calls_connected_at_sample']} "
              f"connected on the node): {run['node_bytes_per_call'] / KIB:.2f} "
              f"KiB/call, {run['calls_failed']} failed", flush=True)
        runs.append(run)

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs))

    return {
        "dns": args.dns, "calls": args.calls, "runs": len(runs),
        "node_bytes_per_dn": med("node_bytes_per_dn"),
        "node_bytes_per_dn_with_agent": med("node_bytes_per_dn_with_agent"),
        "tc_bytes_per_dn_with_agent": med("tc_bytes_per_dn_with_agent"),
        "node_bytes_per_call": med("node_bytes_per_call"),
        "register_failed": sum(r["register_failed"] for r in runs),
        "agent_refused": sum(r["agent_refused"] for r in runs),
        "calls_failed": sum(r["calls_failed"] for r in runs),
        "calls_up_at_sample": min(r["calls_up_at_sample"] for r in runs),
        "calls_connected_at_sample": min(r["calls_connected_at_sample"] for r in runs),
        "targets": {"bytes_per_dn_with_agent": 5 * KIB, "bytes_per_call": 20 * KIB},
        "runs_detail": [{k: round(v) if isinstance(v, float) else v for k, v in r.items()}
                        for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dns", type=int, default=10000)
    parser.add_argument("--register-rate", type=int, default=500)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--call-rate", type=int, default=200)
    parser.add_argument("--hold", type=float, default=8.0,
                        help="seconds every call stays up after the last one is placed")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    dn_agent = max(result["node_bytes_per_dn_with_agent"], result["tc_bytes_per_dn_with_agent"])
    print(f"\nmedian of {result['runs']} runs, RSS deltas (psutil)\n")
    print("| figure | ours | target | met? | failures |")
    print("|---|---|---|---|---|")
    print(f"| sip-server per registered DN ({args.dns} DNs) | "
          f"{result['node_bytes_per_dn'] / KIB:.2f} KiB | | | "
          f"{result['register_failed']} failed REGISTERs |")
    print(f"| sip-server per DN with a logged-in agent | "
          f"{result['node_bytes_per_dn_with_agent'] / KIB:.2f} KiB | <= 5 KiB | "
          f"{'yes' if result['node_bytes_per_dn_with_agent'] <= 5 * KIB else 'NO'} | "
          f"{result['agent_refused']} refused logins |")
    print(f"| t-controller per DN with a logged-in agent | "
          f"{result['tc_bytes_per_dn_with_agent'] / KIB:.2f} KiB | <= 5 KiB | "
          f"{'yes' if result['tc_bytes_per_dn_with_agent'] <= 5 * KIB else 'NO'} | "
          f"{result['agent_refused']} refused logins |")
    print(f"| sip-server per active call ({result['calls_up_at_sample']} up, "
          f"{result['calls_connected_at_sample']} connected) | "
          f"{result['node_bytes_per_call'] / KIB:.2f} KiB | <= 20 KiB | "
          f"{'yes' if result['node_bytes_per_call'] <= 20 * KIB else 'NO'} | "
          f"{result['calls_failed']} failed calls |")
    result["targets_met"] = (dn_agent <= 5 * KIB and result["node_bytes_per_call"] <= 20 * KIB
                             and result["register_failed"] == 0 and result["calls_failed"] == 0
                             and result["calls_connected_at_sample"]
                             >= result["calls_up_at_sample"])
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
