"""A cluster node's sip-server against SIPp phones and a T-Library client.

One ``sipcluster sip-server`` process per module, on loopback ports picked
for the run, from a generated cluster file. Phones are SIPp scenarios
(tests/interop/scenarios/node_*.xml): a phone that takes calls registers
with digest (register_auth.xml) on the port its UAS scenario then listens
on. The T-Library client connects as the paired t-controller (it receives
every call event) or as a routing client / reporting client.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from protocols.sip.digest import DigestClient
from protocols.sip.message import Response, parse_message
from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
HOST = "127.0.0.1"
PASSWORDS = {f"10{n:02d}": f"pw-10{n:02d}-x" for n in range(1, 12)}

POSITION_PASSWORD = "pw-1012-x"

pytestmark = pytest.mark.timeout(60)


def cluster_file(path: Path, ports: dict[str, int]) -> None:
    dns = "\n".join(
        f'[dns.{dn}]\ntype = "Extension"\ncontact = "*"\npassword = "{pw}"\n'
        + ('sip-cti-control = "talk,hold"\n' if dn != "1004" else "")
        for dn, pw in PASSWORDS.items())
    path.write_text(f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"
realm = "cluster.test"
# baresip 1.0 gives up on a REGISTER challenged with an algorithm it lacks (SHA-256)

[switch.tserver]
router-timeout = 1.5
default-dn = "1005"
extn-no-answer-timeout = 2
posn-no-answer-timeout = 2
posn-no-answer-overflow = "1005"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_T1", "SIPS_T2"]
sip-enable-strict-auth = true

[dns.5000]
type = "RoutingPoint"

[dns.1012]
type = "ACDPosition"
contact = "*"
password = "{POSITION_PASSWORD}"

{dns}
[applications.SIPS_T1]
kind = "sip-server"
host = "{HOST}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}
ip-port = {ports['ip']}
http-port = {ports['http']}

[applications.TC_T1]
kind = "t-controller"
host = "{HOST}"
sip-server = "SIPS_T1"
tc-port = {ports['tc']}

# a second node, started only by the test of digest nonces across nodes
[applications.SIPS_T2]
kind = "sip-server"
host = "{HOST}"
geo-location = "dc1"
sip-port = 0
default-port = 0
http-port = 0

[applications.TC_T2]
kind = "t-controller"
host = "{HOST}"
sip-server = "SIPS_T2"
tc-port = 0
""")


@dataclass
class Node:
    proc: subprocess.Popen[str]
    ports: dict[str, int]
    log_path: Path
    workdir: Path
    runs: int = 0
    #: the ``free_port`` fixture of the running test (ports for SIPp phones)
    free_port: Callable[..., int] | None = None

    def port(self) -> int:
        assert self.free_port is not None
        return int(self.free_port(HOST))

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.ports['http']}{path}",
                                        timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()
                if line.startswith("{")]


def start_sip_server(config: Path, name: str,
                     log_path: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """A sip-server process; its ports (OS-picked) read back from its start-up log."""
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "sip-server", "--config", str(config),
         "--name", name, "--log-format", "json", "--backlog-window", "30"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + START_TIMEOUT
    while "daemon_ready" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sip-server did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    ports: dict[str, int] = {}
    for line in log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "sip_server_listening":
            ports.update({key[:-5]: value for key, value in entry.items()
                          if key.endswith("_port")})
        elif entry.get("event") == "daemon_ready":
            ports["http"] = entry["http_port"]
    return proc, ports


@pytest.fixture(scope="module")
def node_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One sip-server for the module; every port is picked by the OS (port 0) and
    read back from the daemon's start-up log lines."""
    tmp = tmp_path_factory.mktemp("node")
    config = tmp / "cluster.toml"
    cluster_file(config, {name: 0 for name in ("sip", "default", "ip", "http", "tc")})
    log_path = tmp / "sip-server.log"
    proc, ports = start_sip_server(config, "SIPS_T1", log_path)
    yield Node(proc, ports, log_path, tmp)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"sip-server did not stop on SIGTERM in 10 s:\n"
                    f"{log_path.read_text()[-3000:]}")
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    assert "daemon_stopped" in text
    assert "Traceback" not in text, text[text.index("Traceback") - 500:][:3000]


@pytest.fixture
def node(node_process: Node, free_port: Callable[..., int]) -> Node:
    node_process.free_port = free_port
    return node_process


# --------------------------------------------------------------------------- SIPp


