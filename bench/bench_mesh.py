"""Benchmark of the T-Controller mesh (docs/t-controller.md), in one process:
N t-controllers on loopback, each beside a stand-in sip-server default port.

1. messages between t-controllers per DN state change (agent Ready/NotReady on
   a DN of each node in turn), with and without ``smart-proxy-enabled``, for 2,
   3 and 4 nodes; one monitoring client on the Smart Proxy port of the first
   node, one desktop on the last node registered on one DN of every node;
2. latency: a state change on one node reaching a desktop on another node,
   p50/p99 at ``--rate`` changes/s across four nodes;
3. a Smart Proxy client's initial bulk registration of ``--dns`` DNs owned by
   four nodes (RequestRegisterAddress for each, all answered), and beside it
   the time the four t-controllers took to take in those DNs from their
   sip-servers and agree on the owners (start-up);
4. memory: bytes per DN registered on TCport with an agent logged in, one
   t-controller with ``--memory-dns`` DNs (tracemalloc, from before the
   t-controller starts to after the last login; target <= 5 KiB).

Median of ``--runs`` runs; the last line is ``RESULT {json}``.

    .venv/bin/python bench/bench_mesh.py [--runs 3] [--rate 500] [--dns 50000]
        [--memory-dns 10000] [--only counts,latency,bulk,memory]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemons.cluster.config import load_cluster
from daemons.runtime.logs import configure_logging
from daemons.runtime.tlib_client import TLibClient
from daemons.runtime.tlib_server import TLibConnection, TLibServer
from daemons.t_controller.service import TControllerService


class Node:
    """A sip-server default port that says its DNs are registered."""

    def __init__(self, dns: list[str]) -> None:
        self.dns = dns
        self.server: TLibServer | None = None

    async def start(self) -> int:
        self.server = TLibServer(self, application_name="node", port_name="default-port")
        return (await self.server.listen("127.0.0.1", 0))[1]

    def on_registered(self, conn: TLibConnection) -> None:
        for dn in self.dns:
            conn.send_event("EventDNBackInService", {"AttributeThisDN": dn})

    def on_request(self, conn: TLibConnection, request: Any) -> None:
        conn.answer(request, "EventACK", {})

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        pass


def free_port(host: str) -> int:
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def config_text(n: int, dns_per_node: int, node_ports: list[int], tc_ports: list[int],
                optimised: bool) -> str:
    apps = ", ".join(f'"SIPS_{i}"' for i in range(n))
    parts = [f"""[switch]
