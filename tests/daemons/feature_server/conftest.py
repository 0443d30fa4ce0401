"""A small two-data-centre cluster for the feature-server tests, on 127.0.105.x
(dc1) and 127.0.106.x (dc2): a feature-server per data centre, a node in dc1,
one trunk per data centre whose PSTN gateway is SIPp's UAS (a real peer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[3]
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
DC1, DC2 = "127.0.105", "127.0.106"

DIAL_PLAN = """
[applications.{fs}.options.partitions.Basic]
rules = [".=>${{DIGITS}}"]
[applications.{fs}.options.partitions.Voicemail]
rules = ["5555=>gcti::voicemail"]
[applications.{fs}.options.partitions.PSTN]
rules = ["9.=>+${{DIGITS:1}}@trunk", "8.=>+${{DIGITS:1}}@Trunk_dc2", "7.=>gcti::reject=403",
         "+.=>${{DIGITS}}@trunk"]
[applications.{fs}.options.calling-profiles.System]
partitions = ["Basic", "Voicemail", "PSTN"]
forward-busy = "gcti::voicemail"
[applications.{fs}.options.partitions.FromCarrier]
rules = ["9.=>gcti::reject=488"]
[applications.{fs}.options.calling-profiles.Inbound]
partitions = ["FromCarrier"]
[applications.{fs}.options.assignments.switch]
internal = "System"
external = "System"
[applications.{fs}.options.assignments.trunk]
Trunk_dc2 = "Inbound"
[applications.{fs}.options.calling-profiles.NoAnswerToVoicemail]
partitions = ["Basic", "Voicemail", "PSTN"]
forward-no-answer = "gcti::voicemail"
[applications.{fs}.options.calling-profiles.BusyToNowhere]
partitions = ["Basic"]
forward-busy = "+1999@NoSuchTrunk"
[applications.{fs}.options.assignments.extension]
1003 = "NoAnswerToVoicemail"
1004 = "BusyToNowhere"
"""


def cluster_file(path: Path, http_port: int, *, store: str | None = None,
                 sip_port: int = 5070, voicemail_port: int | None = None) -> Path:
    """The test cluster: FS_dc1 / FS_dc2 on ``http_port``, SIPS_dc1 on ``sip_port``;
    with ``voicemail_port`` FS_dc1 answers SIP there (its voicemail)."""
    text = f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[switch.tserver]
find-trunk-by-location = true
sip-enable-strict-auth = false
router-timeout = 0.5
extn-no-answer-timeout = 1

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_dc1"]

[dns.DialPlan_dc1]
type = "VoIPService"
service-type = "feature-server"
url = "http://{DC1}.32:{http_port}/dialplan"
url-1 = "http://{DC1}.31:{http_port}/dialplan"
geo-location = "dc1"

[dns.DialPlan_dc2]
type = "VoIPService"
service-type = "feature-server"
url = "http://{DC2}.31:{http_port}/dialplan"
geo-location = "dc2"

[dns.Trunk_dc1]
type = "Trunk"
contact = "{DC1}.40:5060"
geo-location = "dc1"
oos-check = 1
oos-force = 1
oos-error-check = true
prefix = "+"

[dns.Trunk_dc2]
type = "Trunk"
contact = "{DC2}.40:5060"
geo-location = "dc2"
oos-check = 1
oos-force = 1
prefix = "+"

[dns.1001]
type = "Extension"
contact = "*"

# a phone at a fixed address (no registration): SIPp in the forwarding tests
[dns.1002]
type = "Extension"
contact = "sip:1002@{DC1}.60:5060"

# a phone that rings and never answers (SIPp): no-answer forwarding
[dns.1003]
type = "Extension"
contact = "sip:1003@{DC1}.61:5060"

# busy, and its forwarding leads nowhere: the caller hears busy
[dns.1004]
type = "Extension"
contact = "sip:1004@{DC1}.62:5060"

# routing points nobody routes: after router-timeout, default-dn
[dns.5000]
type = "RoutingPoint"
default-dn = "Trunk_dc2"

[dns.5001]
type = "RoutingPoint"
default-dn = "+15550001"

[applications.SIPS_dc1]
kind = "sip-server"
host = "{DC1}.11"
geo-location = "dc1"
sip-port = {sip_port}
default-port = 7000
http-port = 9096

[applications.TC_dc1]
kind = "t-controller"
host = "{DC1}.11"
sip-server = "SIPS_dc1"
tc-port = 7002

[applications.FS_dc1]
kind = "feature-server"
host = "{DC1}.31"
geo-location = "dc1"
http-port = {http_port}
{f"sip-port = {voicemail_port}" if voicemail_port else ""}

[applications.FS_dc2]
kind = "feature-server"
host = "{DC2}.31"
geo-location = "dc2"
http-port = {http_port}
"""
    for fs in ("FS_dc1", "FS_dc2"):
        text += f"\n[applications.{fs}.options]\nstate-dir = \"{path.parent / fs}\"\n"
        if store is not None:
            text += f'store = "{store}"\n'
        if voicemail_port and fs == "FS_dc1":
            text += 'default-pin = "2580"\nrtp-ports = "36100-36199"\n'
        text += DIAL_PLAN.format(fs=fs)
    path.write_text(text)
    return path


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None,
         timeout: float = 15.0) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for(predicate: Any, timeout: float = 10.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def lines(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines so far (a line it is still writing is left out)."""
        text = self.log.read_text(errors="replace")
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


@dataclass
class Processes:
    tmp: Path
    running: list[Daemon] = field(default_factory=list)

    def daemon(self, kind: str, config: Path, name: str, health: str | None) -> Daemon:
        log = self.tmp / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            proc = subprocess.Popen([*SIPCLUSTER, kind, "--config", str(config), "--name", name,
                                     "--log-format", "json"],
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        d = Daemon(name, proc, log)
        self.running.append(d)
        if health is not None:
            ok = wait_for(lambda: proc.poll() is not None or _healthy(health),
                          timeout=START_TIMEOUT)
            assert ok and proc.poll() is None, log.read_text()[-3000:]
        return d

    def stop_all(self) -> None:
        for d in reversed(self.running):
            d.stop()


def _healthy(url: str) -> bool:
    try:
        return http("GET", url, timeout=1.0)[0] == 200
    except OSError:
        return False


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Daemons shared by the tests of one module (started once: seconds each)."""
    procs = Processes(tmp_path_factory.mktemp("cluster"))
    try:
        yield procs
    finally:
        procs.stop_all()


@dataclass
class Gateway:
    """SIPp's UAS as a data centre's PSTN gateway: answers INVITE and OPTIONS."""

    host: str
    proc: subprocess.Popen[bytes]
    messages: Path

    def invites(self, after: int = 0) -> list[str]:
        """Request lines of the INVITEs the gateway received (from the ``after``-th on)."""
        if not self.messages.exists():
            return []
        text = self.messages.read_text(errors="replace")
        return [line for line in text.splitlines() if line.startswith("INVITE sip:")][after:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_gateway(sipp: str, host: str, tmp: Path) -> Gateway:
    messages = tmp / f"gateway-{host}.log"
    proc = subprocess.Popen(
        [sipp, "-sn", "uas", "-aa", "-i", host, "-p", "5060", "-nostdin", "-f", "3600",
         "-trace_msg", "-message_file", str(messages), "-fd", "1"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Gateway(host, proc, messages)
