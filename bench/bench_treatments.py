"""Treatments under load: many callers hear music from one real feature-server
process at once (docs/feature-server.md, "Treatments").

    .venv/bin/python bench/bench_treatments.py [--streams 50 200] [--seconds 10] [--runs 3]

For each ``--streams`` N, SIPp (tests/daemons/feature_server/scenarios/
uac_treatment.xml) places N calls to ``sip:music@FS`` within one second, each
staying ``--seconds``, with ``-rtp_echo`` (what the feature-server sends comes
back, so its received count shows what reached the callers). Figures, medians
over ``--runs``, read from the feature-server's /metrics and /proc:

* RTP send lateness p99 (how late a frame left after its 20 ms deadline,
  bucket bound; the histogram ends at 20 ms) and the share of frames more
  than 10 ms late;
* CPU seconds of the feature-server per 1,000 RTP packets sent, and the share
  of one core it used while the N streams played;
* echoed packets received / packets sent (what reached the callers and came
  back; SIPp's echo and the kernel may drop some under load).

Failures (SIPp calls that failed) are printed beside every figure. The server
runs on 127.0.238.31, SIPp on 127.0.238.50. The last line is ``RESULT {json}``
(one step per ``--streams``; a lateness p99 past the histogram's 20 ms is null and
``p99_past_histogram``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIO = ROOT / "tests" / "daemons" / "feature_server" / "scenarios" / "uac_treatment.xml"
SERVER = "127.0.238.31"
CLIENT = "127.0.238.50"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cluster_file(directory: Path, sip: int, http: int) -> Path:
    path = directory / "cluster.toml"
    path.write_text(f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.bench"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.238.11"
geo-location = "dc1"
sip-port = 5060
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.238.11"
sip-server = "SIPS_1"
tc-port = 7001

[applications.FS_1]
kind = "feature-server"
host = "{SERVER}"
geo-location = "dc1"
sip-port = {sip}
http-port = {http}

[applications.FS_1.options]
state-dir = "{directory / 'state'}"
rtp-ports = "37000-37999"
""")
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(http: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{SERVER}:{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("sipcluster_")}


def total(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix))


def lateness_p99(before: dict[str, float], after: dict[str, float]) -> float:
    """The 99th percentile bucket bound (ms) of the frames sent between two scrapes."""
    prefix = "sipcluster_rtp_send_lateness_seconds_bucket{le=\""
    buckets = sorted((float(k[len(prefix):-2]), after[k] - before.get(k, 0.0))
                     for k in after if k.startswith(prefix) and "+Inf" not in k)
    count = after.get("sipcluster_rtp_send_lateness_seconds_count", 0.0) - before.get(
        "sipcluster_rtp_send_lateness_seconds_count", 0.0)
    for bound, seen in buckets:
        if count and seen >= 0.99 * count:
            return bound * 1000
    return float("inf")


def finite(value: float, digits: int) -> float | None:
    return round(value, digits) if value not in (float("inf"), float("-inf")) else None


def one_run(sipp: str, streams: int, seconds: float, work: Path) -> dict[str, float]:
    sip, http = free_port(SERVER), free_port(SERVER)
    config = cluster_file(work, sip, http)
    log = (work / "fs.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "feature-server", "--config", str(config),
         "--name", "FS_1", "--log-format", "json"], cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 45
        while "daemon_ready" not in (work / "fs.log").read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "fs.log").read_text()[-2000:])
            time.sleep(0.05)
        caller = subprocess.Popen(
            [sipp, f"{SERVER}:{sip}", "-sf", str(SCENARIO), "-s", "music", "-set", "play", "",
             "-i", CLIENT, "-p", str(free_port(CLIENT)), "-mi", CLIENT,
             "-mp", str(free_port(CLIENT)), "-rtp_echo", "-d", str(int(seconds * 1000)),
             "-m", str(streams), "-l", str(streams), "-r", str(streams), "-nostdin",
             "-timeout", f"{int(seconds) + 30}s", "-trace_stat", "-stf",
             str(work / "stat.csv"), "-fd", "1"],
            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env={**os.environ, "TERM": "dumb"})
        deadline = time.monotonic() + 20
        while scrape(http).get("sipcluster_treatments_active", 0) < streams:
            if caller.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # the steady window: every stream plays
        time.sleep(0.5)
        before, cpu0, t0 = scrape(http), cpu_seconds(server.pid), time.monotonic()
        time.sleep(max(seconds - 2.5, 1.0))
        after, cpu1, t1 = scrape(http), cpu_seconds(server.pid), time.monotonic()
        caller.wait(timeout=seconds + 60)
        stat = (work / "stat.csv").read_text().splitlines()
        header, last = stat[0].split(";"), stat[-1].split(";")
        failed = float(last[header.index("FailedCall(C)")])
        sent = total(after, "sipcluster_rtp_packets_sent") - total(
            before, "sipcluster_rtp_packets_sent")
        received = total(after, "sipcluster_rtp_packets_received") - total(
            before, "sipcluster_rtp_packets_received")
        late = after.get("sipcluster_rtp_frames_late_total", 0) - before.get(
            "sipcluster_rtp_frames_late_total", 0)
        return {"p99_ms": lateness_p99(before, after),
                "late_share": late / sent if sent else 0.0,
                "cpu_per_1000": 1000 * (cpu1 - cpu0) / sent if sent else float("inf"),
                "core_share": (cpu1 - cpu0) / (t1 - t0),
                "echoed": received / sent if sent else 0.0,
                "failed": failed}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (apt-get install sip-tester)")
        return 2
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs of {args.seconds:g} s, "
          "medians")
    print(f"{'streams':>8} {'lateness p99 ms':>16} {'late>10ms':>10} {'CPU s/1000 pkt':>15} "
          f"{'core share':>11} {'echoed':>7} {'failed calls':>13}")
    steps: list[dict[str, Any]] = []
    for streams in args.streams:
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-treatments-") as tmp:
                runs.append(one_run(sipp, streams, args.seconds, Path(tmp)))

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)
        p99 = med("p99_ms")
        p99_text = f"{p99:.2f}" if p99 != float("inf") else ">20"
        print(f"{streams:>8} {p99_text:>16} {med('late_share'):>10.2%} "
              f"{med('cpu_per_1000'):>15.4f} {med('core_share'):>11.2f} "
              f"{med('echoed'):>7.2%} {sum(r['failed'] for r in runs):>13.0f}")
        # JSON has no infinity: a p99 past the histogram's last bucket (or a run that
        # sent nothing) is null, p99_past_histogram says which
        steps.append({"streams": streams,
                      **{key: finite(med(key), 4) for key in
                         ("late_share", "cpu_per_1000", "core_share", "echoed")},
                      "p99_ms": finite(p99, 3), "p99_past_histogram": p99 == float("inf"),
                      "failed": int(sum(r["failed"] for r in runs))})
    print("RESULT " + json.dumps({"seconds": args.seconds, "runs": args.runs,
                                  "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
