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

* **storm**: two nodes (sip-server + t-controller) in two data centres and
  ``sipcluster director``, ``--storm-agents`` SIPp agents (answer at once)
  logged in from T-Library desktops, a SIPp caller offering ``--storm-calls``
  calls at ``--storm-rate`` calls/s into routing point 5000 (it hangs up
  200 ms after the answer). Beside it, the same agents' phones and caller
  through Kamailio's dispatcher (``bench/kamailio/dispatcher.cfg``: algorithm
  10, call load, ``maxload=1`` per agent; 503 when every agent is busy), its
  log read for errors after every run. Figures: calls answered per second,
  failed calls, double offers (an INVITE reaching a phone before the BYE of
  its previous call, from the phones' message traces), agents' share
  max/min, CPU seconds per 1,000 answered calls (every daemon of the side)
  and the cores it kept busy.
* **convergence**: after the storm, a DC2 agent goes Not Ready / Ready at
  its own t-controller ``--flips`` times; time from the request until DC1's
  t-controller (``/status/dns``) and the director (``/status/director``)
  show the change (polled every 2 ms).

The last line is ``RESULT {json}``.

Usage: ``.venv/bin/python bench/bench_director.py [--agents 5000] [--sites 10]
[--decisions 20000] [--calls 2000] [--routing-agents 200] [--window 50]
[--monitored 100] [--spread-calls 30000] [--poll-seconds 10] [--runs 3]
[--storm-calls 1000] [--storm-rate 200] [--storm-agents 20] [--flips 20]
[--kamailio-workers 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import heapq
import json
import os
import random
import re
import shutil
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
sys.path.insert(0, str(ROOT / "bench"))

import bench_proxy as bp  # noqa: E402

from daemons.director.queue import AgentPool  # noqa: E402
from daemons.director.sites import ANY_SKILL, SiteBoard, SiteReport  # noqa: E402
from daemons.director.strategy import Strategy  # noqa: E402
from daemons.runtime.logs import configure_logging  # noqa: E402
from daemons.runtime.tlib_client import TLibClient  # noqa: E402
from daemons.runtime.tlib_server import TLibConnection, TLibServer  # noqa: E402
from protocols.tlib.session import RequestReceived  # noqa: E402
from tests.support.two_sites import (  # noqa: E402
    extensions_text,
    head_text,
    node_ports,
    nodes_text,
)

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


# -- storm: SIPp agents and a SIPp caller, the director beside Kamailio's dispatcher ------

#: the storm's two data centres (nodes .11, director .80, caller .200, agents .1NN)
STORM_DC = {"dc1": "127.0.197.", "dc2": "127.0.198."}
KAMAILIO_HOST = "127.0.197.20"
SCENARIOS = ROOT / "tests" / "interop" / "scenarios"
CALLER_XML = ROOT / "tests" / "integration" / "scenarios" / "uac_inbound.xml"
KAMAILIO_ERRORS = (" ERROR: ", " CRITICAL: ", " ALERT: ", "out of mem", "could not allocate")


def storm_agents(count: int) -> dict[str, tuple[str, str]]:
    """Agent DN -> (its phone's address, data centre); the sites alternate."""
    agents = {}
    for n in range(1, count + 1):
        geo = "dc1" if n % 2 else "dc2"
        agents[str(3000 + n)] = (STORM_DC[geo] + str(100 + n), geo)
    return agents


def storm_cluster_text(ports: dict[str, int], agents: dict[str, tuple[str, str]]) -> str:
    text = head_text(domain="bench.test", tserver="""
router-timeout = 60
default-dn = "3999"
request-collection-time = 0
agent-reservation-timeout = 3
wrap-up-time = 0
logout-on-disconnect = false
""") + """
[dns.3999]
type = "Extension"
contact = "sip:3999@127.0.197.99:5060"
"""
    text += extensions_text(((dn, host) for dn, (host, _) in agents.items()), ports)
    text += nodes_text(STORM_DC, ports)
    text += f"""
[applications.Director]
kind = "director"
host = "127.0.197.80"
geo-location = "dc1"
http-port = {ports["director"]}

[applications.Director.options]
store = "none"

[applications.Director.options.skills]
""" + "".join(f"a{dn} = {{ sales = 3 }}\n" for dn in agents) + """
[applications.Director.options.strategies.8000]
routing-points = ["5000"]
skill = "sales"
order = "longest-idle"
site-preference = false
"""
    return text


def sipp(args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([shutil.which("sipp") or "sipp", *args, "-nostdin"], cwd=workdir,
                            stdout=(workdir / "stdout.txt").open("wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, "TERM": "dumb"})


def agent_phones(agents: dict[str, tuple[str, str]], ports: dict[str, int], calls: int,
                 work: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Each agent's SIPp UAS: 180, 200 at once, ACK, BYE; every message traced."""
    return {dn: sipp(["-sf", str(SCENARIOS / "node_uas_answer.xml"), "-i", host,
                      "-p", str(ports[f"phone_{dn}"]), "-m", str(calls), "-d", "0",
                      "-trace_msg"], work / dn)
            for dn, (host, _) in agents.items()}


def offers(workdir: Path) -> tuple[int, int]:
    """(INVITEs, double offers) an agent's phone received, from its message trace:
    a double offer is an INVITE that came while another call of the phone had
    not yet got its BYE."""
    calls: set[str] = set()
    on: set[str] = set()
    double = 0
    for log in workdir.glob("*_messages.log"):
        for block in re.split(r"\n?-{20,} [^\n]*\n", log.read_text(errors="replace")):
            head, _, rest = block.partition("\n")
            if "message received" not in head:
                continue
            body = rest.lstrip()
            match = re.search(r"^Call-ID:\s*(\S+)", body, re.M | re.I)
            if match is None:
                continue
            call = match.group(1)
            if body.startswith("INVITE ") and call not in calls:
                calls.add(call)
                double += bool(on)
                on.add(call)
            elif body.startswith(("BYE ", "CANCEL ")):
                on.discard(call)
    return len(calls), double


def tree_cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for p in (proc, *proc.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    total += sum(p.cpu_times()[:2])
    return total


def caller_stats(workdir: Path) -> dict[str, str]:
    stat = workdir / "stat.csv"
    rows = list(csv.DictReader(stat.open(), delimiter=";")) if stat.exists() else []
    return rows[-1] if rows else {}


def storm_figures(side: str, agents: dict[str, tuple[str, str]], work: Path,
                  caller: subprocess.Popen[bytes], caller_dir: Path,
                  procs: list[psutil.Process], calls: int, rate: int,
                  limit: float) -> dict[str, Any]:
    cpu0, started = tree_cpu(procs), time.perf_counter()
    try:
        caller.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        caller.kill()
        caller.wait()
    elapsed = time.perf_counter() - started
    cpu = tree_cpu(procs) - cpu0
    time.sleep(1.0)  # the agents' last BYEs are traced
    stats = caller_stats(caller_dir)
    answered = int(stats.get("SuccessfulCall(C)", 0) or 0)
    per_agent = {dn: offers(work / dn) for dn in agents}
    shares = [n for n, _ in per_agent.values()]
    return {"side": side, "offered": calls, "rate": rate, "answered": answered,
            "failed": calls - answered, "elapsed_s": elapsed,
            "calls_per_s": answered / elapsed,
            "double_offers": sum(d for _, d in per_agent.values()),
            "share_max": max(shares), "share_min": min(shares),
            "share_max_min": max(shares) / min(shares) if min(shares) else float("inf"),
            "cpu_s_per_1000": cpu / max(1, answered) * 1000, "cores_busy": cpu / elapsed}


def caller(target: str, calls: int, rate: int, work: Path) -> subprocess.Popen[bytes]:
    return sipp([target, "-sf", str(CALLER_XML), "-i", "127.0.197.200", "-p",
                 str(free_port("127.0.197.200")), "-s", "5000", "-set", "caller", "+15550100",
                 "-set", "domain", "bench.test", "-r", str(rate), "-m", str(calls),
                 "-l", str(calls), "-trace_stat", "-stf", str(work / "stat.csv"), "-fd", "1",
                 "-timeout", "120s", "-timeout_error"], work)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def storm_ours(calls: int, rate: int, count: int, flips: int,
                     tmp: Path) -> tuple[dict[str, Any], list[float], list[float]]:
    """The director's storm, then agent state convergence across the sites:
    (figures, seconds until TC_A saw a DC2 agent's change, until the director did)."""
    agents = storm_agents(count)
    ports = node_ports(free_port, STORM_DC)
    for dn, (host, _) in agents.items():
        ports[f"phone_{dn}"] = free_port(host)
    ports["director"] = free_port("127.0.197.80")
    config = tmp / "cluster.toml"
    config.write_text(storm_cluster_text(ports, agents))
    daemons: list[subprocess.Popen[bytes]] = []
    phones = agent_phones(agents, ports, calls, tmp)
    desks: dict[str, TLibClient] = {}
    try:
        for kind, n in (("sip-server", "A"), ("sip-server", "C"),
                        ("t-controller", "A"), ("t-controller", "C")):
            name = f"{'SIPS' if kind == 'sip-server' else 'TC'}_{n}"
            daemons.append(spawn(config, kind, name, tmp / f"{name}.log"))
        for n, geo in (("A", "dc1"), ("C", "dc2")):
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError):
                    desks[n] = await TLibClient.connect(
                        STORM_DC[geo] + "11", ports[f"tc_{n}"], "Cluster", "legacy",
                        local_addr=(STORM_DC[geo] + "90", 0))
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"TC_{n} did not start; see {tmp}")
                await asyncio.sleep(0.2)
        daemons.append(spawn(config, "director", "Director", tmp / "director.log"))
        for dn, (_, geo) in agents.items():
            desk = desks["A" if geo == "dc1" else "C"]
            deadline = time.monotonic() + 30
            while (await desk.request("RequestRegisterAddress", {"AttributeThisDN": dn})
                   )["message"] != "EventRegistered" or tc_dn(ports, dn).get(
                       "dn-state") != "in-service":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{dn} not in service; see {tmp}")
                await asyncio.sleep(0.2)
            login = await desk.request("RequestAgentLogin", {
                "AttributeThisDN": dn, "AttributeAgentID": f"a{dn}",
                "AttributeAgentWorkMode": "AutoIn"})
            assert login["message"] == "EventAgentLogin", login
        deadline = time.monotonic() + 30
        while ready_at_director(ports) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the director does not see the agents; see {tmp}")
            await asyncio.sleep(0.2)
        run = caller(f"{STORM_DC['dc1']}11:{ports['sip_A']}", calls, rate, tmp / "caller")
        figures = await asyncio.to_thread(
            storm_figures, "director", agents, tmp, run, tmp / "caller",
            [psutil.Process(p.pid) for p in daemons], calls, rate, calls / rate + 90)
        # convergence: a DC2 agent's state changed at its own t-controller (TC_C)
        dn = next(d for d, (_, geo) in agents.items() if geo == "dc2")
        at_tc, at_director = [], []
        for flip in range(flips):
            ready = flip % 2 == 1
            before = ready_at_director(ports)
            state_before = tc_dn(ports, dn).get("agent-state")
            sent = time.perf_counter()
            await desks["C"].request("RequestAgentReady" if ready else "RequestAgentNotReady",
                                     {"AttributeThisDN": dn})
            seen_tc = seen_dir = None
            while (seen_tc is None or seen_dir is None) and time.perf_counter() - sent < 10:
                now = time.perf_counter()
                if seen_tc is None and tc_dn(ports, dn).get("agent-state") != state_before:
                    seen_tc = now - sent
                if seen_dir is None and ready_at_director(ports) != before:
                    seen_dir = now - sent
                await asyncio.sleep(0.002)
            at_tc.append(seen_tc if seen_tc is not None else float("inf"))
            at_director.append(seen_dir if seen_dir is not None else float("inf"))
            await asyncio.sleep(0.2)
        return figures, at_tc, at_director
    finally:
        for desk in desks.values():
            with contextlib.suppress(Exception):
                await desk.close()
        stop_all([*phones.values(), *reversed(daemons)])


def tc_dn(ports: dict[str, int], dn: str) -> dict[str, Any]:
    """The DN's state at DC1's t-controller (TC_A)."""
    with urllib.request.urlopen(f"http://{STORM_DC['dc1']}11:{ports['tchttp_A']}/status/dns",
                                timeout=5) as resp:
        return dict(json.loads(resp.read())["dns"].get(dn) or {})


def ready_at_director(ports: dict[str, int]) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.197.80:{ports['director']}/status/director",
                                    timeout=5) as resp:
            sites = json.loads(resp.read()).get("agents", {})
    except OSError:
        return -1
    return sum(s.get("ready", 0) for s in sites.values())


def kamailio_bin() -> str | None:
    found = shutil.which("kamailio")
    return found or ("/usr/sbin/kamailio" if os.path.exists("/usr/sbin/kamailio") else None)


def storm_kamailio(calls: int, rate: int, count: int, workers: int,
                   tmp: Path) -> dict[str, Any]:
    """The same agents' phones and caller through Kamailio's dispatcher (algorithm 10)."""
    agents = storm_agents(count)
    ports = {f"phone_{dn}": free_port(host) for dn, (host, _) in agents.items()}
    ds_list = tmp / "dispatcher.list"
    ds_list.write_text("".join(f"1 sip:{host}:{ports[f'phone_{dn}']} 0 0 "
                               f"duid=a{dn};maxload=1\n" for dn, (host, _) in agents.items()))
    port = free_port(KAMAILIO_HOST)
    log = tmp / "kamailio.log"
    kam = subprocess.Popen(
        # TLSF by default: Debian's (qm) is Kamailio's troubleshooting allocator
        [kamailio_bin() or "kamailio", "-DD", "-E", *bp.kamailio_memory_args(256, 16),
         "-n", str(workers),
         "-f", str(ROOT / "bench" / "kamailio" / "dispatcher.cfg"),
         "-l", f"udp:{KAMAILIO_HOST}:{port}", "-Y", str(tmp), "-A", f'DS_LIST="{ds_list}"'],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    phones = agent_phones(agents, ports, calls, tmp)
    try:
        time.sleep(1.5)
        if kam.poll() is not None:
            raise RuntimeError(f"kamailio did not start:\n{log.read_text()[-2000:]}")
        run = caller(f"{KAMAILIO_HOST}:{port}", calls, rate, tmp / "caller")
        figures = storm_figures("kamailio", agents, tmp, run, tmp / "caller",
                                [psutil.Process(kam.pid)], calls, rate, calls / rate + 90)
    finally:
        stop_all([*phones.values(), kam])
    errors = [line for line in log.read_text(errors="replace").splitlines()
              if any(mark in line for mark in KAMAILIO_ERRORS)]
    figures["kamailio_log_errors"] = len(errors)
    figures["kamailio_log_sample"] = errors[:3]
    return figures


async def storm_section(args: argparse.Namespace) -> dict[str, Any]:
    """The storm side by side (director, Kamailio's dispatcher) and the convergence."""
    if args.storm_calls <= 0:
        return {}
    if shutil.which("sipp") is None:
        print("sipp not installed: no storm figures")
        return {}
    runs: dict[str, list[dict[str, Any]]] = {"director": [], "kamailio": []}
    at_tc: list[float] = []
    at_director: list[float] = []
    have_kamailio = kamailio_bin() is not None
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-director-") as tmp:
            figures, tc, director = await storm_ours(args.storm_calls, args.storm_rate,
                                                     args.storm_agents, args.flips, Path(tmp))
            runs["director"].append(figures)
            at_tc += tc
            at_director += director
        if have_kamailio:
            with tempfile.TemporaryDirectory(prefix="bench-dispatcher-") as tmp:
                figures = await asyncio.to_thread(
                    storm_kamailio, args.storm_calls, args.storm_rate, args.storm_agents,
                    args.kamailio_workers, Path(tmp))
                runs["kamailio"].append(figures)
                errors = figures["kamailio_log_errors"]
                print(f"kamailio log: {errors} error lines"
                      + (f", e.g. {figures['kamailio_log_sample']}" if errors else ""))
    print(f"\n## a {args.storm_rate} calls/s storm: {args.storm_calls} calls into one routing "
          f"point, {args.storm_agents} SIPp agents over two data centres "
          f"({args.runs} runs per side)\n")
    print("| side | run | answered | failed | calls/s | double offers | agents' share max/min "
          "(max, min) | CPU s / 1,000 calls | cores busy |\n|---|---|---|---|---|---|---|---|---|")
    for side, results in runs.items():
        for n, r in enumerate(results):
            print(f"| {side} | {n + 1} | {r['answered']} | {r['failed']} | "
                  f"{r['calls_per_s']:.1f} | {r['double_offers']} | {r['share_max_min']:.2f} "
                  f"({r['share_max']}, {r['share_min']}) | {r['cpu_s_per_1000']:.2f} | "
                  f"{r['cores_busy']:.2f} |")
    result: dict[str, Any] = {}
    for side, results in runs.items():
        if not results:
            continue
        med = {k: statistics.median(r[k] for r in results)
               for k in ("calls_per_s", "share_max_min", "cpu_s_per_1000", "cores_busy")}
        result.update({f"storm_{side}_calls_per_s": med["calls_per_s"],
                       f"storm_{side}_failed": sum(r["failed"] for r in results),
                       f"storm_{side}_double_offers": sum(r["double_offers"] for r in results),
                       f"storm_{side}_share_max_min": med["share_max_min"],
                       f"storm_{side}_cpu_s_per_1000": med["cpu_s_per_1000"],
                       f"storm_{side}_cores_busy": med["cores_busy"]})
        print(f"\n{side}: median {med['calls_per_s']:.1f} calls/s, share max/min "
              f"{med['share_max_min']:.2f}, {med['cpu_s_per_1000']:.2f} CPU s per 1,000 calls, "
              f"{result[f'storm_{side}_double_offers']} double offers, "
              f"{result[f'storm_{side}_failed']} failed")
    if at_tc:
        finite_tc = sorted(at_tc)
        finite_dir = sorted(at_director)
        result.update({
            "convergence_tc_ms_p50": statistics.median(finite_tc) * 1000,
            "convergence_tc_ms_max": finite_tc[-1] * 1000,
            "convergence_director_ms_p50": statistics.median(finite_dir) * 1000,
            "convergence_director_ms_max": finite_dir[-1] * 1000})
        print(f"\n## agent state convergence ({len(at_tc)} changes of a DC2 agent at TC_C; "
              "HTTP polled every 2 ms)\n")
        print("| seen by | p50 ms | max ms |\n|---|---|---|")
        print(f"| DC1's t-controller (TC_A /status/dns) | "
              f"{result['convergence_tc_ms_p50']:.1f} | {result['convergence_tc_ms_max']:.1f} |")
        print(f"| the director (/status/director) | {result['convergence_director_ms_p50']:.1f} "
              f"| {result['convergence_director_ms_max']:.1f} |")
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
    storm = await storm_section(args)
    return {**storm, "agents": args.agents, "sites": args.sites, "decision_p50_ms": p50,
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
    parser.add_argument("--storm-calls", type=int, default=1000,
                        help="calls of the storm per run and side (0: no storm)")
    parser.add_argument("--storm-rate", type=int, default=200)
    parser.add_argument("--storm-agents", type=int, default=20)
    parser.add_argument("--flips", type=int, default=20,
                        help="agent state changes timed for the convergence, per run")
    parser.add_argument("--kamailio-workers", type=int, default=2)
    parser.add_argument("--kamailio-allocator", choices=bp.KAMAILIO_ALLOCATORS,
                        default=bp.KAMAILIO_ALLOCATORS[0],
                        help="Kamailio's memory manager (-x/-X); qm only to reproduce "
                             "older figures")
    parsed = parser.parse_args()
    bp.KAMAILIO_ALLOCATOR = parsed.kamailio_allocator
    configure_logging("warning")
    figures = asyncio.run(main(parsed))
    print("RESULT " + json.dumps(figures))
