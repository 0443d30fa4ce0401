"""The director: routing decision time and calls routed per second.

* **decision**: the agent pool of ``daemons/director/queue.py`` with 5,000
  agents over 10 sites (each with 1-3 of 10 skills at levels 1-5, all Ready);
  one decision = pick the agent for a call (skill at a minimum level,
  longest idle, the call's site first or, one call in four, any site) and
  hold it. The agent then takes the call and is idle again (the index
  churns like in production). Figure = p50 / p99 per decision, median over
  the runs. Target p99 < 2 ms.
* **routed per second**: ``sipcluster director`` and ``sipcluster
  t-controller`` as separate processes; the bench process plays the node's
  ``default-port`` for both (as the sip-server would): it sends
  ``EventRouteRequest`` for routing point 5000 keeping ``--window`` calls
  outstanding, answers every ``RequestRouteCall`` with ``EventRouteUsed``,
  then tells the t-controller the call rang and was released on the agent's
  DN (``EventRinging``, ``EventReleased``) so that the agent is available
  again. Every call is reserved at the t-controller (``RequestReserveAgent``,
  ``request-collection-time = 0``) then routed. Figure = calls routed per
  second, median over the runs, the director's CPU seconds per 1,000 calls,
  and the calls that failed (routed elsewhere, refused, not routed in time).

* **site spread**: a Director Server over ``--monitored`` monitored sites
  (``daemons/director/sites.py``, in process, a simulated clock): each site
  has 2-20 agents, reports its free agents every ``report-interval`` (1 s);
  calls arrive at 85 % of the agents' capacity (3-minute mean hold); the
  Director Server sends each to :meth:`SiteBoard.pick`'s site (a call with no
  free agent anywhere waits for the next report), the site gives it to its
  longest-idle agent or queues it locally. Beside it, the same calls sent
  round-robin over the sites. Figures: agents' call share max/min (calls
  handled per agent), calls that found no free agent at their site, the
  calls' mean wait, and the pick time per call (p99).
* **monitored servers polled**: ``sipcluster director`` as a Director Server
  over ``--monitored`` monitored servers (T-Library listeners in the bench
  process answering ``RequestQueryAddress`` with a report), ``report-interval
  = 1``; once every site is fresh, the director's CPU seconds per second
  over ``--poll-seconds``, the reports answered per second and the sites
  still fresh at the end (its ``/status/director``).

The last line is ``RESULT {json}``.

Usage: ``.venv/bin/python bench/bench_director.py [--agents 5000] [--sites 10]
[--decisions 20000] [--calls 2000] [--routing-agents 200] [--window 50]
[--monitored 100] [--spread-calls 30000] [--poll-seconds 10] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import random
import socket
import statistics
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

from daemons.director.queue import AgentPool  # noqa: E402
from daemons.director.sites import ANY_SKILL, SiteBoard, SiteReport  # noqa: E402
from daemons.director.strategy import Strategy  # noqa: E402
from daemons.runtime.logs import configure_logging  # noqa: E402
from daemons.runtime.tlib_client import TLibClient  # noqa: E402
from daemons.runtime.tlib_server import TLibConnection, TLibServer  # noqa: E402
from protocols.tlib.session import RequestReceived  # noqa: E402

HOST = "127.0.208.1"
DECISION_TARGET_MS = 2.0


# -- decision time -------------------------------------------------------------------


def decision_run(agents: int, sites: int, decisions: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    skills = [f"skill{n}" for n in range(10)]
    site_names = [f"site{n}" for n in range(sites)]
    table = {f"a{n}": {s: rng.randint(1, 5) for s in rng.sample(skills, rng.randint(1, 3))}
             for n in range(agents)}
    pool = AgentPool(table)
    now = 0.0
    for n in range(agents):
        now += 0.001
        pool.login(f"{n}", f"a{n}", now)
        pool.ready(f"{n}", f"a{n}", True, now, site_names[n % sites])
    strategies = [Strategy(queue=f"vq{n}", routing_points=(f"rp{n}",), skill=skill,
                           min_level=rng.randint(1, 3)) for n, skill in enumerate(skills)]
    times: list[float] = []
    misses = 0
    perf = time.perf_counter
    for call in range(decisions):
        now += 0.01
        strategy = rng.choice(strategies)
        site = rng.choice(site_names)
        overflow = call % 4 == 0
        start = perf()
        agent = pool.pick(strategy, site, overflow=overflow)
        if agent is not None:
            pool.hold(agent.dn, now)
        times.append(perf() - start)
        if agent is None:
            misses += 1
            continue
        conn_id = f"c{call}"
        pool.call_started(agent.dn, conn_id, now)
        pool.call_ended(agent.dn, conn_id, now)
    times.sort()
    return {"p50_ms": times[len(times) // 2] * 1000, "p99_ms": times[int(len(times) * 0.99)] * 1000,
            "no_agent": misses}


# -- site spread ------------------------------------------------------------------------

REPORT_INTERVAL = 1.0
MEAN_HOLD = 180.0


def spread_run(monitored: int, calls: int, seed: int, policy: str) -> dict[str, float]:
    """One simulated run (module doc, "site spread"); ``policy``: ``availability``
    (SiteBoard.pick) or ``round-robin``."""
    rng = random.Random(seed)
    names = [f"site{n}" for n in range(monitored)]
    size = {name: rng.randint(2, 20) for name in names}
    free: dict[str, list[tuple[float, int]]] = {n: [(0.0, a) for a in range(size[n])]
                                                 for n in names}  # (idle since, agent)
    for heap in free.values():
        heapq.heapify(heap)
    handled = {(n, a): 0 for n in names for a in range(size[n])}
    local_queue: dict[str, list[float]] = {n: [] for n in names}
    board = SiteBoard({n: n for n in names}, stale_after=3 * REPORT_INTERVAL)
    rate = sum(size.values()) / MEAN_HOLD * 0.85
    events: list[tuple[float, int, str, Any]] = []  # (time, order, kind, data)
    order = 0

    def push(at: float, kind: str, data: Any) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, data))

    no_agent, waited = 0, 0.0
    picks: list[float] = []

    def report(now: float) -> None:
        for n in names:
            count = len(free[n])
            board.reported(n, SiteReport(n, {ANY_SKILL: count, "sales": count}, size[n], {}),
                           now)

    def deliver(site: str, arrived: float, now: float) -> None:
        nonlocal no_agent, waited
        if free[site]:
            _, agent = heapq.heappop(free[site])
            handled[(site, agent)] += 1
            waited += now - arrived
            push(now + rng.expovariate(1 / MEAN_HOLD), "end", (site, agent))
        else:
            no_agent += 1
            local_queue[site].append(arrived)

    central: list[float] = []
    rr = 0
    now = 0.0
    report(now)
    push(REPORT_INTERVAL, "report", None)
    push(rng.expovariate(rate), "call", calls - 1)
    perf = time.perf_counter
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "call":
            if policy == "round-robin":
                deliver(names[rr % monitored], now, now)
                rr += 1
            else:
                central.append(now)
            if data:
                push(now + rng.expovariate(rate), "call", data - 1)
        elif kind == "end":
            site, agent = data
            if local_queue[site]:
                arrived = local_queue[site].pop(0)
                handled[(site, agent)] += 1
                waited += now - arrived
                push(now + rng.expovariate(1 / MEAN_HOLD), "end", (site, agent))
            else:
                heapq.heappush(free[site], (now, agent))
        elif kind == "report":
            report(now)
            if any(events_kind == "call" for _, _, events_kind, _ in events) or central:
                push(now + REPORT_INTERVAL, "report", None)
        while central:  # the Director Server's queue: each call to the picked site
            start = perf()
            picked = board.pick("sales", now)
            picks.append(perf() - start)
            if picked is None:
                break
            board.sent(picked)
            deliver(picked.name, central.pop(0), now)
    shares = sorted(handled.values())
    picks.sort()
    return {"share_max_min": shares[-1] / shares[0] if shares[0] else float("inf"),
            "share_max": shares[-1], "share_min": shares[0],
            "no_agent_at_site": no_agent, "mean_wait_s": waited / calls,
            "pick_p99_ms": picks[int(len(picks) * 0.99)] * 1000 if picks else 0.0}


# -- calls routed per second ------------------------------------------------------------


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cluster_text(ports: dict[str, int], agents: int) -> str:
    text = f"""
