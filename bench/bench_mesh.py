"""Benchmark of the T-Controller mesh (docs/t-controller.md), in one process:
N t-controllers on loopback, each beside a stand-in sip-server default port.

1. messages between t-controllers per DN state change (agent Ready/NotReady on
   a DN of each node in turn), with and without ``smart-proxy-enabled``, for 2,
   3 and 4 nodes; one monitoring client on the Smart Proxy port of the first
   node, one desktop on the last node registered on one DN of every node;
2. latency: a state change on one node reaching a desktop on another node,
   p50/p99 at ``--rate`` changes/s across four nodes;
3. a Smart Proxy client's initial bulk registration of ``--dns`` DNs owned by
   four nodes (RequestRegisterAddress for each, all answered).

Median of ``--runs`` runs; the last line is ``RESULT {json}``.

    .venv/bin/python bench/bench_mesh.py [--runs 3] [--rate 500] [--dns 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemons.cluster.config import load_cluster
from daemons.runtime.logs import configure_logging
from daemons.runtime.tlib_client import TLibClient
from daemons.sip_server.tlib_server import TLibConnection, TLibServer
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

    def dns_of(self, i: int) -> list[str]:
        return [str(100000 + i * self.dns_per_node + k) for k in range(self.dns_per_node)]

    async def start(self, tmp: Path) -> None:
        self.nodes = [Node(self.dns_of(i)) for i in range(self.n)]
        ports = [await node.start() for node in self.nodes]
        tc_ports = [free_port(f"127.62.{1 + i // 2}.{11 + i % 2}") for i in range(self.n)]
        path = tmp / f"cluster-{self.n}-{self.optimised}.toml"
        path.write_text(config_text(self.n, self.dns_per_node, ports, tc_ports, self.optimised))
        config = load_cluster(path)
        for i in range(self.n):
            service = TControllerService(config, f"TC_{i}")
            self.services.append(service)
            self.tasks.append(asyncio.create_task(service.serve()))
        total = self.n * self.dns_per_node
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ok = all(s.controller is not None and s.mesh is not None
                     and all(p.link_up and p.conn for p in s.mesh.peers.values())
                     and sum(len(s.controller.ownership.owned_by(f"SIPS_{j}"))
                             for j in range(self.n)) == total for s in self.services)
            if ok:
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
        return {"seconds": elapsed, "registered": ok}
    finally:
        await bench.stop()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("warning")
    result: dict[str, Any] = {"counts": {}, "latency": {}, "bulk": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        print("messages between t-controllers per DN state change (median of runs)")
        print(f"{'nodes':>5} {'smart-proxy-enabled':>20} {'TC<->TC':>8} {'SmartProxy':>10} "
              f"{'total':>6}")
        for n in (2, 3, 4):
            for optimised in (False, True):
                runs = [await message_counts(n, optimised, tmp) for _ in range(args.runs)]
                mesh = statistics.median(r["mesh"] for r in runs)
                sp = statistics.median(r["smart_proxy"] for r in runs)
                result["counts"][f"{n}-{'on' if optimised else 'off'}"] = {
                    "mesh": round(mesh, 3), "smart_proxy": round(sp, 3)}
                print(f"{n:>5} {str(optimised).lower():>20} {mesh:>8.2f} {sp:>10.2f} "
                      f"{mesh + sp:>6.2f}")
        lat = [await latency(args.rate, args.seconds, tmp) for _ in range(args.runs)]
        p99 = statistics.median(r["p99_ms"] for r in lat)
        p50 = statistics.median(r["p50_ms"] for r in lat)
        rate = statistics.median(r["rate"] for r in lat)
        lost = sum(r["sent"] - r["delivered"] for r in lat)
        result["latency"] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                             "rate": round(rate, 1), "undelivered": lost}
        print(f"state change -> client on another node, 4 nodes, {rate:.0f}/s: "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (target < 20), undelivered {lost}")
        try:
            bulk = [await bulk_registration(args.dns, tmp) for _ in range(args.runs)]
        except RuntimeError as exc:  # the cluster did not take in the DNs in time
            result["bulk"] = {"dns": args.dns, "seconds": None, "error": str(exc)}
            print(f"Smart Proxy bulk registration of {args.dns} DNs: not measured ({exc})")
            return result
        secs = statistics.median(r["seconds"] for r in bulk)
        result["bulk"] = {"dns": args.dns, "seconds": round(secs, 2),
                          "registered": min(r["registered"] for r in bulk)}
        print(f"Smart Proxy bulk registration of {args.dns} DNs on 4 nodes: {secs:.2f} s "
              f"(target < 10), in service: {result['bulk']['registered']}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--dns", type=int, default=50000)
    ns = parser.parse_args()
    out = asyncio.run(main(ns))
    print("RESULT " + json.dumps(out))
