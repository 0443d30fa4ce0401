"""What TLS costs the sip-proxy: a real ``sipcluster sip-proxy`` process on
127.0.200.21 with its sip-tls-port, driven from this process.

* proxy CPU seconds per 1,000 connections: TCP connect/close against TLS
  connect + handshake (ECDSA P-256 certificate from ``sipcluster certs``) /
  close, from ``/proc/PID/stat``;
* OPTIONS answered per second on one connection, TCP against TLS (the proxy
  answers an OPTIONS addressed to itself), pipelined 50 at a time.

Median of ``--runs`` runs, the ratio from the same runs; answers other than
200 are reported as failures. The last line is ``RESULT {json}``.

    .venv/bin/python bench/bench_proxy_tls.py [--runs 5] [--connections 300] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemons.runtime.certs import init_ca, issue  # noqa: E402

HOST = "127.0.200.21"
CLIENT = "127.0.200.50"
TICK = os.sysconf("SC_CLK_TCK")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((host, 0))
        port = int(udp.getsockname()[1])
    with socket.socket() as tcp:
        tcp.bind((host, port))
    return port


def cluster(port: int, tls_port: int, http_port: int, repl_port: int) -> str:
    return f"""\
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
host = "127.0.200.11"
geo-location = "dc1"
sip-port = {free_port("127.0.200.11")}
default-port = 0

[applications.TC_SIPS_1]
kind = "t-controller"
host = "127.0.200.11"
sip-server = "SIPS_1"
tc-port = 0

[applications.SPX_1]
kind = "sip-proxy"
host = "{HOST}"
geo-location = "dc1"
sip-port = {port}
sip-tls-port = {tls_port}
replication-port = {repl_port}
http-port = {http_port}
"""


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


OPTIONS = ("OPTIONS sip:{host}:{port} SIP/2.0\r\n"
           "Via: SIP/2.0/{tp} {client}:5060;branch=z9hG4bKbench{i}\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:bench@cluster.lab>;tag=b{i}\r\n"
           "To: <sip:{host}>\r\nCall-ID: bench-{i}\r\nCSeq: 1 OPTIONS\r\n"
           "Content-Length: 0\r\n\r\n")


async def open_conn(port: int, context: ssl.SSLContext | None) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, ssl=context,
                                         server_hostname=HOST if context else None,
                                         local_addr=(CLIENT, 0))


async def connections(n: int, port: int, context: ssl.SSLContext | None) -> None:
    for _ in range(n):
        _, writer = await open_conn(port, context)
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def options(n: int, port: int, context: ssl.SSLContext | None) -> tuple[float, int]:
    """OPTIONS/s on one connection and the number of answers that were not 200."""
    reader, writer = await open_conn(port, context)
    tp = "TLS" if context else "TCP"
    started = time.perf_counter()
    for i in range(n):
        writer.write(OPTIONS.format(host=HOST, port=port, tp=tp, client=CLIENT, i=i).encode())
        if i % 50 == 49:
            await writer.drain()
    await writer.drain()
    data = b""
    while data.count(b"SIP/2.0 ") < n:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            break
        data += chunk
    elapsed = time.perf_counter() - started
    writer.close()
    return n / elapsed, n - data.count(b"SIP/2.0 200 ")


async def measure(pid: int, args: argparse.Namespace, port: int, tls_port: int,
                  context: ssl.SSLContext) -> dict[str, Any]:
    results: dict[str, list[float]] = {k: [] for k in ("tcp_conn", "tls_conn", "tcp_opt",
                                                       "tls_opt")}
    failures = 0
    for _ in range(args.runs):
        for key, p, ctx in (("tcp_conn", port, None), ("tls_conn", tls_port, context)):
            before = cpu(pid)
            await connections(args.connections, p, ctx)
            results[key].append((cpu(pid) - before) / args.connections * 1000)
        for key, p, ctx in (("tcp_opt", port, None), ("tls_opt", tls_port, context)):
            rate, failed = await options(args.requests, p, ctx)
            results[key].append(rate)
            failures += failed
    m = {k: statistics.median(v) for k, v in results.items()}
    ratio = (f"x{m['tls_conn'] / m['tcp_conn']:.1f}" if m["tcp_conn"] > 0
             else "no ratio: the TCP figure is below the clock tick, raise --connections")
    print(f"proxy CPU s per 1,000 connections (median of {args.runs}): "
          f"TCP {m['tcp_conn']:.2f}, TLS with handshake {m['tls_conn']:.2f} ({ratio})")
    print(f"OPTIONS/s on one connection (median of {args.runs}): TCP {m['tcp_opt']:.0f}, "
          f"TLS {m['tls_opt']:.0f} (TLS/TCP {m['tls_opt'] / m['tcp_opt']:.2f}); "
          f"answers other than 200 or missing: {failures}")
    print("runs: " + ", ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in results.items()))
    return {"runs": args.runs, "connections": args.connections, "requests": args.requests,
            "tcp_connect_cpu_s_per_1000": round(m["tcp_conn"], 4),
            "tls_connect_cpu_s_per_1000": round(m["tls_conn"], 4),
            "tcp_options_per_s": round(m["tcp_opt"], 1),
            "tls_options_per_s": round(m["tls_opt"], 1),
            # a TCP figure of 0 is below the clock tick (1/SC_CLK_TCK s): no ratio then
            "connect_cpu_ratio_tls_over_tcp": round(m["tls_conn"] / m["tcp_conn"], 2)
            if m["tcp_conn"] else None,
            "options_rate_ratio_tls_over_tcp": round(m["tls_opt"] / m["tcp_opt"], 3),
            "failed_answers": failures,
            "per_run": {k: [round(x, 3) for x in v] for k, v in results.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        init_ca(certs)
        issue(certs, "SPX_1", dns_names=["cluster.lab"], ip_addresses=[HOST])
        port, tls_port, http_port, repl_port = (free_port(HOST) for _ in range(4))
        config = Path(tmp) / "cluster.toml"
        config.write_text(cluster(port, tls_port, http_port, repl_port))
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemons.cli", "sip-proxy", "--config", str(config),
             "--name", "SPX_1", "--log-level", "warning", "--rate-limit", "0"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection((HOST, tls_port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print("the proxy did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            figures = asyncio.run(measure(proc.pid, args, port, tls_port, context))
        finally:
            proc.terminate()
            proc.wait(10)
    print("RESULT " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