name = "SIP_Cluster"
domain = "cluster.lab"
[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = [{apps}]
tc-latency-poll-interval = 0
smart-proxy-enabled = {"true" if optimised else "false"}
"""]
    for i in range(n * dns_per_node):
        parts.append(f'[dns.{100000 + i}]\ntype = "Extension"\ncontact = "*"\npassword = "p{i}x"\n')
    for i in range(n):
        host = f"127.62.{1 + i // 2}.{11 + i % 2}"
        parts.append(f"""[applications.SIPS_{i}]
kind = "sip-server"
host = "127.0.0.1"
geo-location = "dc{1 + i // 2}"
sip-port = {6000 + i}
default-port = {node_ports[i]}
[applications.TC_{i}]
kind = "t-controller"
host = "{host}"
sip-server = "SIPS_{i}"
tc-port = {tc_ports[i]}
smart-proxy-port = 0
""")
    return "\n".join(parts)


class Bench:
    def __init__(self, n: int, dns_per_node: int, optimised: bool) -> None:
        self.n, self.dns_per_node, self.optimised = n, dns_per_node, optimised
        self.services: list[TControllerService] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.nodes: list[Node] = []
        self.startup_seconds = 0.0
        self.memory_baseline = 0  # tracemalloc bytes before the t-controllers start

    def dns_of(self, i: int) -> list[str]:
        return [str(100000 + i * self.dns_per_node + k) for k in range(self.dns_per_node)]

    async def start(self, tmp: Path) -> None:
        self.nodes = [Node(self.dns_of(i)) for i in range(self.n)]
        ports = [await node.start() for node in self.nodes]
        tc_ports = [free_port(f"127.62.{1 + i // 2}.{11 + i % 2}") for i in range(self.n)]
        path = tmp / f"cluster-{self.n}-{self.optimised}.toml"
        path.write_text(config_text(self.n, self.dns_per_node, ports, tc_ports, self.optimised))
        config = load_cluster(path)
        gc.collect()
        if tracemalloc.is_tracing():
            self.memory_baseline = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        for i in range(self.n):
            service = TControllerService(config, f"TC_{i}")
            self.services.append(service)
            self.tasks.append(asyncio.create_task(service.serve()))
        total = self.n * self.dns_per_node
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ok = all(s.controller is not None and s.mesh is not None
                     and all(p.link_up and p.conn for p in s.mesh.peers.values())
                     and sum(s.controller.ownership.owned_count(f"SIPS_{j}")
                             for j in range(self.n)) == total for s in self.services)
            if ok:
                self.startup_seconds = time.perf_counter() - started
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("cluster did not converge")

    async def stop(self) -> None:
        for service in self.services:
            service.stopping.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for node in self.nodes:
            if node.server is not None:
                await node.server.close()

    def mesh_messages(self) -> float:
        total = 0.0
        for s in self.services:
            for family in s.metrics.registry.collect():
                for sample in family.samples:
                    if sample.name == "sipcluster_tcontroller_mesh_messages_total" and \
                            sample.labels.get("direction") == "tx":
                        total += sample.value
        return total

    def smart_proxy_messages(self) -> float:
        return float(sum(sum(s.smart_proxy.fed.values()) for s in self.services
                         if s.smart_proxy is not None and s.smart_proxy.bulk_links))

    async def client(self, i: int, app: str, sp: bool = False) -> TLibClient:
        s = self.services[i]
        host, port = s.smart_proxy_address if sp else s.tc_address  # type: ignore[misc]
        return await TLibClient.connect(host, port, app, "legacy", addp_timeout=None)


async def message_counts(n: int, optimised: bool, tmp: Path) -> dict[str, float]:
    bench = Bench(n, 4, optimised)
    await bench.start(tmp)
    try:
        monitor = await bench.client(0, "statserver", sp=True)
        desk = await bench.client(n - 1, "wwe")
        for i in range(n):
            await desk.request("RequestRegisterAddress", AttributeThisDN=bench.dns_of(i)[0])
        agents = []
        for i in range(n):
            agent = await bench.client(i, "Cluster")
            dn = bench.dns_of(i)[1]
            await agent.request("RequestRegisterAddress", AttributeThisDN=dn)
            await agent.request("RequestAgentLogin", AttributeThisDN=dn, AttributeAgentID=dn)
            agents.append((agent, dn))
        if optimised:
            proxy = bench.services[0].smart_proxy
            assert proxy is not None
            for _ in range(200):
                if proxy.bulk_up() >= n - 1:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        mesh0, sp0 = bench.mesh_messages(), bench.smart_proxy_messages()
        changes = 0
        for _ in range(25):
            for agent, dn in agents:
                await agent.request("RequestAgentReady", AttributeThisDN=dn)
                await agent.request("RequestAgentNotReady", AttributeThisDN=dn)
                changes += 2
        await asyncio.sleep(0.3)
        mesh = (bench.mesh_messages() - mesh0) / changes
        sp = (bench.smart_proxy_messages() - sp0) / changes
        for c in [monitor, desk] + [a for a, _ in agents]:
            await c.close()
        return {"mesh": mesh, "smart_proxy": sp}
    finally:
        await bench.stop()


async def latency(rate: float, seconds: float, tmp: Path) -> dict[str, float]:
    bench = Bench(4, 8, True)
    await bench.start(tmp)
    try:
        watcher = await bench.client(3, "wwe")
        sent: dict[tuple[str, str], float] = {}
        samples: list[float] = []

        def on_event(event: dict[str, Any]) -> None:
            key = (event.get("AttributeThisDN", ""), event["message"])
            start = sent.pop(key, None)
            if start is not None:
                samples.append(time.perf_counter() - start)
        watcher.add_listener(on_event)
        agents = []
        for i in range(3):
            agent = await bench.client(i, "Cluster")
            for dn in bench.dns_of(i):
                await watcher.request("RequestRegisterAddress", AttributeThisDN=dn)
                await agent.request("RequestRegisterAddress", AttributeThisDN=dn)
                await agent.request("RequestAgentLogin", AttributeThisDN=dn,
                                    AttributeAgentID=dn)
                agents.append((agent, dn))
        total = int(rate * seconds)
        interval = 1.0 / rate
        start = time.perf_counter()
        ready: dict[str, bool] = {}
        for k in range(total):
            agent, dn = agents[k % len(agents)]
            name = "RequestAgentNotReady" if ready.get(dn) else "RequestAgentReady"
            ready[dn] = not ready.get(dn)
            event = "EventAgentNotReady" if name == "RequestAgentNotReady" else "EventAgentReady"
            sent[(dn, event)] = time.perf_counter()
            agent.submit(name, {"AttributeThisDN": dn})
            delay = start + (k + 1) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.sleep(0.5)
        achieved = total / (time.perf_counter() - start - 0.5)
        samples.sort()
        return {"p50_ms": 1000 * samples[len(samples) // 2],
                "p99_ms": 1000 * samples[int(len(samples) * 0.99) - 1],
                "delivered": len(samples), "sent": total, "rate": achieved}
    finally:
        await bench.stop()


async def bulk_registration(dns: int, tmp: Path) -> dict[str, float]:
    bench = Bench(4, dns // 4, True)
    await bench.start(tmp)
    try:
        start = time.perf_counter()
        monitor = await bench.client(0, "statserver", sp=True)
        numbers = [dn for i in range(4) for dn in bench.dns_of(i)]
        futures = [monitor.submit("RequestRegisterAddress", {"AttributeThisDN": dn})
                   for dn in numbers]
        answers = await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
        ok = sum(1 for a in answers if a["message"] == "EventRegistered"
                 and a["AttributeExtensions"]["dn-state"] == "in-service")
        await monitor.close()
        return {"seconds": elapsed, "registered": ok, "startup_seconds": bench.startup_seconds}
    finally:
        await bench.stop()


async def memory_per_dn(dns: int, tmp: Path) -> dict[str, float]:
    """Bytes per DN in service, registered by a desktop, with an agent logged in."""
    tracemalloc.start()
    bench = Bench(1, dns, False)
    try:
        await bench.start(tmp)
        desk = await bench.client(0, "wwe")
        numbers = bench.dns_of(0)
        for chunk in range(0, dns, 1000):
            part = numbers[chunk:chunk + 1000]
            answers = await asyncio.gather(*[
                desk.submit("RequestRegisterAddress", {"AttributeThisDN": dn}) for dn in part])
            answers += await asyncio.gather(*[
                desk.submit("RequestAgentLogin", {"AttributeThisDN": dn,
                                                  "AttributeAgentID": f"a{dn}"})
                for dn in part])
            if any(a["message"] == "EventError" for a in answers):
                raise RuntimeError(f"refused: {answers[0]}")
            del answers
        await asyncio.sleep(0.2)  # the last events leave the desktop's queue
        queue = desk._queue  # events the desktop did not ask for: not the daemon's memory
        while not queue.empty():
            queue.get_nowait()
        controller = bench.services[0].controller
        assert controller is not None
        logged_in = len(controller.agents.logged_in())
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - bench.memory_baseline
        await desk.close()
        return {"bytes_per_dn": used / dns, "dns": float(dns), "agents": float(logged_in)}
    finally:
        tracemalloc.stop()
        await bench.stop()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("warning")
    only = set(args.only.split(","))
    result: dict[str, Any] = {"counts": {}, "latency": {}, "bulk": {}, "memory": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if "counts" in only:
            print("messages between t-controllers per DN state change (median of runs)")
            print(f"{'nodes':>5} {'smart-proxy-enabled':>20} {'TC<->TC':>8} "
                  f"{'SmartProxy':>10} {'total':>6}")
            for n in (2, 3, 4):
                for optimised in (False, True):
                    runs = [await message_counts(n, optimised, tmp) for _ in range(args.runs)]
                    mesh = statistics.median(r["mesh"] for r in runs)
                    sp = statistics.median(r["smart_proxy"] for r in runs)
                    result["counts"][f"{n}-{'on' if optimised else 'off'}"] = {
                        "mesh": round(mesh, 3), "smart_proxy": round(sp, 3)}
                    print(f"{n:>5} {str(optimised).lower():>20} {mesh:>8.2f} {sp:>10.2f} "
                          f"{mesh + sp:>6.2f}")
        if "latency" in only:
            lat = [await latency(args.rate, args.seconds, tmp) for _ in range(args.runs)]
            p99 = statistics.median(r["p99_ms"] for r in lat)
            p50 = statistics.median(r["p50_ms"] for r in lat)
            rate = statistics.median(r["rate"] for r in lat)
            lost = sum(r["sent"] - r["delivered"] for r in lat)
            result["latency"] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                                 "rate": round(rate, 1), "undelivered": lost}
            print(f"state change -> client on another node, 4 nodes, {rate:.0f}/s: "
                  f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (target < 20), undelivered {lost}")
        if "bulk" in only:
            try:
                bulk = [await bulk_registration(args.dns, tmp) for _ in range(args.runs)]
            except RuntimeError as exc:  # the cluster did not take in the DNs in time
                result["bulk"] = {"dns": args.dns, "seconds": None, "error": str(exc)}
                print(f"Smart Proxy bulk registration of {args.dns} DNs: not measured ({exc})")
            else:
                secs = statistics.median(r["seconds"] for r in bulk)
                startup = statistics.median(r["startup_seconds"] for r in bulk)
                result["bulk"] = {"dns": args.dns, "seconds": round(secs, 2),
                                  "startup_seconds": round(startup, 2),
                                  "registered": min(r["registered"] for r in bulk)}
                print(f"4 t-controllers took in {args.dns} DNs in {startup:.2f} s")
                print(f"Smart Proxy bulk registration of {args.dns} DNs on 4 nodes: {secs:.2f} s "
                      f"(target < 10), in service: {result['bulk']['registered']}")
        if "memory" in only:
            mem = [await memory_per_dn(args.memory_dns, tmp) for _ in range(args.runs)]
            per_dn = statistics.median(r["bytes_per_dn"] for r in mem)
            result["memory"] = {"dns": args.memory_dns, "bytes_per_dn": round(per_dn),
                                "agents": min(r["agents"] for r in mem)}
            print(f"memory per DN registered with an agent logged in ({args.memory_dns} DNs): "
                  f"{per_dn / 1024:.2f} KiB (target <= 5)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--dns", type=int, default=50000)
    parser.add_argument("--memory-dns", type=int, default=10000)
    parser.add_argument("--only", default="counts,latency,bulk,memory",
                        help="comma-separated parts to run")
    ns = parser.parse_args()
    out = asyncio.run(main(ns))
    print("RESULT " + json.dumps(out))
