"""T-Controller throughput and latency, the daemon as a separate process.

The bench process plays the sip-server's default-port (the node link) and
the desktops; the t-controller runs as ``sipcluster t-controller`` in its own
process, so its CPU time is measured alone (``/proc`` via psutil).

* **fan-out**: 10 desktops register DN 1001 on TCport; the node link carries
  a burst of call events for 1001 (a typical 10-attribute ``EventEstablished``
  with UserData); figure = events delivered to clients per second (each
  event counts once per client), with the node-side event rate beside it.
  Target >= 20,000 events/s. Desktops count frames from the length prefixes.
* **request round trip**: one desktop sends ``RequestAgentNotReady`` /
  ``RequestAgentReady`` alternately, paced at 1,000 requests/s, and times
  each answer; figure = p99 and median round trip. Target p99 < 5 ms.

Each measurement runs 3 times; the medians are printed, and the last line is
``RESULT {json}``.

Usage: ``.venv/bin/python bench/bench_tcontroller.py [--events 20000]
[--clients 10] [--requests 3000] [--rate 1000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemons.runtime.tlib_client import TLibClient  # noqa: E402
from daemons.runtime.tlib_server import TLibConnection, TLibServer  # noqa: E402
from protocols.tlib.framing import encode_frame  # noqa: E402
from protocols.tlib.session import RequestReceived  # noqa: E402

EVENT: dict[str, Any] = {
    "AttributeThisDN": "1001",
    "AttributeOtherDN": "+33123456789",
    "AttributeThisDNRole": "Destination",
    "AttributeConnID": "006b02a5c9f1e001",
    "AttributeCallUUID": "QK3S0HN2ON1O1F7ADJNHMLQ8B4000001",
    "AttributeCallType": "Inbound",
    "AttributeANI": "+33123456789",
    "AttributeDNIS": "5000",
    "AttributeUserData": {"customer": "gold", "language": "fr", "account": 123456},
}

CONFIG = """
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[switch.tserver]
wrap-up-time = 0

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]

[dns.1001]
type = "Extension"
contact = "*"
password = "bench-1001-secret"

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.0.1"
geo-location = "dc1"
sip-port = {sip_port}
default-port = {node_port}

[applications.TC_1]
kind = "t-controller"
host = "127.0.0.1"
sip-server = "SIPS_1"
tc-port = {tc_port}
http-port = {http_port}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """The sip-server default-port: DN 1001 registered, call events on demand."""

    def __init__(self) -> None:
        self.conn: TLibConnection | None = None
        self.up = asyncio.Event()

    def on_registered(self, conn: TLibConnection) -> None:
        self.conn = conn
        conn.send_event("EventDNBackInService", {
            "AttributeThisDN": "1001",
            "AttributeExtensions": {"contact": "sip:1001@127.0.0.1:5099", "expires": 3600,
                                    "ownership": "sip"}})
        self.up.set()

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        conn.answer(request, "EventACK", {})

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        self.conn = None
        self.up.clear()