[switch]
name = "SIP_Cluster"
domain = "bench.test"

[switch.tserver]
request-collection-time = 0
router-timeout = 30
wrap-up-time = 0

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_B"]
dn-owner-applications = ["Cluster"]

[dns.5000]
type = "RoutingPoint"

[dns.8000]
type = "VirtualQueue"

[applications.SIPS_B]
kind = "sip-server"
host = "{HOST}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}

[applications.TC_B]
kind = "t-controller"
host = "{HOST}"
sip-server = "SIPS_B"
tc-port = {ports['tc']}
http-port = {ports['tchttp']}

[applications.Director]
kind = "director"
host = "{HOST}"
geo-location = "dc1"
http-port = {ports['director']}

[applications.Director.options.strategies.8000]
routing-points = ["5000"]
skill = "sales"
site-preference = false

[applications.Director.options.skills]
"""
    text += "".join(f"a{n} = {{ sales = 3 }}\n" for n in range(agents))
    text += "".join(f'\n[dns.{10000 + n}]\ntype = "Extension"\n'
                    f'contact = "sip:{10000 + n}@127.0.208.9:5060"\n' for n in range(agents))
    return text


class Node:
    """The node's default-port, for the t-controller (node link) and the director."""

    def __init__(self, calls: int, window: int) -> None:
        self.server = TLibServer(self, application_name="SIPS_B", port_name="default-port")
        self.tc: TLibConnection | None = None
        self.director: TLibConnection | None = None
        self.registered = asyncio.Event()
        self.calls, self.window = calls, window
        self.sent = 0
        self.routed = 0
        self.failed = 0
        self.done = asyncio.Event()

    def on_registered(self, conn: TLibConnection) -> None:
        if conn.application == "TC_B":
            self.tc = conn
        elif conn.application == "Director":
            self.director = conn

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        pass

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        msg = request.message
        if request.name == "RequestRegisterAddress":
            conn.answer(request, "EventRegistered", {"AttributeThisDN": msg["AttributeThisDN"]})
            self.registered.set()
            return
        if request.name != "RequestRouteCall":
            conn.answer(request, "EventACK", {})
            return
        conn_id, dn = msg["AttributeConnID"], msg["AttributeOtherDN"]
        conn.answer(request, "EventRouteUsed", {"AttributeThisDN": "5000",
                                                "AttributeConnID": conn_id,
                                                "AttributeOtherDN": dn})
        assert self.tc is not None
        self.tc.send_event("EventRinging", {"AttributeThisDN": dn, "AttributeConnID": conn_id})
        self.tc.send_event("EventReleased", {"AttributeThisDN": dn, "AttributeConnID": conn_id})
        self.routed += 1
        self.next_call()

    def next_call(self) -> None:
        if self.routed + self.failed >= self.calls:
            self.done.set()
            return
        if self.sent < self.calls and self.director is not None:
            self.sent += 1
            self.director.send_event("EventRouteRequest", {
                "AttributeThisDN": "5000", "AttributeConnID": f"{self.sent:016x}",
                "AttributeDNIS": "5000", "AttributeANI": "+15550100"})

    def start_calls(self) -> None:
        for _ in range(self.window):
            self.next_call()


