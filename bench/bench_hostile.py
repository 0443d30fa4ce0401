"""Hostile clients against the daemons as processes: memory and service under
the probes that once grew them without bound.

* **never reads, keeps asking** (t-controller TCport): a client registers,
  shrinks its receive buffer and writes ``--requests`` RequestRegisterAddress
  frames without reading an answer. Before output buffers were bounded the
  t-controller read them all and queued every answer (55 -> 142 MB for
  300,000). Now it stops reading such a client past 256 KiB queued; the
  figure is how many requests it took, its RSS before and at its peak, and
  the round trips of a well-behaved desktop meanwhile.
* **registered desktop that does not read** (t-controller TCport): a client
  registers DN 1001 and reads nothing while the node link (played by this
  script, as fast as the t-controller takes them in) sends ``--events`` call
  events for 1001, then three times as many (before: +65 MB for 100,000, and
  growing with the count). Past 16 MiB queued it is dropped
  (``tlib_slow_consumers_total{outcome="dropped"}``); a desktop that reads,
  on the same DN, must get every event. The same events to the reading
  desktop alone give the working set of the traffic itself.
* **DNS burst** (``sipcluster geo-dns``): ``--queries`` SRV queries sent
  unpaced from one socket; answers received, the kernel's receive-buffer
  drops (``sipcluster_geo_dns_udp_receive_drops``) and the server's RSS.

Each probe runs ``--runs`` times on fresh daemons; medians are printed and the
last line is ``RESULT {json}``. Exit status 1 when a well-behaved client was
not served or a probe's limit did not hold.

Usage: ``.venv/bin/python bench/bench_hostile.py [--requests 300000]
[--events 100000] [--queries 5000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import dns.message
import dns.rdatatype
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tcontroller import (  # noqa: E402
    CONFIG,
    EVENT,
    Node,
    counting_desktop,
    free_port,
    wait_healthy,
)

from daemons.runtime.tlib_client import TLibClient  # noqa: E402
from daemons.runtime.tlib_server import TLibServer  # noqa: E402
from protocols.tlib.framing import encode_frame  # noqa: E402

MB = 1024 * 1024


def metric(http_port: int, name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; ``peak`` in bytes."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak = proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return int(self.peak)


def terminate(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then the exit status; -9 when it had to be killed after 10 s."""
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


class TController:
    """``sipcluster t-controller`` in its own process, its node link played here."""

    async def __aenter__(self) -> TController:
        self.node = Node()
        self.server = TLibServer(self.node, application_name="SIPS_1",
                                 port_name="default-port")
        _, node_port = await self.server.listen("127.0.0.1", 0)
        self.tc_port, self.http_port = free_port(), free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
        config = self.workdir / "cluster.toml"
        config.write_text(CONFIG.format(sip_port=free_port(), node_port=node_port,
                                        tc_port=self.tc_port, http_port=self.http_port))
        self.log = (self.workdir / "tc.log").open("wb")
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "daemons.cli", "t-controller", "--config", str(config),
             "--name", "TC_1", "--log-format", "json"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        await asyncio.to_thread(wait_healthy, self.http_port, self.proc)
        async with asyncio.timeout(10):
            await self.node.up.wait()
        self.ps = psutil.Process(self.proc.pid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exit_code = await asyncio.to_thread(terminate, self.proc)
        self.log.close()
        await self.server.close()

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)


def register_frames(app: str) -> bytes:
    return encode_frame({"message": "RequestRegisterClient", "AttributeReferenceID": 1,
                         "AttributeApplicationName": app, "AttributeClientType": "legacy",
                         "AttributeProtocolVersion": 1})