class Counter(asyncio.Protocol):
    """A desktop that counts frames from their length prefixes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.frames = 0
        self.target = 0
        self.reached = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        offset = 0
        size = len(buf)
        while size - offset >= 4:
            (length,) = struct.unpack_from(">I", buf, offset)
            if size - offset - 4 < length:
                break
            offset += 4 + length
            self.frames += 1
        del buf[:offset]
        if self.target and self.frames >= self.target:
            self.reached.set()


async def counting_desktop(port: int, index: int) -> Counter:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Counter, "127.0.0.1", port)
    proto.transport.write(
        encode_frame({"message": "RequestRegisterClient", "AttributeReferenceID": 1,
                      "AttributeApplicationName": f"bench-{index}",
                      "AttributeClientType": "legacy", "AttributeProtocolVersion": 1})
        + encode_frame({"message": "RequestRegisterAddress", "AttributeReferenceID": 2,
                        "AttributeThisDN": "1001"}))
    proto.target = 2
    async with asyncio.timeout(10):
        await proto.reached.wait()
    return proto


async def fan_out(node: Node, desktops: list[Counter], events: int,
                  proc: psutil.Process) -> dict[str, float]:
    assert node.conn is not None
    for d in desktops:
        d.reached.clear()
        d.target = d.frames + events + 1
    cpu0 = sum(proc.cpu_times()[:2])
    start = time.perf_counter()
    conn = node.conn
    batch = 500
    for i in range(0, events, batch):
        for _ in range(min(batch, events - i)):
            conn.send_event("EventEstablished", EVENT)
        await asyncio.sleep(0)  # let the socket drain
    conn.send_event("EventReleased", EVENT)  # the DN is idle again for the next part
    sent_at = time.perf_counter()
    async with asyncio.timeout(120):
        for d in desktops:
            await d.reached.wait()
    elapsed = time.perf_counter() - start
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    delivered = events * len(desktops)
    return {"delivered_per_s": delivered / elapsed, "node_events_per_s": events / elapsed,
            "send_s": sent_at - start, "elapsed_s": elapsed,
            "cpu_s_per_1000_delivered": cpu / delivered * 1000}


async def round_trips(client: TLibClient, count: int, rate: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    rtts: list[float] = []
    pending: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        name = "RequestAgentNotReady" if i % 2 == 0 else "RequestAgentReady"
        t0 = time.perf_counter()
        answer = await client.request(name, AttributeThisDN="1001")
        rtts.append(time.perf_counter() - t0)
        if answer["message"] == "EventError":
            raise RuntimeError(answer)

    next_at = loop.time()
    for i in range(count):
        now = loop.time()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        pending.append(asyncio.create_task(one(i)))
        next_at += interval
    await asyncio.gather(*pending)
    rtts.sort()
    return {"p50_ms": rtts[len(rtts) // 2] * 1000,
            "p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1000,
            "max_ms": rtts[-1] * 1000, "requests": float(len(rtts))}


def wait_healthy(http_port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("t-controller exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz",
                                        timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("t-controller did not become healthy")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    node = Node()
    server = TLibServer(node, application_name="SIPS_1", port_name="default-port")
    _, node_port = await server.listen("127.0.0.1", 0)
    tc_port, http_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-tc-"))
    config = workdir / "cluster.toml"
    config.write_text(CONFIG.format(sip_port=free_port(), node_port=node_port, tc_port=tc_port,
                                    http_port=http_port))
    log = (workdir / "tc.log").open("wb")
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "daemons.cli", "t-controller", "--config", str(config),
         "--name", "TC_1", "--log-level", args.log_level, "--log-format", "json"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        await asyncio.to_thread(wait_healthy, http_port, proc)
        async with asyncio.timeout(10):
            await node.up.wait()
        ps = psutil.Process(proc.pid)
        desktops = [await counting_desktop(tc_port, i) for i in range(args.clients)]
        fan: list[dict[str, float]] = []
        for run in range(args.runs):
            result = await fan_out(node, desktops, args.events, ps)
            fan.append(result)
            print(f"fan-out run {run + 1}: {result['delivered_per_s']:,.0f} events/s delivered"
                  f" ({result['node_events_per_s']:,.0f} node events/s x {args.clients} "
                  f"clients), {result['cpu_s_per_1000_delivered'] * 1000:.1f} ms CPU per "
                  "1,000 delivered", flush=True)
        for d in desktops:
            d.transport.close()
        client = await TLibClient.connect("127.0.0.1", tc_port, "bench-rtt", addp_timeout=None)
        await client.request("RequestRegisterAddress", AttributeThisDN="1001")
        login = await client.request("RequestAgentLogin", AttributeThisDN="1001",
                                     AttributeAgentID="bench")
        assert login["message"] == "EventAgentLogin", login
        await round_trips(client, 200, args.rate)  # warm-up
        rtt: list[dict[str, float]] = []
        for run in range(args.runs):
            result = await round_trips(client, args.requests, args.rate)
            rtt.append(result)
            print(f"round trip run {run + 1}: p50 {result['p50_ms']:.2f} ms, "
                  f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms "
                  f"at {args.rate:.0f} requests/s", flush=True)
        await client.close()
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        log.close()
        await server.close()
    median = statistics.median
    return {
        "clients": args.clients,
        "events_per_run": args.events,
        "fanout_delivered_events_per_s": round(median(r["delivered_per_s"] for r in fan)),
        "fanout_node_events_per_s": round(median(r["node_events_per_s"] for r in fan)),
        "fanout_cpu_ms_per_1000_delivered": round(
            median(r["cpu_s_per_1000_delivered"] for r in fan) * 1000, 2),
        # what one core fully given to the daemon would deliver (CPU per event
        # is stable on a shared machine when wall time is not)
        "fanout_one_core_capacity_events_per_s": round(
            1.0 / median(r["cpu_s_per_1000_delivered"] for r in fan) * 1000),
        "request_rate": args.rate,
        "rtt_p50_ms": round(median(r["p50_ms"] for r in rtt), 3),
        "rtt_p99_ms": round(median(r["p99_ms"] for r in rtt), 3),
        "runs": args.runs,
        "daemon_exit_code": code,
        "log_level": args.log_level,
        "targets": {"fanout_delivered_events_per_s": 20000, "rtt_p99_ms": 5},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--log-level", default="warning")
    figures = asyncio.run(main(parser.parse_args()))
    print("RESULT " + json.dumps(figures))