def spawn(config: Path, kind: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "daemons.cli", kind, "--config", str(config),
                             "--name", name, "--log-level", "warning"], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "SIPCLUSTER_STATE_DIR": str(config.parent)})


async def routed_run(calls: int, agents: int, window: int, tmp: Path) -> dict[str, Any]:
    ports = {k: free_port(HOST) for k in ("sip", "default", "tc", "tchttp", "director")}
    config = tmp / "cluster.toml"
    config.write_text(cluster_text(ports, agents))
    node = Node(calls, window)
    await node.server.listen(HOST, ports["default"])
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {}
    try:
        tc_log = tmp / "tc.log"
        procs.append(spawn(config, "t-controller", "TC_B", tc_log))
        deadline = time.monotonic() + 30
        while node.tc is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the t-controller did not link to the node; see its log")
            await asyncio.sleep(0.05)
        desk = await TLibClient.connect(HOST, ports["tc"], "Cluster", "legacy")
        for n in range(agents):
            dn = str(10000 + n)
            await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
            answer = await desk.request("RequestAgentLogin", AttributeThisDN=dn,
                                        AttributeAgentID=f"a{n}", AttributeAgentWorkMode="AutoIn")
            assert answer["message"] == "EventAgentLogin", answer
        dir_log = tmp / "director.log"
        director = spawn(config, "director", "Director", dir_log)
        procs.append(director)
        async with asyncio.timeout(30):
            await node.registered.wait()
        await asyncio.sleep(2.0)  # the director has registered the agent DNs
        proc = psutil.Process(director.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        started = time.perf_counter()
        node.start_calls()
        try:
            async with asyncio.timeout(max(60.0, calls / 20)):
                await node.done.wait()
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - started
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        result = {"calls": calls, "routed": node.routed, "failed": calls - node.routed,
                  "calls_per_s": node.routed / elapsed,
                  "director_cpu_s_per_1000": cpu / max(1, node.routed) * 1000}
        await desk.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        await node.server.close()
    return result


# -- monitored servers polled -----------------------------------------------------------


class MonitoredServer:
    """One site's director-port as a Director Server sees it: a report per query."""

    def __init__(self, name: str, available: int) -> None:
        self.server = TLibServer(self, application_name=name, port_name="director-port")
        self.report = SiteReport(name, {ANY_SKILL: available, "sales": available}, available,
                                 {}).to_map()
        self.answered = 0

    def on_registered(self, conn: TLibConnection) -> None:
        pass

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        pass

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        self.answered += 1
        conn.answer(request, "EventAddressInfo", {
            "AttributeThisDN": request.message["AttributeThisDN"],
            "AttributeAddressInfoStatus": self.report["available"][ANY_SKILL],
            "AttributeExtensions": self.report})


def fresh_sites(port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/status/director", timeout=5) as resp:
        sites = json.loads(resp.read()).get("sites", {})
    return sum(1 for s in sites.values() if s["state"] == "fresh")


async def monitored_run(count: int, seconds: float, tmp: Path) -> dict[str, Any]:
    ports = {k: free_port(HOST) for k in ("sip", "default", "tc", "director")}
    servers = [MonitoredServer(f"Site{n}", 1 + n % 20) for n in range(count)]
    sites = []
    for n, server in enumerate(servers):
        port = free_port(HOST)
        await server.server.listen(HOST, port)
        sites.append(f'\n[applications.Director.options.monitored-servers.Site{n}]\n'
                     f'address = "{HOST}:{port}"\nroute-to = "{9000 + n}"\n'
                     f'\n[dns.{9000 + n}]\ntype = "Extension"\n'
                     f'contact = "sip:{9000 + n}@127.0.208.9:5060"\n')
    config = tmp / "cluster.toml"
    text = cluster_text({**ports, "tchttp": free_port(HOST)}, 1)
    text = text.replace('site-preference = false\n', 'spread = "monitored-sites"\n').replace(
        '[applications.Director.options.strategies.8000]',
        '[applications.Director.options]\nstore = "none"\nreport-interval = 1\n\n'
        '[applications.Director.options.strategies.8000]')
    config.write_text(text + "".join(sites))
    director = spawn(config, "director", "Director", tmp / "director.log")
    result: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(fresh_sites, ports["director"]) == count:
                    break
            if time.monotonic() > deadline or director.poll() is not None:
                raise RuntimeError(f"not every monitored server reported; see {tmp}")
            await asyncio.sleep(0.2)
        proc = psutil.Process(director.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        answered0 = sum(s.answered for s in servers)
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        result = {"monitored": count,
                  "reports_per_s": (sum(s.answered for s in servers) - answered0) / elapsed,
                  "director_cpu_s_per_s": cpu / elapsed,
                  "fresh_at_end": await asyncio.to_thread(fresh_sites, ports["director"])}
    finally:
        director.terminate()
        try:
            director.wait(timeout=10)
        except subprocess.TimeoutExpired:
            director.kill()
        for server in servers:
            await server.server.close()
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    decisions = [decision_run(args.agents, args.sites, args.decisions, seed)
                 for seed in range(args.runs)]
    p99 = statistics.median(d["p99_ms"] for d in decisions)
    p50 = statistics.median(d["p50_ms"] for d in decisions)
    print(f"## director routing decision ({args.agents:,} agents, {args.sites} sites, "
          f"{args.decisions:,} decisions x {args.runs} runs)\n")
    print("| run | p50 ms | p99 ms | no agent |\n|---|---|---|---|")
    for n, d in enumerate(decisions):
        print(f"| {n + 1} | {d['p50_ms']:.4f} | {d['p99_ms']:.4f} | {d['no_agent']} |")
    print(f"\nmedian p99 {p99:.4f} ms (target < {DECISION_TARGET_MS:g} ms): "
          f"{'met' if p99 < DECISION_TARGET_MS else 'NOT met'}\n")
    spread = {policy: [spread_run(args.monitored, args.spread_calls, seed, policy)
                       for seed in range(args.runs)]
              for policy in ("availability", "round-robin")}
    print(f"## calls spread across {args.monitored} monitored sites ({args.spread_calls:,} "
          f"calls x {args.runs} runs, report every {REPORT_INTERVAL:g} s)\n")
    print("| policy | run | agents' call share max/min (max, min) | calls with no free agent "
          "at their site | mean wait s | pick p99 ms |\n|---|---|---|---|---|---|")
    for policy, results in spread.items():
        for n, r in enumerate(results):
            print(f"| {policy} | {n + 1} | {r['share_max_min']:.2f} ({r['share_max']}, "
                  f"{r['share_min']}) | {r['no_agent_at_site']} | {r['mean_wait_s']:.3f} | "
                  f"{r['pick_p99_ms']:.4f} |")
    med = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in spread.items()}
    print(f"\nmedian share max/min {med['availability']['share_max_min']:.2f} by availability "
          f"vs {med['round-robin']['share_max_min']:.2f} round-robin; calls with no free "
          f"agent at their site {med['availability']['no_agent_at_site']:.0f} vs "
          f"{med['round-robin']['no_agent_at_site']:.0f}\n")
    polls = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-director-") as tmp:
            polls.append(await monitored_run(args.monitored, args.poll_seconds, Path(tmp)))
    print(f"## a Director Server polling {args.monitored} monitored servers every second "
          f"({args.poll_seconds:g} s x {args.runs} runs)\n")
    print("| run | reports/s | director CPU s per s | fresh at the end |\n|---|---|---|---|")
    for n, r in enumerate(polls):
        print(f"| {n + 1} | {r['reports_per_s']:.1f} | {r['director_cpu_s_per_s']:.4f} | "
              f"{r['fresh_at_end']} / {r['monitored']} |")
    poll_cpu = statistics.median(r["director_cpu_s_per_s"] for r in polls)
    print(f"\nmedian {poll_cpu:.4f} CPU s per second for {args.monitored} sites\n")
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-director-") as tmp:
            runs.append(await routed_run(args.calls, args.routing_agents, args.window,
                                         Path(tmp)))
    print(f"## calls routed per second through one director ({args.routing_agents} agents, "
          f"{args.window} calls outstanding, reserve then route)\n")
    print("| run | routed | failed | calls/s | director CPU s / 1,000 |\n|---|---|---|---|---|")
    for n, r in enumerate(runs):
        print(f"| {n + 1} | {r['routed']} | {r['failed']} | {r['calls_per_s']:.0f} | "
              f"{r['director_cpu_s_per_1000']:.3f} |")
    rate = statistics.median(r["calls_per_s"] for r in runs)
    cpu = statistics.median(r["director_cpu_s_per_1000"] for r in runs)
    failed = sum(r["failed"] for r in runs)
    print(f"\nmedian {rate:.0f} calls/s, {cpu:.3f} CPU s per 1,000 calls, {failed} failed")
    return {"agents": args.agents, "sites": args.sites, "decision_p50_ms": p50,
            "decision_p99_ms": p99, "decision_target_ms": DECISION_TARGET_MS,
            "routed_calls_per_s": rate, "director_cpu_s_per_1000": cpu,
            "routed_failed": failed, "routing_agents": args.routing_agents,
            "monitored_sites": args.monitored,
            "spread_share_max_min": med["availability"]["share_max_min"],
            "spread_share_max_min_round_robin": med["round-robin"]["share_max_min"],
            "spread_no_agent_at_site": med["availability"]["no_agent_at_site"],
            "spread_no_agent_at_site_round_robin": med["round-robin"]["no_agent_at_site"],
            "spread_mean_wait_s": med["availability"]["mean_wait_s"],
            "spread_mean_wait_s_round_robin": med["round-robin"]["mean_wait_s"],
            "spread_pick_p99_ms": med["availability"]["pick_p99_ms"],
            "monitored_poll_cpu_s_per_s": poll_cpu,
            "monitored_reports_per_s": statistics.median(r["reports_per_s"] for r in polls),
            "monitored_fresh_at_end": min(r["fresh_at_end"] for r in polls)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--routing-agents", type=int, default=200)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--monitored", type=int, default=100)
    parser.add_argument("--spread-calls", type=int, default=30000)
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    configure_logging("warning")
    figures = asyncio.run(main(parser.parse_args()))
    print("RESULT " + json.dumps(figures))
