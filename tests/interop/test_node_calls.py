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
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
HOST = "127.0.0.1"
PASSWORDS = {f"10{n:02d}": f"pw-10{n:02d}-x" for n in range(1, 10)}

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

[switch.tserver]
router-timeout = 1.5
default-dn = "1005"
extn-no-answer-timeout = 2

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_T1"]
sip-enable-strict-auth = true

[dns.5000]
type = "RoutingPoint"

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
""")


@dataclass
class Node:
    proc: subprocess.Popen[str]
    ports: dict[str, int]
    log_path: Path
    workdir: Path
    runs: int = 0

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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("node")
    ports = {name: free_port(HOST) for name in ("sip", "default", "ip", "http", "tc")}
    config = tmp / "cluster.toml"
    cluster_file(config, ports)
    log_path = tmp / "sip-server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.cli", "sip-server", "--config", str(config),
         "--name", "SIPS_T1", "--log-format", "json", "--backlog-window", "30"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 15
    while "daemon_ready" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sip-server did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    yield Node(proc, ports, log_path, tmp)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("sip-server did not stop on SIGTERM")
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    assert "daemon_stopped" in text
    assert "Traceback" not in text, text[text.index("Traceback") - 500:][:3000]


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
        port = free_port(HOST)
    cmd += ["-p", str(port)]
    out = (workdir / "stdout.txt").open("w")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TERM": "dumb"})
    return Sipp(proc, workdir)


def register(node: Node, sipp_bin: str, dn: str, port: int) -> None:
    """REGISTER ``dn`` with digest, binding sip:dn@127.0.0.1:port."""
    run = sipp(node, sipp_bin, "register_auth.xml",
               ["-s", dn, "-au", dn, "-ap", PASSWORDS[dn]], port=port)
    assert run.ok(), run.errors()


def phone(node: Node, sipp_bin: str, dn: str, scenario: str, *,
          ring_ms: int = 200) -> Sipp:
    """A phone for ``dn``: registered, then running a UAS scenario on its port."""
    port = free_port(HOST)
    register(node, sipp_bin, dn, port)
    return sipp(node, sipp_bin, scenario, ["-d", str(ring_ms)], port=port)


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
    port = free_port(HOST)
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
