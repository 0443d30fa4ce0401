"""The feature-server's media treatments (docs/feature-server.md, "Treatments"):
SIPp callers INVITE ``sip:music@FS``, ``sip:ringback@FS`` and an announcement
at once on the real daemon; with ``-rtp_echo`` every RTP packet the treatment
sends SIPp comes back, so the feature-server's received-RTP counter proves
the media reached the caller. BYE ends each one; an announcement ends by
itself with the feature-server's BYE; an unknown file is 404 and counted.
The generated tones are checked by frequency."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from daemons.feature_server.treatments import GENERATED, TreatmentPlayer
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics
from protocols.rtp import g711
from protocols.rtp.g711 import Codec
from protocols.rtp.tones import tone, tone_share
from protocols.rtp.wav import build_pcm16_wav

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
FS_HOST = "127.0.236.31"
CALLER_HOST = "127.0.236.50"


def _cluster(sip: int, http: int, state: Path) -> str:
    return f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.235.11"
geo-location = "dc1"
sip-port = 5060
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.235.11"
sip-server = "SIPS_1"
tc-port = 7001

[applications.FS_1]
kind = "feature-server"
host = "{FS_HOST}"
geo-location = "dc1"
sip-port = {sip}
http-port = {http}

[applications.FS_1.options]
state-dir = "{state}"
rtp-ports = "36000-36099"
"""


def _start(config: Path, log_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "feature-server", "--config", str(config),
         "--name", "FS_1", "--log-format", "json"], cwd=ROOT,
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _metrics(http: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{FS_HOST}:{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sipcluster_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


async def test_treatments_play_at_once_and_end_on_bye(tmp_path: Path,
                                                      free_port: Callable[..., int],
                                                      require_tool: Callable[[str], str]
                                                      ) -> None:
    sipp = require_tool("sipp")
    sip, http = free_port(FS_HOST), free_port(FS_HOST)
    state = tmp_path / "state"
    # an operator's announcement: 16-bit PCM, 8 kHz mono, 0.6 s
    (state / "treatments").mkdir(parents=True)
    (state / "treatments" / "welcome.wav").write_bytes(build_pcm16_wav(tone((800,), 600)))
    config = tmp_path / "cluster.toml"
    config.write_text(_cluster(sip, http, state))
    log_path = tmp_path / "fs.log"
    proc = _start(config, log_path)
    runs: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 45
        while "daemon_ready" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)

        def caller(scenario: str, service: str, play: str, hold_ms: int) -> \
                subprocess.Popen[bytes]:
            work = tmp_path / f"sipp-{len(runs)}"
            work.mkdir()
            run = subprocess.Popen(
                [sipp, f"{FS_HOST}:{sip}", "-sf", str(SCENARIOS / scenario), "-s", service,
                 "-set", "play", play, "-i", CALLER_HOST, "-p", str(free_port(CALLER_HOST)),
                 "-mi", CALLER_HOST, "-mp", str(free_port(CALLER_HOST)), "-rtp_echo",
                 "-d", str(hold_ms), "-m", "1", "-nostdin", "-timeout", "20s",
                 "-timeout_error", "-trace_err", "-error_file", str(work / "errors.log")],
                cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                env={**os.environ, "TERM": "dumb"})
            runs.append(run)
            return run

        music = caller("uac_treatment.xml", "music", "", 2500)
        ringback = caller("uac_treatment.xml", "ringback", "", 2500)
        annc = caller("uac_announcement.xml", "annc", ";play=welcome", 0)
        missing = caller("uac_treatment.xml", "annc", ";play=no_such_file", 0)
        # three treatments play at the same time on their own streams
        deadline = time.monotonic() + 10
        while _metrics(http).get("sipcluster_treatments_active", 0) < 3:
            assert time.monotonic() < deadline, _metrics(http)
            await asyncio.sleep(0.05)
        codes = [await asyncio.to_thread(r.wait, 30) for r in (music, ringback, annc)]
        assert codes == [0, 0, 0], [(tmp_path / f"sipp-{i}" / "errors.log").read_text()
                                    for i in range(3)]
        assert await asyncio.to_thread(missing.wait, 30) != 0  # 404: SIPp's call failed
        m = _metrics(http)
        assert m["sipcluster_treatments_active"] == 0
        assert m['sipcluster_treatments_total{outcome="started",treatment="music"}'] == 1
        assert m['sipcluster_treatments_total{outcome="ended",treatment="music"}'] == 1
        assert m['sipcluster_treatments_total{outcome="ended",treatment="ringback"}'] == 1
        # the announcement played through and the feature-server hung up
        assert m['sipcluster_treatments_total{outcome="started",treatment="annc"}'] == 1
        assert m['sipcluster_treatments_total{outcome="played",treatment="annc"}'] == 1
        assert m['sipcluster_treatments_total{outcome="unknown_file",treatment="annc"}'] == 1
        # what the treatments sent came back from every caller (SIPp's echo)
        assert _sum(m, "sipcluster_rtp_packets_received_total") > 100
        assert _sum(m, "sipcluster_rtp_packets_dropped_total") == 0
        events = [json.loads(line) for line in log_path.read_text().splitlines()
                  if line.startswith("{")]
        ended = {e["treatment"]: e["outcome"] for e in events
                 if e.get("event") == "treatment_ended"}
        assert ended == {"music": "ended", "ringback": "ended", "annc": "played"}, ended
        refused = [e for e in events if e.get("event") == "treatment_refused"]
        assert [(e["status"], e["file"]) for e in refused] == [(404, "no_such_file")]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()[-2000:]
    assert "Traceback" not in log_path.read_text()


def test_generated_tones_have_their_frequencies(tmp_path: Path) -> None:
    class Service:
        log = get_logger("test")
        metrics = Metrics(namespace="t")

    player = TreatmentPlayer(Service(), tmp_path)  # type: ignore[arg-type]
    assert player.prepare() == len(GENERATED)
    assert player.prepare() == 0  # present files are kept (an operator may replace them)

    def samples(name: str, codec: Codec) -> list[int]:
        frames = player.frames(name, codec)
        assert frames is not None
        return list(g711.decode(b"".join(frames), codec))

    ring = samples("music/ring_back", Codec.PCMA)
    assert len(ring) == 6 * 8000  # 2 s on, 4 s off
    assert tone_share(ring[:16000], 440) > 0.3 and tone_share(ring[:16000], 480) > 0.3
    assert max(abs(s) for s in ring[16000:]) <= 8  # silence (A-law has no exact zero)
    busy = samples("music/busy", Codec.PCMU)
    assert len(busy) == 8000 and tone_share(busy[:4000], 620) > 0.3
    assert player.frames("../etc/passwd", Codec.PCMU) is None
    assert player.frames("nothing/here", Codec.PCMU) is None