def never_reading_socket(port: int, app: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(register_frames(app))
    return sock


def write_until_blocked(sock: socket.socket, frames: list[bytes], patience: float) -> int:
    """Write frames until all are written or the server has taken nothing for
    ``patience`` seconds; how many frames went in whole."""
    sock.settimeout(patience)
    sent = 0
    try:
        for frame in frames:
            sock.sendall(frame)
            sent += 1
    except (TimeoutError, OSError):
        pass
    return sent


async def round_trips(client: TLibClient, count: int) -> dict[str, float]:
    rtts = []
    for i in range(count):
        name = "RequestAgentNotReady" if i % 2 == 0 else "RequestAgentReady"
        t0 = time.perf_counter()
        answer = await asyncio.wait_for(client.request(name, AttributeThisDN="1001"), 5.0)
        rtts.append(time.perf_counter() - t0)
        if answer["message"] == "EventError":
            raise RuntimeError(answer)
    rtts.sort()
    return {"p50_ms": rtts[len(rtts) // 2] * 1000,
            "p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1000,
            "answered": float(len(rtts))}


async def good_desktop(port: int) -> TLibClient:
    client = await TLibClient.connect("127.0.0.1", port, "bench-good", addp_timeout=None)
    await client.request("RequestRegisterAddress", AttributeThisDN="1001")
    login = await client.request("RequestAgentLogin", AttributeThisDN="1001",
                                 AttributeAgentID="bench")
    assert login["message"] == "EventAgentLogin", login
    return client


async def probe_requests(count: int) -> dict[str, Any]:
    async with TController() as tc:
        client = await good_desktop(tc.tc_port)
        await round_trips(client, 100)  # warm-up
        before = tc.rss()
        frames = [encode_frame({"message": "RequestRegisterAddress",
                                "AttributeReferenceID": 2 + i, "AttributeThisDN": "1001"})
                  for i in range(count)]
        sock = await asyncio.to_thread(never_reading_socket, tc.tc_port, "never-reads")
        peak = PeakRss(tc.ps)
        writer = asyncio.create_task(asyncio.to_thread(write_until_blocked, sock, frames, 3.0))
        during = await round_trips(client, 500)  # served while the probe writes
        taken = await writer
        peak_rss = peak.stop()
        paused = metric(tc.http_port, "sipcluster_tlib_slow_consumers_total", outcome="paused")
        sock.close()
        await asyncio.sleep(0.5)
        after = await round_trips(client, 100)
        await client.close()
    return {"requests_offered": count, "requests_taken": taken,
            "rss_before_mb": before / MB, "rss_peak_mb": peak_rss / MB,
            "rss_growth_mb": (peak_rss - before) / MB, "paused": paused,
            "good_p99_ms_during": during["p99_ms"], "good_answered": during["answered"]
            + after["answered"], "good_expected": 600.0, "exit_code": tc.exit_code}


async def probe_events(count: int, slow: bool = True) -> dict[str, Any]:
    """``count`` events for DN 1001 to a desktop that reads them all and (``slow``)
    one that reads nothing."""
    async with TController() as tc:
        good = await counting_desktop(tc.tc_port, 0)
        sock = None
        if slow:
            sock = await asyncio.to_thread(never_reading_socket, tc.tc_port, "does-not-read")
            sock.sendall(encode_frame({"message": "RequestRegisterAddress",
                                       "AttributeReferenceID": 2, "AttributeThisDN": "1001"}))
        await asyncio.sleep(0.5)
        before = tc.rss()
        peak = PeakRss(tc.ps)
        good.reached.clear()
        good.target = good.frames + count
        conn = tc.node.conn
        assert conn is not None
        first = good.frames
        deadline = time.monotonic() + 300
        for i in range(0, count, 500):
            for _ in range(min(500, count - i)):
                conn.send_event("EventEstablished", EVENT)
            await asyncio.sleep(0)
            # as fast as the t-controller takes them in and the reading desktop (this
            # process) reads them: the node link and the desktop's connection are
            # T-Library ports whose bound would drop a peer that falls behind
            while (conn.transport.get_write_buffer_size() > MB
                   or i - (good.frames - first) > 20_000):
                if time.monotonic() > deadline:
                    raise RuntimeError("the events stopped flowing")
                await asyncio.sleep(0.005)
        conn.send_event("EventReleased", EVENT)
        try:
            async with asyncio.timeout(120):
                await good.reached.wait()
            missing = 0
        except TimeoutError:
            missing = good.target - good.frames
        await asyncio.sleep(1.0)
        peak_rss = peak.stop()
        after = tc.rss()
        dropped = metric(tc.http_port, "sipcluster_tlib_slow_consumers_total",
                         outcome="dropped")
        if sock is not None:
            sock.close()
        good.transport.close()
    return {"events": count, "rss_before_mb": before / MB, "rss_peak_mb": peak_rss / MB,
            "rss_after_mb": after / MB, "rss_growth_mb": (peak_rss - before) / MB,
            "dropped": dropped, "good_missing": missing, "exit_code": tc.exit_code}


def probe_dns(count: int) -> dict[str, Any]:
    port, http_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-hostile-dns-"))
    log = (workdir / "dns.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "geo-dns", "--config",
         str(ROOT / "deploy" / "etc" / "cluster.toml"), "--listen", f"127.0.0.1:{port}",
         "--http", f"127.0.0.1:{http_port}", "--log-format", "json"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(http_port, proc)
        ps = psutil.Process(proc.pid)
        before = ps.memory_info().rss
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * MB)
        sock.bind(("127.0.0.1", 0))
        queries = []
        for i in range(count):
            q = dns.message.make_query("_sip._udp.spx-srv.cluster.lab", dns.rdatatype.SRV)
            q.id = i % 65536
            queries.append(q.to_wire())
        t0 = time.perf_counter()
        for wire in queries:
            sock.sendto(wire, ("127.0.0.1", port))
        sent_s = time.perf_counter() - t0
        sock.settimeout(2.0)
        answered = 0
        try:
            while answered < count:
                sock.recv(4096)
                answered += 1
        except TimeoutError:
            pass
        sock.close()
        drops = metric(http_port, "sipcluster_geo_dns_udp_receive_drops")
        after = ps.memory_info().rss
    finally:
        code = terminate(proc)
        log.close()
    return {"queries": count, "answered": answered, "kernel_drops": drops,
            "send_s": sent_s, "rss_before_mb": before / MB, "rss_after_mb": after / MB,
            "exit_code": code}


def med(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in runs)), 2)