@dataclass
class Sipp:
    proc: subprocess.Popen[str]
    workdir: Path

    def wait(self, timeout: float = 30.0) -> dict[str, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        stat = self.workdir / "stat.csv"
        rows = list(csv.DictReader(stat.open(), delimiter=";")) if stat.exists() else []
        return rows[-1] if rows else {}

    def errors(self) -> str:
        path = self.workdir / "errors.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        out = (self.workdir / "stdout.txt").read_text(errors="replace")
        return f"rc={self.proc.returncode} {text}\n{out[-1500:]}"

    def logs(self) -> str:
        path = self.workdir / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ok(self, timeout: float = 30.0) -> bool:
        stats = self.wait(timeout)
        return (stats.get("SuccessfulCall(C)") == "1" and stats.get("FailedCall(C)") == "0"
                and self.proc.returncode == 0)


def sipp(node: Node, sipp_bin: str, scenario: str, args: list[str], *,
         port: int | None = None, timeout: int = 20) -> Sipp:
    node.runs += 1
    workdir = node.workdir / f"sipp-{node.runs}-{scenario}"
    workdir.mkdir()
    cmd = [sipp_bin, f"{HOST}:{node.ports['sip']}", "-sf", str(SCENARIOS / scenario),
           "-i", HOST, "-m", "1", "-nostdin", "-trace_err", "-error_file",
           str(workdir / "errors.log"), "-trace_stat", "-stf", str(workdir / "stat.csv"),
           "-trace_logs", "-log_file", str(workdir / "messages.log"),
           "-fd", "1", "-timeout", f"{timeout}s", "-timeout_error", *args]
    if port is None:
        port = node.port()
    cmd += ["-p", str(port)]
    out = (workdir / "stdout.txt").open("w")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TERM": "dumb"})
    return Sipp(proc, workdir)


def register(node: Node, sipp_bin: str, dn: str, port: int) -> None:
    """REGISTER ``dn`` with digest, binding sip:dn@127.0.0.1:port."""
    password = PASSWORDS.get(dn, POSITION_PASSWORD)
    run = sipp(node, sipp_bin, "register_auth.xml",
               ["-s", dn, "-au", dn, "-ap", password], port=port)
    assert run.ok(), run.errors()


def phone(node: Node, sipp_bin: str, dn: str, scenario: str, *,
          ring_ms: int = 200, args: tuple[str, ...] = ()) -> Sipp:
    """A phone for ``dn``: registered, then running a UAS scenario on its port."""
    port = node.port()
    register(node, sipp_bin, dn, port)
    return sipp(node, sipp_bin, scenario, ["-d", str(ring_ms), *args], port=port)


def call(node: Node, sipp_bin: str, caller: str, callee: str, scenario: str = "node_uac_call.xml",
         *, talk_ms: int = 300) -> Sipp:
    return sipp(node, sipp_bin, scenario, ["-s", callee, "-set", "caller", caller,
                                           "-au", caller, "-ap", PASSWORDS[caller],
                                           "-d", str(talk_ms)])


# --------------------------------------------------------------------------- T-Library


@dataclass
class Monitor:
    """A T-Library client collecting unsolicited events."""

    client: TLibClient
    events: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _collect(self) -> None:
        async for event in self.client.events():
            self.events.append(event)

    async def wait_for(self, name: str, dn: str | None = None, *, after: int = 0,
                       timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events[after:]:
                if event["message"] == name and (dn is None or
                                                 event.get("AttributeThisDN") == dn):
                    return event
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {name} on {dn}; got {self.summary()}")

    def summary(self, conn_id: str | None = None) -> list[tuple[str, str | None]]:
        return [(e["message"], e.get("AttributeThisDN")) for e in self.events
                if conn_id is None or e.get("AttributeConnID") == conn_id]

    async def sequence(self, conn_id: str, expected: list[tuple[str, str]],
                       timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.summary(conn_id) == expected:
                return [e for e in self.events if e.get("AttributeConnID") == conn_id]
            if len(self.summary(conn_id)) > len(expected):
                break
            await asyncio.sleep(0.02)
        assert self.summary(conn_id) == expected
        return []


@contextlib.asynccontextmanager
async def monitor(node: Node, name: str = "TC_T1", port: str = "default",
                  **kwargs: Any) -> AsyncIterator[Monitor]:
    client = await TLibClient.connect(HOST, node.ports[port], name,
                                      "smart" if name == "TC_T1" else "legacy", **kwargs)
    mon = Monitor(client)
    mon.task = asyncio.create_task(mon._collect())
    try:
        yield mon
    finally:
        await client.close()
        mon.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mon.task


async def wait_proc(run: Sipp, timeout: float = 30.0) -> bool:
    return await asyncio.to_thread(run.ok, timeout)


def first_conn_id(mon: Monitor, name: str, dn: str, after: int = 0) -> str:
    for event in mon.events[after:]:
        if event["message"] == name and event.get("AttributeThisDN") == dn:
            return str(event["AttributeConnID"])
    raise AssertionError(f"no {name} on {dn}: {mon.summary()}")


# =========================================================================== tests


async def test_health_and_metrics(node: Node) -> None:
    status, body = node.http("/healthz")
    assert status == 200, body
    assert json.loads(body)["checks"]["listeners"]["ok"] is True
    status, body = node.http("/metrics")
    assert status == 200
    assert "sipcluster_calls_active" in body


async def test_register_tells_t_controller(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    port = node.port()
    async with monitor(node) as tc:
        await asyncio.to_thread(register, node, sipp_bin, "1007", port)
        event = await tc.wait_for("EventDNBackInService", "1007")
        ext = event["AttributeExtensions"]
        assert ext["ownership"] == "sip"
        assert ext["contact"] == f"sip:1007@{HOST}:{port};transport=UDP"
        assert 0 < ext["expires"] <= 120
    # a newly linked t-controller catches up with what is registered now
    async with monitor(node) as tc:
        await tc.wait_for("EventDNBackInService", "1007")
    _, body = node.http("/status/registrations")
    assert "1007" in json.loads(body)


async def test_register_wrong_password_and_unknown_dn_get_401(node: Node,
                                                               require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    for dn, password in (("1008", "wrong"), ("7777", "whatever")):
        run = sipp(node, sipp_bin, "register_auth.xml", ["-s", dn, "-au", dn, "-ap", password])
        stats = await asyncio.to_thread(run.wait)
        assert stats.get("FailedCall(C)") == "1"
        assert "401" in run.errors()
    _, body = node.http("/status/registrations")
    assert "1008" not in json.loads(body) and "7777" not in json.loads(body)


async def test_basic_call_event_sequence(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_answer.xml")
    async with monitor(node) as tc, monitor(node, "ICON_1", "ip") as icon:
        caller = call(node, sipp_bin, "1001", "1002")
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        conn_id = first_conn_id(tc, "EventDialing", "1001")
        events = await tc.sequence(conn_id, [
            ("EventDialing", "1001"), ("EventRinging", "1002"), ("EventEstablished", "1002"),
            ("EventEstablished", "1001"), ("EventReleased", "1001"), ("EventReleased", "1002")])
        ringing = events[1]
        assert ringing["AttributeOtherDN"] == "1001"
        assert ringing["AttributeThisDNRole"] == "Destination"
        assert ringing["AttributeCallType"] == "Internal"
        assert ringing["AttributeANI"] == "1001" and ringing["AttributeDNIS"] == "1002"
        assert len({e["AttributeCallUUID"] for e in events}) == 1
        # IPport: the same call events, numbered per application
        await icon.sequence(conn_id, tc.summary(conn_id))
        seqs = [e["AttributeEventSequenceNumber"] for e in icon.events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_busy(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1003", "node_uas_busy.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1003", "node_uac_reject.xml")
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        assert "final=486" in caller.logs()
        conn_id = first_conn_id(tc, "EventDialing", "1001")
        await tc.sequence(conn_id, [("EventDialing", "1001"), ("EventReleased", "1001")])


async def test_unregistered_callee_480_and_unknown_number_404(node: Node,
                                                              require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    for callee, status in (("1009", "480"), ("4242", "404")):
        caller = call(node, sipp_bin, "1001", callee, "node_uac_reject.xml")
        assert await wait_proc(caller), caller.errors()
        assert f"final={status}" in caller.logs()


async def test_cancel(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1006", "node_uas_ring.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1006", "node_uac_cancel.xml", talk_ms=300)
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        conn_id = first_conn_id(tc, "EventDialing", "1001")
        await tc.sequence(conn_id, [("EventDialing", "1001"), ("EventRinging", "1006"),
                                    ("EventReleased", "1001"), ("EventReleased", "1006")])


async def test_no_answer_timeout(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1006", "node_uas_ring.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1006", "node_uac_reject.xml")
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        assert "final=480" in caller.logs()
        conn_id = first_conn_id(tc, "EventDialing", "1001")
        await tc.sequence(conn_id, [("EventDialing", "1001"), ("EventRinging", "1006"),
                                    ("EventReleased", "1006"), ("EventReleased", "1001")])


async def test_routing_point_route_call(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_answer.xml")
    async with monitor(node, "URS") as router:
        answer = await router.client.request("RequestRegisterAddress", AttributeThisDN="5000")
        assert answer["message"] == "EventRegistered"
        caller = call(node, sipp_bin, "1001", "5000")
        request = await router.wait_for("EventRouteRequest", "5000")
        assert request["AttributeOtherDN"] == "1001"
        routed = await router.client.request(
            "RequestRouteCall", AttributeThisDN="5000",
            AttributeConnID=request["AttributeConnID"], AttributeOtherDN="1002",
            AttributeUserData={"segment": "gold"})
        assert routed["message"] == "EventRouteUsed", routed
        assert routed["AttributeOtherDN"] == "1002"
        assert "AttributeReason" not in routed
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        # a second RequestRouteCall for the same call is refused
        again = await router.client.request(
            "RequestRouteCall", AttributeThisDN="5000",
            AttributeConnID=request["AttributeConnID"], AttributeOtherDN="1002")
        assert again["message"] == "EventError" and again["AttributeErrorCode"] == 58


async def test_router_timeout_goes_to_default_dn(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1005", "node_uas_answer.xml")
    async with monitor(node) as tc, monitor(node, "URS2") as router:
        await router.client.request("RequestRegisterAddress", AttributeThisDN="5000")
        caller = call(node, sipp_bin, "1001", "5000")
        used = await router.wait_for("EventRouteUsed", "5000")
        assert used["AttributeOtherDN"] == "1005"
        assert used["AttributeReason"] == {"route": "default"}
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        conn_id = used["AttributeConnID"]
        await tc.sequence(conn_id, [
            ("EventDialing", "1001"), ("EventQueued", "5000"), ("EventRouteRequest", "5000"),
            ("EventRouteUsed", "5000"), ("EventDiverted", "5000"), ("EventRinging", "1005"),
            ("EventEstablished", "1005"), ("EventEstablished", "1001"),
            ("EventReleased", "1001"), ("EventReleased", "1005")])


async def test_make_call_rfc3725(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    agent = await asyncio.to_thread(phone, node, sipp_bin, "1001", "node_uas_answer.xml")
    dest = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_answer.xml")
    async with monitor(node) as tc:
        dialing = await tc.client.request("RequestMakeCall", AttributeThisDN="1001",
                                          AttributeOtherDN="1002")
        assert dialing["message"] == "EventDialing", dialing
        conn_id = dialing["AttributeConnID"]
        await tc.wait_for("EventEstablished", "1001")
        released = await tc.client.request("RequestReleaseCall", AttributeThisDN="1001",
                                           AttributeConnID=conn_id)
        assert released["message"] == "EventReleased"
        assert released["AttributeThisDN"] == "1001"
        assert await wait_proc(agent), agent.errors()
        assert await wait_proc(dest), dest.errors()
        await tc.sequence(conn_id, [("EventRinging", "1002"), ("EventEstablished", "1002"),
                                    ("EventEstablished", "1001"), ("EventReleased", "1002")])
        # the phone's 200 had the offer: the destination got it in its INVITE, the
        # phone got the destination's answer in the ACK (RFC 3725 flow I)
        events = node.log_events()
        assert any(e.get("event") == "call_finished" and e.get("conn_id") == conn_id
                   for e in events)


async def test_single_step_transfer(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_answer.xml")
    target = await asyncio.to_thread(phone, node, sipp_bin, "1003", "node_uas_answer.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1002", "node_uac_transferred.xml")
        established = await tc.wait_for("EventEstablished", "1001")
        conn_id = established["AttributeConnID"]
        answer = await tc.client.request("RequestSingleStepTransfer", AttributeThisDN="1002",
                                         AttributeConnID=conn_id, AttributeOtherDN="1003")
        assert answer["message"] == "EventReleased", answer
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        assert await wait_proc(target), target.errors()
        summary = tc.summary(conn_id)
        assert summary[:6] == [("EventDialing", "1001"), ("EventRinging", "1002"),
                               ("EventEstablished", "1002"), ("EventEstablished", "1001"),
                               ("EventRinging", "1003"), ("EventEstablished", "1003")]
        assert ("EventPartyChanged", "1001") in summary
        assert summary[-2:] == [("EventReleased", "1001"), ("EventReleased", "1003")]


async def test_remote_answer_refused_without_cti_control(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1004", "node_uas_ring.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1004", "node_uac_reject.xml")
        ringing = await tc.wait_for("EventRinging", "1004")
        answer = await tc.client.request("RequestAnswerCall", AttributeThisDN="1004",
                                         AttributeConnID=ringing["AttributeConnID"])
        assert answer["message"] == "EventError"
        assert answer["AttributeErrorCode"] == 60
        assert "does not support remote answer" in answer["AttributeErrorMessage"]
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()


async def test_bad_tlib_requests(node: Node) -> None:
    async with monitor(node, "URS3") as router:
        unknown = await router.client.request("RequestRegisterAddress", AttributeThisDN="9999")
        assert unknown["message"] == "EventError" and unknown["AttributeErrorCode"] == 50
        no_call = await router.client.request("RequestReleaseCall", AttributeThisDN="1001",
                                              AttributeConnID="00000000deadbeef")
        assert no_call["AttributeErrorCode"] == 58
        agent = await router.client.request("RequestAgentLogin", AttributeThisDN="1001",
                                            AttributeAgentID="a1")
        assert agent["message"] == "EventError" and agent["AttributeErrorCode"] == 60
        consult = await router.client.request("RequestMakeCall", AttributeThisDN="1009",
                                              AttributeOtherDN="1001")
        assert consult["AttributeErrorCode"] == 52  # 1009 has no registered phone
    async with monitor(node, "ICON_X", "ip") as icon:
        refused = await icon.client.request("RequestRegisterAddress", AttributeThisDN="1001")
        assert refused["AttributeErrorCode"] == 60
    _, body = node.http("/metrics")
    assert 'sipcluster_tlib_errors_total{code="50",port="default-port"}' in body


async def test_malformed_sip_gets_400(node: Node) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        sock.sendto(
            (f"OPTIONS sip:node@{HOST} SIP/2.0\r\n"
             f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bKx1\r\n"
             "From: <sip:a@b>;tag=1\r\nTo: <sip:node@x>\r\nCall-ID: bad1\r\nCSeq: abc OPTIONS\r\n"
             "Content-Length: 0\r\n\r\n").encode(), (HOST, node.ports["sip"]))
        data, _ = sock.recvfrom(65535)
    assert data.startswith(b"SIP/2.0 400")
    status, _ = node.http("/healthz")
    assert status == 200


async def test_ipport_backlog_replay(node: Node, require_tool: Any) -> None:
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_answer.xml",
                                     ring_ms=1500)
    async with monitor(node) as tc:
        async with monitor(node, "ICON_B", "ip") as icon:
            caller = call(node, sipp_bin, "1001", "1002")
            ringing = await icon.wait_for("EventRinging", "1002")
            conn_id = ringing["AttributeConnID"]
            seen = icon.summary(conn_id)
        # ICON_B is gone while the call is answered and released
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        await tc.wait_for("EventReleased", "1002")
        expected = tc.summary(conn_id)
    assert seen == expected[:len(seen)]
    async with monitor(node, "ICON_B", "ip") as icon:
        await icon.sequence(conn_id, expected[len(seen):])
        seqs = [e["AttributeEventSequenceNumber"] for e in icon.events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_phone_hold_and_retrieve_by_reinvite(node: Node, require_tool: Any) -> None:
    """RFC 3264 §8.4: the caller's sendonly / sendrecv re-INVITEs are relayed to the
    other leg and reported as EventHeld / EventRetrieved to both parties' observers."""
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1004", "node_uas_stay.xml")
    async with monitor(node) as tc, monitor(node, "OBS_1001") as obs1, \
            monitor(node, "OBS_1004") as obs4:
        for mon, dn in ((obs1, "1001"), (obs4, "1004")):
            registered = await mon.client.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert registered["message"] == "EventRegistered"
        caller = call(node, sipp_bin, "1001", "1004", "node_uac_hold.xml", talk_ms=700)
        established = await tc.wait_for("EventEstablished", "1001")
        conn_id = established["AttributeConnID"]
        # 1004 has no sip-cti-control: the node cannot hold it remotely
        refused = await tc.client.request("RequestHoldCall", AttributeThisDN="1004",
                                          AttributeConnID=conn_id)
        assert refused["message"] == "EventError" and refused["AttributeErrorCode"] == 60
        assert "does not support remote hold" in refused["AttributeErrorMessage"]
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        await tc.sequence(conn_id, [
            ("EventDialing", "1001"), ("EventRinging", "1004"), ("EventEstablished", "1004"),
            ("EventEstablished", "1001"), ("EventHeld", "1001"), ("EventRetrieved", "1001"),
            ("EventReleased", "1001"), ("EventReleased", "1004")])
        held = await obs4.wait_for("EventHeld", "1001")
        assert held["AttributeOtherDN"] == "1004" and held["AttributeConnID"] == conn_id
        await obs4.wait_for("EventRetrieved", "1001")
        await obs1.wait_for("EventHeld", "1001")
        await obs1.wait_for("EventRetrieved", "1001")
    # the other leg got each re-INVITE with the caller's direction
    log = callee.logs()
    assert log.index("dir=sendonly") < log.index("dir=sendrecv"), log


async def test_info_and_update_reach_the_other_phone(node: Node, require_tool: Any) -> None:
    """RFC 6086 / RFC 3311: the caller's INFO (DTMF) and UPDATE (a new offer) are
    carried to the callee, whose answers (its INFO body, its SDP answer) come back;
    the scenarios fail on a missing or different body."""
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1006", "node_uas_info.xml")
    caller = call(node, sipp_bin, "1007", "1006", "node_uac_info.xml", talk_ms=200)
    assert await wait_proc(caller), caller.errors()
    assert await wait_proc(callee), callee.errors()
    _, metrics = node.http("/metrics")
    assert 'sipcluster_sip_relayed_total{method="INFO",status="200"} 1.0' in metrics
    assert 'sipcluster_sip_relayed_total{method="UPDATE",status="200"} 1.0' in metrics


async def test_refer_transfer(node: Node, require_tool: Any) -> None:
    """RFC 3515: REFER in the call -> 202, NOTIFY sipfrag 100 then 200; the other
    party (re-INVITEd with the target's SDP) talks to the target."""
    sipp_bin = require_tool("sipp")
    transferor = await asyncio.to_thread(
        functools.partial(phone, node, sipp_bin, "1002", "node_uas_refer.xml", ring_ms=300,
                          args=("-set", "target", "1003")))
    target = await asyncio.to_thread(phone, node, sipp_bin, "1003", "node_uas_stay.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1002", "node_uac_stay.xml")
        established = await tc.wait_for("EventEstablished", "1003")
        conn_id = established["AttributeConnID"]
        assert established["AttributeOtherDN"] == "1001"
        assert established["AttributeThirdPartyDN"] == "1002"
        assert await wait_proc(transferor), transferor.errors()
        changed = await tc.wait_for("EventPartyChanged", "1001")
        assert changed["AttributeOtherDN"] == "1003"
        assert changed["AttributeThirdPartyDN"] == "1002"
        await tc.wait_for("EventReleased", "1002")
        released = await tc.client.request("RequestReleaseCall", AttributeThisDN="1003",
                                           AttributeConnID=conn_id)
        assert released["message"] == "EventReleased", released
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(target), target.errors()
        summary = tc.summary(conn_id)
        assert summary[:7] == [
            ("EventDialing", "1001"), ("EventRinging", "1002"), ("EventEstablished", "1002"),
            ("EventEstablished", "1001"), ("EventRinging", "1003"), ("EventEstablished", "1003"),
            ("EventPartyChanged", "1001")]
        # EventReleased of 1003 answered RequestReleaseCall (it carries the ReferenceID)
        assert sorted(summary[7:]) == [("EventReleased", "1001"), ("EventReleased", "1002")]
    log = transferor.logs()
    assert "notify sipfrag=100 state=active" in log, log
    assert "notify sipfrag=200 state=terminated" in log, log
    assert "reinvite dir=" in caller.logs()  # the node re-INVITEd the party that stays


async def test_cti_answer_hold_retrieve_by_notify(node: Node, require_tool: Any) -> None:
    """RequestAnswerCall / RequestHoldCall / RequestRetrieveCall drive a phone whose
    DN has sip-cti-control = talk,hold with NOTIFY Event: talk / hold."""
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_cti.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1002", "node_uac_stay.xml")
        ringing = await tc.wait_for("EventRinging", "1002")
        conn_id = ringing["AttributeConnID"]
        answered = await tc.client.request("RequestAnswerCall", AttributeThisDN="1002",
                                           AttributeConnID=conn_id)
        assert answered["message"] == "EventEstablished", answered
        assert answered["AttributeThisDN"] == "1002"
        held = await tc.client.request("RequestHoldCall", AttributeThisDN="1002",
                                       AttributeConnID=conn_id)
        assert held["message"] == "EventHeld", held
        again = await tc.client.request("RequestHoldCall", AttributeThisDN="1002",
                                        AttributeConnID=conn_id)
        assert again["message"] == "EventError" and again["AttributeErrorCode"] == 59
        retrieved = await tc.client.request("RequestRetrieveCall", AttributeThisDN="1002",
                                            AttributeConnID=conn_id)
        assert retrieved["message"] == "EventRetrieved", retrieved
        released = await tc.client.request("RequestReleaseCall", AttributeThisDN="1002",
                                           AttributeConnID=conn_id)
        assert released["message"] == "EventReleased"
        assert await wait_proc(callee), callee.errors()
        assert await wait_proc(caller), caller.errors()
    events = [line.split("notify event=")[1].strip() for line in callee.logs().splitlines()
              if "notify event=" in line]
    assert events == ["talk", "hold", "talk"]
    log = caller.logs()
    assert log.index("dir=sendonly") < log.index("dir=sendrecv"), log


async def test_make_call_dialing_only_once_the_phone_answered(node: Node,
                                                             require_tool: Any) -> None:
    """RFC 3725 flow I: no EventDialing while the agent's phone has not taken the call;
    a phone that refuses makes the request fail with EventError."""
    sipp_bin = require_tool("sipp")
    agent = await asyncio.to_thread(phone, node, sipp_bin, "1003", "node_uas_busy.xml")
    async with monitor(node) as tc:
        answer = await tc.client.request("RequestMakeCall", AttributeThisDN="1003",
                                         AttributeOtherDN="1002")
        assert answer["message"] == "EventError", answer
        assert answer["AttributeErrorCode"] == 59
        assert "did not take the call: 486" in answer["AttributeErrorMessage"]
        assert await wait_proc(agent), agent.errors()
        await asyncio.sleep(0.3)
        assert [e for e in tc.events if e.get("AttributeConnID")
                and e.get("AttributeThisDN") == "1003"] == []


async def test_ipport_keeps_calls_started_without_client(node: Node, require_tool: Any) -> None:
    """Events of a call that started while no reporting client was connected go to
    the first client that registers within the backlog window."""
    sipp_bin = require_tool("sipp")
    callee = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_answer.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1002")
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(callee), callee.errors()
        released = await tc.wait_for("EventReleased", "1002")
        conn_id = released["AttributeConnID"]
        expected = tc.summary(conn_id)
    assert len(expected) == 6
    async with monitor(node, "ICON_LATE", "ip") as icon:
        await icon.sequence(conn_id, expected)
        seqs = [e["AttributeEventSequenceNumber"] for e in icon.events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_consultation_transfer(node: Node, require_tool: Any) -> None:
    """RequestInitiateTransfer: EventHeld (the caller is re-INVITEd with a=inactive),
    a consultation call from the agent's same phone (EventDialing ...);
    RequestCompleteTransfer: the held caller and the target talk, the agent gets
    EventReleased in both calls, the others EventPartyChanged."""
    sipp_bin = require_tool("sipp")
    agent = await asyncio.to_thread(phone, node, sipp_bin, "1002", "node_uas_stay.xml")
    target = await asyncio.to_thread(phone, node, sipp_bin, "1003", "node_uas_stay.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1002", "node_uac_stay.xml")
        established = await tc.wait_for("EventEstablished", "1001")
        conn_id = established["AttributeConnID"]
        held = await tc.client.request("RequestInitiateTransfer", AttributeThisDN="1002",
                                       AttributeConnID=conn_id, AttributeOtherDN="1003")
        assert held["message"] == "EventHeld", held
        assert held["AttributeConnID"] == conn_id and held["AttributeOtherDN"] == "1001"
        dialing = await tc.wait_for("EventDialing", "1002")
        consult_id = dialing["AttributeConnID"]
        assert consult_id != conn_id
        assert dialing["AttributeOtherDN"] == "1003"
        assert dialing["AttributeTransferConnID"] == conn_id
        await tc.sequence(consult_id, [
            ("EventDialing", "1002"), ("EventRinging", "1003"), ("EventEstablished", "1003"),
            ("EventEstablished", "1002")])
        completed = await tc.client.request(
            "RequestCompleteTransfer", AttributeThisDN="1002", AttributeConnID=conn_id,
            AttributeTransferConnID=consult_id)
        assert completed["message"] == "EventReleased", completed
        assert completed["AttributeConnID"] == conn_id
        assert await wait_proc(agent), agent.errors()  # the node hung up the agent's phone
        await tc.sequence(consult_id, [
            ("EventDialing", "1002"), ("EventRinging", "1003"), ("EventEstablished", "1003"),
            ("EventEstablished", "1002"), ("EventReleased", "1002")])
        changed = await tc.wait_for("EventPartyChanged", "1003")
        assert changed["AttributeConnID"] == conn_id
        assert changed["AttributePreviousConnID"] == consult_id
        assert changed["AttributeOtherDN"] == "1001" and changed["AttributeThirdPartyDN"] == "1002"
        await tc.sequence(conn_id, [
            ("EventDialing", "1001"), ("EventRinging", "1002"), ("EventEstablished", "1002"),
            ("EventEstablished", "1001"), ("EventPartyChanged", "1001"),
            ("EventPartyChanged", "1003")])
        released = await tc.client.request("RequestReleaseCall", AttributeThisDN="1003",
                                           AttributeConnID=conn_id)
        assert released["message"] == "EventReleased", released
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(target), target.errors()
        await tc.wait_for("EventReleased", "1001")
    # the caller was held (a=inactive), then re-INVITEd for the target's media
    log = caller.logs()
    assert "dir=inactive" in log, log
    assert log.count("reinvite dir=") == 2, log


# --------------------------------------------------------------------------- baresip


@dataclass
class Baresip:
    """A baresip softphone driven over ctrl_tcp (JSON netstrings)."""

    proc: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    events: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        while True:
            length = await self.reader.readuntil(b":")
            data = await self.reader.readexactly(int(length[:-1]))
            await self.reader.readexactly(1)  # the netstring's ","
            self.events.append(json.loads(data))

    async def command(self, command: str, params: str = "", token: str = "1") -> None:
        data = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.writer.write(str(len(data)).encode() + b":" + data + b",")
        await self.writer.drain()

    async def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("event") and event.get("type") == kind:
                    return event
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind}; got {[e.get('type') for e in self.events]}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.writer.close()
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


def tone(path: Path) -> None:
    """One second of 440 Hz, 8 kHz mono 16 bit: what a baresip phone sends."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(
            int(8000 * math.sin(2 * math.pi * 440 * i / 8000)).to_bytes(2, "little", signed=True)
            for i in range(8000)))


def spawn_baresip(node: Node, binary: str, dn: str,
                  workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """Config dir, tone and process of one baresip phone; its SIP and ctrl_tcp ports."""
    workdir.mkdir()
    tone(workdir / "tone.wav")
    sip_port, ctrl_port = node.port(), node.port()
    (workdir / "config").write_text(f"""poll_method epoll
sip_listen {HOST}:{sip_port}
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module aubridge.so
module sndfile.so
module ctrl_tcp.so
module_app account.so
module_app menu.so
audio_source aufile,{workdir / "tone.wav"}
audio_player aubridge,nil
snd_path {workdir}
ctrl_tcp_listen {HOST}:{ctrl_port}
""")
    (workdir / "accounts").write_text(
        f"<sip:{dn}@cluster.test>;auth_pass={PASSWORDS[dn]};"
        f'outbound="sip:{HOST}:{node.ports["sip"]};transport=udp";regint=60;'
        "answermode=auto\n")
    log = (workdir / "baresip.log").open("wb")
    proc = subprocess.Popen([binary, "-f", str(workdir), "-n", HOST], cwd=workdir,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return proc, sip_port, ctrl_port


async def start_baresip(node: Node, binary: str, dn: str, workdir: Path) -> Baresip:
    proc, _, ctrl_port = await asyncio.to_thread(spawn_baresip, node, binary, dn, workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, ctrl_port)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError((workdir / "baresip.log").read_text()) from None
            await asyncio.sleep(0.1)
    phone = Baresip(proc, reader, writer)
    phone.task = asyncio.create_task(phone._read())
    # registered when the node lists baresip's binding (sip:DN-0x...@host:port)
    while time.monotonic() < deadline:
        _, body = node.http("/status/registrations")
        if any(b["contact"].startswith(f"sip:{dn}-") for b in json.loads(body).get(dn, [])):
            return phone
        await asyncio.sleep(0.1)
    await phone.stop()
    raise AssertionError(f"baresip {dn} did not register: "
                         f"{(workdir / 'baresip.log').read_text()[-2000:]}")


@pytest.mark.timeout(30)
async def test_baresip_call(node: Node, require_tool: Any) -> None:
    """Two baresip phones register with digest, one calls the other (auto answer)
    through the node, the T-Library observer sees the call, then hang up."""
    binary = require_tool("baresip")
    caller = await start_baresip(node, binary, "1010", node.workdir / "baresip-1010")
    callee = await start_baresip(node, binary, "1011", node.workdir / "baresip-1011")
    try:
        async with monitor(node) as tc:
            await caller.command("dial", "sip:1011@cluster.test")
            await caller.wait_event("CALL_ESTABLISHED")
            await callee.wait_event("CALL_ESTABLISHED")
            established = await tc.wait_for("EventEstablished", "1011")
            conn_id = established["AttributeConnID"]
            assert established["AttributeOtherDN"] == "1010"
            await caller.command("hangup")
            await caller.wait_event("CALL_CLOSED")
            await callee.wait_event("CALL_CLOSED")
            await tc.sequence(conn_id, [
                ("EventDialing", "1010"), ("EventRinging", "1011"),
                ("EventEstablished", "1011"), ("EventEstablished", "1010"),
                ("EventReleased", "1010"), ("EventReleased", "1011")])
    finally:
        await caller.stop()
        await callee.stop()


def register_request(dn: str, port: int, cseq: int, authorization: str | None = None) -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return (f"REGISTER sip:cluster.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK-nonce-{cseq}\r\n"
            f"From: <sip:{dn}@cluster.test>;tag=nonce1\r\nTo: <sip:{dn}@cluster.test>\r\n"
            f"Call-ID: nonce-across-nodes\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{dn}@{HOST}:{port}>\r\nMax-Forwards: 70\r\nExpires: 60\r\n"
            f"{auth}Content-Length: 0\r\n\r\n").encode()


def test_digest_nonce_valid_on_another_node(node: Node) -> None:
    """A nonce issued by one node is accepted by another node of the switch: a phone
    that a proxy moves to another node is not challenged again."""
    proc, ports = start_sip_server(node.workdir / "cluster.toml", "SIPS_T2",
                                   node.workdir / "sip-server-2.log")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
            sock.sendto(register_request("1009", port, 1), (HOST, node.ports["sip"]))
            challenge = parse_message(sock.recvfrom(65535)[0])
            assert isinstance(challenge, Response) and challenge.status == 401
            client = DigestClient("1009", password=PASSWORDS["1009"])
            value = client.authorize(challenge.headers.get_all("WWW-Authenticate"),
                                     method="REGISTER", uri="sip:cluster.test")
            sock.sendto(register_request("1009", port, 2, value), (HOST, ports["sip"]))
            answer = parse_message(sock.recvfrom(65535)[0])
            assert isinstance(answer, Response) and answer.status == 200, bytes(answer)
            # back on the first node with nc=2 of that nonce: nonce counts are kept per
            # node, so it asks for a fresh nonce with stale=true (no password prompt)
            value = client.authorize(challenge.headers.get_all("WWW-Authenticate"),
                                     method="REGISTER", uri="sip:cluster.test")
            assert "nc=00000002" in value
            sock.sendto(register_request("1009", port, 3, value).replace(
                b"Expires: 60", b"Expires: 0"), (HOST, node.ports["sip"]))
            again = parse_message(sock.recvfrom(65535)[0])
            assert isinstance(again, Response) and again.status == 401
            assert "stale=true" in (again.headers.get("WWW-Authenticate") or "").lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    log = (node.workdir / "sip-server-2.log").read_text()
    assert "digest_secret_derived" in log  # no digest-secret in this file: said loudly


async def test_position_no_answer_overflow(node: Node, require_tool: Any) -> None:
    """posn-no-answer-overflow: an ACD position that does not answer within
    posn-no-answer-timeout hands the call to the overflow DN."""
    sipp_bin = require_tool("sipp")
    position = await asyncio.to_thread(phone, node, sipp_bin, "1012", "node_uas_ring.xml")
    overflow = await asyncio.to_thread(phone, node, sipp_bin, "1005", "node_uas_answer.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1012")
        assert await wait_proc(caller), caller.errors()
        assert await wait_proc(position), position.errors()
        assert await wait_proc(overflow), overflow.errors()
        conn_id = first_conn_id(tc, "EventDialing", "1001")
        await tc.sequence(conn_id, [
            ("EventDialing", "1001"), ("EventRinging", "1012"), ("EventReleased", "1012"),
            ("EventRinging", "1005"), ("EventEstablished", "1005"),
            ("EventEstablished", "1001"), ("EventReleased", "1001"),
            ("EventReleased", "1005")])
    assert any(e.get("event") == "call_no_answer_overflow" and e.get("to") == "1005"
               for e in node.log_events())


async def test_consultation_released_then_retrieve(node: Node, require_tool: Any) -> None:
    """The agent ends the consultation (RequestReleaseCall on its ConnID) and takes
    the held call back (RequestRetrieveCall): the node joins the agent's phone and
    the held party again, whatever the phone's sip-cti-control."""
    sipp_bin = require_tool("sipp")
    agent = await asyncio.to_thread(phone, node, sipp_bin, "1004", "node_uas_stay.xml")
    target = await asyncio.to_thread(phone, node, sipp_bin, "1003", "node_uas_stay.xml")
    async with monitor(node) as tc:
        caller = call(node, sipp_bin, "1001", "1004", "node_uac_stay.xml")
        established = await tc.wait_for("EventEstablished", "1001")
        conn_id = established["AttributeConnID"]
        held = await tc.client.request("RequestInitiateTransfer", AttributeThisDN="1004",
                                       AttributeConnID=conn_id, AttributeOtherDN="1003")
        assert held["message"] == "EventHeld", held
        consulting = await tc.wait_for("EventEstablished", "1003")
        consult_id = consulting["AttributeConnID"]
        ended = await tc.client.request("RequestReleaseCall", AttributeThisDN="1004",
                                        AttributeConnID=consult_id)
        assert ended["message"] == "EventReleased" and ended["AttributeConnID"] == consult_id
        assert await wait_proc(target), target.errors()  # the target got BYE
        retrieved = await tc.client.request("RequestRetrieveCall", AttributeThisDN="1004",
                                            AttributeConnID=conn_id)
        assert retrieved["message"] == "EventRetrieved", retrieved
        assert retrieved["AttributeOtherDN"] == "1001"
        released = await tc.client.request("RequestReleaseCall", AttributeThisDN="1004",
                                           AttributeConnID=conn_id)
        assert released["message"] == "EventReleased"
        assert await wait_proc(agent), agent.errors()
        assert await wait_proc(caller), caller.errors()
    # the caller: held (a=inactive), then re-INVITEd with the agent's phone's offer
    log = caller.logs()
    assert log.count("reinvite dir=") == 2 and "dir=inactive" in log, log
