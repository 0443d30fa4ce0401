"""Voicemail under load: concurrent deposit and retrieval calls against a real
feature-server process, with MWI subscribers on every mailbox.

    .venv/bin/python bench/bench_voicemail.py [--sessions 200] [--seconds 20] [--runs 3]
        [--callers sipp|python] [--nice N] [--realtime PRIORITY]

Half the sessions deposit (INVITE ;vm=deposit, the greeting and beep, a few
seconds of G.711, BYE), half retrieve (INVITE ;vm=retrieve, the PIN by RFC
4733, "1" to listen, "7" to delete, BYE), again and again for about
``--seconds``. By default SIPp places the calls (bench/voicemail/*.xml, the
audio and keys from the pcaps sip-tester ships); ``--callers python`` uses the
tests' Python phone instead (heavier on the shared cores). One subscriber per
mailbox takes the NOTIFYs. Figures, medians over ``--runs``, measured by the
feature-server itself and read from its /metrics:

* RTP send jitter: how late each frame left after its 20 ms deadline (p99),
  and the share sent more than 10 ms late;
* CPU seconds of the feature-server process per 1,000 RTP packets (sent +
  received), from /proc/PID/stat;
* MWI: from the deposit (or delete) stored to its NOTIFY sent (p99, bucket bound).

Failures (calls not answered or ended as scripted, client errors) are
reported beside every figure, with the machine's load average. The server
runs on 127.0.115.1, the callers on 127.0.115.10 / .20 / .21.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from daemons.runtime.logs import configure_logging  # noqa: E402
from daemons.runtime.sip_endpoint import Destination  # noqa: E402
from protocols.rtp import g711  # noqa: E402
from protocols.rtp.g711 import Codec  # noqa: E402
from protocols.rtp.tones import tone  # noqa: E402
from tests.daemons.feature_server.voicemail.phone import Phone  # noqa: E402

SERVER = "127.0.115.1"
CLIENT = "127.0.115.10"
FIRST_MAILBOX = 2000
#: the DN whose phone watches every mailbox (delegate of each) and places the calls
WATCHER = "1001"
WATCHER_SECRET = "bench-watcher-secret"
PCAPS = "/usr/share/sip-tester"  # sip-tester's g711a.pcap and dtmf_2833_*.pcap


def free_port(host: str) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return port


def cluster_file(directory: Path, mailboxes: int, sip_port: int, http_port: int) -> Path:
    dns = "".join(f'\n[dns.{FIRST_MAILBOX + i}]\ntype = "Extension"\ncontact = "*"\n'
                  f'password = "bench-{i}-secret"\n' for i in range(mailboxes))
    # the watcher: one DN that may subscribe to every mailbox's summary (mwi-delegates)
    dns += f'\n[dns.{WATCHER}]\ntype = "Extension"\ncontact = "*"\npassword = "{WATCHER_SECRET}"\n'
    delegates = "".join(f'{FIRST_MAILBOX + i} = ["{WATCHER}"]\n' for i in range(mailboxes))
    text = f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
{dns}
[applications.SIPS_1]
kind = "sip-server"
host = "127.0.115.11"
geo-location = "dc1"
sip-port = 5060
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.115.11"
sip-server = "SIPS_1"
tc-port = 7001

[applications.FS_B]
kind = "feature-server"
host = "{SERVER}"
geo-location = "dc1"
http-port = {http_port}
sip-port = {sip_port}

[applications.FS_B.options]
default-pin = "2345"
rtp-ports = "22000-23999"
state-dir = "{directory / 'state'}"

[applications.FS_B.options.mwi-delegates]
{delegates}"""
    path = directory / "cluster.toml"
    path.write_text(text)
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+|\+Inf|NaN)$')


def scrape(http_port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://{SERVER}:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            out[match.group(1), match.group(2) or ""] = float(match.group(3))
    return out


def delta(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float],
          name: str, labels: str = "") -> float:
    return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)