async def main(args: argparse.Namespace) -> int:
    req: list[dict[str, Any]] = []
    ev: list[dict[str, Any]] = []
    dn: list[dict[str, Any]] = []
    for run in range(args.runs):
        r = await probe_requests(args.requests)
        req.append(r)
        print(f"never reads, {args.requests:,} requests, run {run + 1}: took "
              f"{r['requests_taken']:,}, RSS {r['rss_before_mb']:.1f} -> peak "
              f"{r['rss_peak_mb']:.1f} MB (+{r['rss_growth_mb']:.1f}), paused "
              f"{r['paused']:.0f}; good desktop p99 {r['good_p99_ms_during']:.2f} ms, "
              f"{r['good_answered']:.0f} of {r['good_expected']:.0f} answered, "
              f"exit {r['exit_code']}", flush=True)
        e = await probe_events(args.events)
        e3 = await probe_events(3 * args.events)
        alone = await probe_events(args.events, slow=False)
        e["rss_growth_mb_3x"] = e3["rss_growth_mb"]
        e["rss_growth_mb_reading_only"] = alone["rss_growth_mb"]
        e["good_missing"] += e3["good_missing"] + alone["good_missing"]
        e["dropped_3x"] = e3["dropped"]
        e["exit_code"] = e["exit_code"] or e3["exit_code"] or alone["exit_code"]
        ev.append(e)
        for label, x in ((f"{args.events:,}", e), (f"{3 * args.events:,}", e3)):
            print(f"desktop does not read, {label} events, run {run + 1}: RSS "
                  f"{x['rss_before_mb']:.1f} -> peak {x['rss_peak_mb']:.1f} MB "
                  f"(+{x['rss_growth_mb']:.1f}), after {x['rss_after_mb']:.1f}; dropped "
                  f"{x['dropped']:.0f}; reading desktop missing {x['good_missing']} events, "
                  f"exit {x['exit_code']}", flush=True)
        print(f"the same {args.events:,} events to the reading desktop alone, run {run + 1}: "
              f"RSS +{alone['rss_growth_mb']:.1f} MB at the peak", flush=True)
        d = await asyncio.to_thread(probe_dns, args.queries)
        dn.append(d)
        print(f"DNS burst of {args.queries:,}, run {run + 1}: answered {d['answered']:,}, "
              f"kernel drops {d['kernel_drops']:.0f}, sent in {d['send_s'] * 1000:.0f} ms, "
              f"RSS {d['rss_before_mb']:.1f} -> {d['rss_after_mb']:.1f} MB, "
              f"exit {d['exit_code']}", flush=True)
    failures = []
    if any(r["good_answered"] < r["good_expected"] for r in req):
        failures.append("a well-behaved desktop was not answered during the request probe")
    if any(r["requests_taken"] >= args.requests for r in req):
        failures.append("the t-controller read every request of a client that never reads")
    if any(e["good_missing"] for e in ev):
        failures.append("the reading desktop missed events")
    if any(e["dropped"] < 1 or e["dropped_3x"] < 1 for e in ev):
        failures.append("the desktop that does not read was not dropped")
    if any(x["exit_code"] != 0 for x in [*req, *ev, *dn]):
        failures.append("a daemon did not stop cleanly on SIGTERM")
    result = {
        "runs": args.runs,
        "requests_offered": args.requests,
        "requests_taken": med(req, "requests_taken"),
        "requests_rss_growth_mb": med(req, "rss_growth_mb"),
        "requests_good_p99_ms": med(req, "good_p99_ms_during"),
        "events": args.events,
        "events_rss_growth_mb": med(ev, "rss_growth_mb"),
        "events_3x_rss_growth_mb": med(ev, "rss_growth_mb_3x"),
        "events_reading_only_rss_growth_mb": med(ev, "rss_growth_mb_reading_only"),
        "events_dropped": med(ev, "dropped"),
        "events_good_missing": med(ev, "good_missing"),
        "dns_queries": args.queries,
        "dns_answered": med(dn, "answered"),
        "dns_kernel_drops": med(dn, "kernel_drops"),
        "dns_rss_growth_mb": round(statistics.median(
            x["rss_after_mb"] - x["rss_before_mb"] for x in dn), 2),
        "before_fix": {"requests_rss_growth_mb": 87, "events_rss_growth_mb": 65,
                       "dns_answered": 300, "dns_kernel_drops": 4728},
        "failures": failures,
    }
    for failure in failures:
        print(f"FAILED: {failure}")
    print("RESULT " + json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    sys.exit(asyncio.run(main(parser.parse_args())))