def histogram_quantile(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float],
                       name: str, q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of what was observed between scrapes."""
    buckets = []
    for (metric, labels), value in after.items():
        if metric == f"{name}_bucket":
            le = labels.split('le="')[1].rstrip('"')
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, value - before.get((metric, labels), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= target:
            return bound
    return None


class Load:
    def __init__(self, phone: Phone, dest: Destination, seconds: float) -> None:
        self.phone = phone
        self.dest = dest
        self.deadline = time.monotonic() + seconds
        self.calls = 0
        self.failed = 0
        self.errors = 0
        self.active = 0
        self.peak = 0
        self.samples: list[int] = []
        frames = g711.encode(tone([1850], 3000), Codec.PCMU)
        self.tone = {c: [g711.transcode(frames, Codec.PCMU, c)[i:i + 160]
                         for i in range(0, len(frames), 160)] for c in Codec}

    def uri(self, mailbox: int, mode: str) -> str:
        return f"sip:{mailbox}@{self.dest.host}:{self.dest.port};vm={mode}"

    async def _call(self, mailbox: int, mode: str):  # type: ignore[no-untyped-def]
        call = await self.phone.call(self.uri(mailbox, mode), self.dest, codecs=("PCMU",))
        self.calls += 1
        if call.response.status != 200:
            self.failed += 1
            return None
        self.active += 1
        return call

    async def deposit_loop(self, mailbox: int, delay: float) -> None:
        await asyncio.sleep(delay)
        while time.monotonic() < self.deadline:
            try:
                call = await self._call(mailbox, "deposit")
                if call is None:
                    await asyncio.sleep(0.5)
                    continue
                await asyncio.sleep(1.9)
                await call.play(self.tone[call.codec])
                await call.bye()
                self.active -= 1
                self.phone.calls.pop(call.invite.call_id, None)
            except Exception:
                self.errors += 1
                await asyncio.sleep(0.5)

    async def retrieve_loop(self, mailbox: int, delay: float) -> None:
        await asyncio.sleep(delay)
        while time.monotonic() < self.deadline:
            try:
                call = await self._call(mailbox, "retrieve")
                if call is None:
                    await asyncio.sleep(0.5)
                    continue
                await asyncio.sleep(0.5)
                await call.digits("2345#", gap=0.05)
                await asyncio.sleep(1.0)
                await call.digits("1", gap=0.05)
                await asyncio.sleep(3.0)
                await call.digits("7", gap=0.05)
                await asyncio.sleep(0.5)
                await call.bye()
                self.active -= 1
                self.phone.calls.pop(call.invite.call_id, None)
            except Exception:
                self.errors += 1
                await asyncio.sleep(0.5)


async def sipp_load(load: Load, workdir: Path, mailboxes: int, sessions: int,
                    seconds: float, dest: Destination) -> None:
    """Callers as two SIPp processes (deposits, retrievals) with RFC 4733 and
    G.711 from the pcaps sip-tester ships: far less CPU than Python callers."""
    sipp = shutil.which("sipp") or "sipp"
    pcaps = PCAPS
    inf = workdir / "mailboxes.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{FIRST_MAILBOX + i};\n" for i in range(mailboxes)))
    procs = []
    for index, (mode, count) in enumerate((("deposit", sessions - sessions // 2),
                                           ("retrieve", sessions // 2))):
        scenario = workdir / f"{mode}.xml"
        scenario.write_text((HERE / "voicemail" / f"{mode}.xml").read_text().replace(
            "PCAP_DIR", pcaps))
        calls = max(1, count * max(1, int(seconds / 7.5)))
        address = f"127.0.115.{20 + index}"
        procs.append(await asyncio.create_subprocess_exec(
            sipp, "-sf", str(scenario), "-inf", str(inf), "-i", address, "-p", "0",
            "-mi", address, "-mp", str(42000 + 2 * index), "-l", str(count), "-r", "25",
            "-m", str(calls), "-timeout", f"{int(seconds * 3)}s", "-trace_stat", "-stf",
            str(workdir / f"{mode}.csv"), "-fd", "1", "-nostdin",
            f"{dest.host}:{dest.port}", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, cwd=workdir))
    for proc in procs:
        await proc.wait()
    for mode in ("deposit", "retrieve"):
        rows = (workdir / f"{mode}.csv").read_text().splitlines()
        header = rows[0].split(";")
        last = rows[-1].split(";")
        ok = int(last[header.index("SuccessfulCall(C)")])
        failed = int(last[header.index("FailedCall(C)")])
        load.calls += ok + failed
        load.failed += failed


def server_calls(http_port: int) -> int:
    """Calls in progress at the feature-server (its /healthz voicemail check)."""
    try:
        with urllib.request.urlopen(f"http://{SERVER}:{http_port}/healthz", timeout=2) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return -1
    return int(body.get("checks", {}).get("voicemail", {}).get("calls", -1))


async def sample_server(load: Load, http_port: int, done: asyncio.Event) -> None:
    while not done.is_set():
        calls = await asyncio.to_thread(server_calls, http_port)
        if calls >= 0:
            load.samples.append(calls)
            load.peak = max(load.peak, calls)
        try:
            await asyncio.wait_for(done.wait(), 0.5)
        except TimeoutError:
            pass


async def one_run(sessions: int, seconds: float, workdir: Path, nice: int = 0,
                  callers: str = "sipp", realtime: int = 0) -> dict[str, Any]:
    mailboxes = max(1, sessions // 2)
    sip_port, http_port = free_port(SERVER), free_port(SERVER)
    config = cluster_file(workdir, mailboxes, sip_port, http_port)
    log = (workdir / "feature-server.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        *(["nice", "-n", str(nice)] if nice else []),
        *(["chrt", "--fifo", str(realtime)] if realtime else []),
        sys.executable, "-m", "daemons.cli", "feature-server", "--config", str(config),
        "--name", "FS_B", "--log-level", "warning", stdout=log, stderr=log, cwd=ROOT)
    phone = await Phone(CLIENT, WATCHER, rtp_ports="40000-47999").start()
    phone.password = WATCHER_SECRET
    dest = Destination("UDP", SERVER, sip_port)
    try:
        for _ in range(200):
            try:
                scrape(http_port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        subs = await asyncio.gather(*(phone.subscribe(str(FIRST_MAILBOX + i), dest)
                                      for i in range(mailboxes)))
        sub_failed = sum(1 for r in subs if r.status != 200)
        await asyncio.sleep(1.0)
        before, cpu0 = scrape(http_port), cpu_seconds(proc.pid)
        load = Load(phone, dest, seconds)
        done = asyncio.Event()
        sampler = asyncio.ensure_future(sample_server(load, http_port, done))
        if callers == "sipp":
            await sipp_load(load, workdir, mailboxes, sessions, seconds, dest)
        else:
            spread = 3.0
            tasks = [load.deposit_loop(FIRST_MAILBOX + i % mailboxes, spread * i / sessions)
                     for i in range(sessions - sessions // 2)]
            tasks += [load.retrieve_loop(FIRST_MAILBOX + i % mailboxes, spread * i / sessions)
                      for i in range(sessions // 2)]
            await asyncio.gather(*tasks)
        done.set()
        await sampler
        await asyncio.sleep(1.0)
        after, cpu1 = scrape(http_port), cpu_seconds(proc.pid)
    finally:
        await phone.close()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
        log.close()
    if os.environ.get("BENCH_VM_BUCKETS"):
        for (name, labels), value in sorted(after.items()):
            if name == "sipcluster_rtp_send_lateness_seconds_bucket":
                print(labels, value - before.get((name, labels), 0.0), file=sys.stderr)
    frames = delta(after, before, "sipcluster_rtp_send_lateness_seconds_count")
    late = delta(after, before, "sipcluster_rtp_frames_late_total")
    dropped = sum(value - before.get((name, labels), 0.0)
                  for (name, labels), value in after.items()
                  if name == "sipcluster_rtp_packets_dropped_total")
    received = sum(value - before.get((name, labels), 0.0)
                   for (name, labels), value in after.items()
                   if name == "sipcluster_rtp_packets_received_total")
    # every packet the server handled: sent, and received (dispatched or dropped)
    packets = delta(after, before, "sipcluster_rtp_packets_sent_total", 'kind="audio"') + \
        received + dropped
    # calls in progress at the server, sampled every 0.5 s, after the ramp-up
    busy = statistics.mean(load.samples[len(load.samples) // 4:]) if load.samples else 0
    return {
        "sessions": sessions,
        "concurrent_mean": round(busy, 1),
        "concurrent_peak": load.peak,
        "calls": load.calls,
        "calls_failed": load.failed,
        "client_errors": load.errors,
        "subscribe_failed": sub_failed,
        "deposits": delta(after, before, "sipcluster_voicemail_messages_deposited_total"),
        "frames_sent": frames,
        "jitter_p99_ms": 1000 * (histogram_quantile(
            after, before, "sipcluster_rtp_send_lateness_seconds", 0.99) or float("nan")),
        "late_percent": 100 * late / frames if frames else float("nan"),
        "rtp_packets": packets,
        "rtp_dropped": dropped,
        "cpu_seconds": cpu1 - cpu0,
        "cpu_per_1000_packets": 1000 * (cpu1 - cpu0) / packets if packets else float("nan"),
        "mwi_notifies": delta(after, before, "sipcluster_mwi_notify_sent_total", 'result="ok"'),
        "mwi_failed": delta(after, before, "sipcluster_mwi_notify_sent_total", 'result="failed"'),
        "mwi_p99_ms": 1000 * (histogram_quantile(
            after, before, "sipcluster_mwi_notify_latency_seconds", 0.99) or float("nan")),
        "exit_code": code,
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--callers", choices=("sipp", "python"), default="sipp",
                        help="who places the calls: SIPp (default, light) or the Python "
                             "phone of the tests")
    parser.add_argument("--realtime", type=int, default=0, metavar="PRIORITY",
                        help="run the feature-server under SCHED_FIFO at this priority "
                             "(chrt; a unit's CPUSchedulingPolicy=fifo), as media servers "
                             "run; needs root")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the feature-server at this nice value (a systemd unit's "
                             "Nice=); negative needs root")
    args = parser.parse_args(argv)
    if args.callers == "sipp" and (shutil.which("sipp") is None
                                   or not Path(PCAPS, "g711a.pcap").exists()):
        print("--callers sipp needs sipp and sip-tester's pcaps (make test installs them)",
              file=sys.stderr)
        return 2
    configure_logging(level="error")  # the callers' own warnings (early RTP) are not figures
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
            result = asyncio.run(one_run(args.sessions, args.seconds, Path(tmp), args.nice,
                                         args.callers, args.realtime))
        runs.append(result)
        print(f"run {i + 1}: " + json.dumps(result), file=sys.stderr)

    def med(key: str) -> float:
        values = [r[key] for r in runs if r[key] == r[key]]
        return statistics.median(values) if values else float("nan")

    keys = ["concurrent_mean", "concurrent_peak", "calls", "calls_failed", "client_errors",
            "deposits", "frames_sent", "jitter_p99_ms", "late_percent", "rtp_packets",
            "rtp_dropped", "cpu_per_1000_packets", "mwi_notifies", "mwi_failed", "mwi_p99_ms",
            "load_average"]
    median = {k: med(k) for k in keys}
    failures = int(sum(r["calls_failed"] + r["client_errors"] + r["subscribe_failed"]
                       + r["mwi_failed"] + (r["exit_code"] != 0) for r in runs))
    print(f"## Voicemail: {args.sessions} sessions for {args.seconds:.0f} s, "
          f"median of {args.runs} runs, callers {args.callers}, feature-server at nice "
          f"{args.nice}, SCHED_FIFO {args.realtime or 'no'}\n")
    print("| figure | median | target | runs |")
    print("|---|---|---|---|")
    targets = {"jitter_p99_ms": "< 5 ms", "late_percent": "< 0.5 %",
               "mwi_p99_ms": "< 200 ms"}
    for key in keys:
        values = ", ".join(f"{r[key]:.3g}" for r in runs)
        print(f"| {key} | {median[key]:.4g} | {targets.get(key, '')} | {values} |")
    print(f"\nfailures (calls not 200, client errors, refused SUBSCRIBEs, failed NOTIFYs, "
          f"unclean exits): {failures}")
    result = {"sessions": args.sessions, "seconds": args.seconds, "nice": args.nice,
              "realtime": args.realtime, "callers": args.callers,
              "runs": runs,
              "median": median, "failures": failures}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
