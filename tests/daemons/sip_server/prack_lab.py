"""One cluster node on 127.0.245.x for the RFC 3262 / RFC 4028 tests: the node
(SIPS_A; its t-controller is not started: the callees are Extension DNs with
fixed contacts), the callee's phone (a SIPp UAS on 127.0.245.101), a transfer
target's phone (DN 1002, 127.0.245.102) and SIPp callers from 127.0.245.200,
every message they exchange traced. ``prack_lab`` runs the node as a process;
``node`` runs it in the test's own loop, whose clock the test moves forward
(RFC 3262 and RFC 4028 times of 32 s to 30 min)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemons.cluster.config import load_cluster
from daemons.sip_server.service import SipServer
from tests.daemons.sip_server.conftest import SCENARIOS, NodeLab, Sipp
from tests.support.processes import START_TIMEOUT

NODE = "127.0.245.11"
PHONE = "127.0.245.101"
CALLER = "127.0.245.200"
CALLEE_DN = "1001"
TARGET = "127.0.245.102"
TARGET_DN = "1002"


class PrackLab(NodeLab):
    def phone(self, scenario: str, *args: str) -> Sipp:
        """The callee's phone on DN 1001's contact, running ``scenario`` (SIPp ``args``,
        such as ``-set NAME VALUE``)."""
        return self.sipp(SCENARIOS / scenario, PHONE, self.ports["phone"], list(args))

    def target(self, scenario: str) -> Sipp:
        """The phone of DN 1002 (a transfer target), running ``scenario``."""
        return self.sipp(SCENARIOS / scenario, TARGET, self.ports["target"], [])

    def status_calls(self) -> list[dict[str, Any]]:
        """The node's /status/calls page: its calls, their legs and session timers."""
        url = f"http://{NODE}:{self.ports['http']}/status/calls"
        with urllib.request.urlopen(url, timeout=5) as r:
            answer: list[dict[str, Any]] = json.loads(r.read())
        return answer

    def caller(self, scenario: Path | str, *args: str) -> Sipp:
        """A call to DN 1001 at the node (a scenario file, or SIPp's built-in one named)."""
        params = [] if isinstance(scenario, str) else [
            "-set", "caller", "+15550100", "-set", "domain", "cluster.test"]
        return self.sipp(scenario, CALLER, self.free_port(CALLER),
                         ["-s", CALLEE_DN, *params, *args],
                         target=f"{NODE}:{self.ports['sip']}")

    def metrics(self, name: str) -> dict[str, float]:
        """The node's samples of ``name``, by their label text."""
        url = f"http://{NODE}:{self.ports['http']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                key, value = line.rsplit(" ", 1)
                out[key[len(name):]] = float(value)
        return out


def cluster_text(ports: dict[str, int], tserver: str) -> str:
    return f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.test"

[switch.tserver]
sip-enable-strict-auth = false
{tserver}

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A"]

[dns.{CALLEE_DN}]
type = "Extension"
contact = "sip:{CALLEE_DN}@{PHONE}:{ports['phone']}"

[dns.{TARGET_DN}]
type = "Extension"
contact = "sip:{TARGET_DN}@{TARGET}:{ports['target']}"

[applications.SIPS_A]
kind = "sip-server"
host = "{NODE}"
geo-location = "dc1"
sip-port = {ports['sip']}
default-port = {ports['default']}
http-port = {ports['http']}

[applications.TC_A]
kind = "t-controller"
host = "{NODE}"
sip-server = "SIPS_A"
tc-port = {ports['tc']}
http-port = {ports['tchttp']}
"""


@pytest.fixture
async def prack_lab(tmp_path: Path, free_port: Callable[..., int],
                    require_tool: Callable[[str], str]) -> AsyncIterator[Any]:
    """Factory: ``lab = await prack_lab(tserver="sip-enable-100rel = false")``."""
    labs: list[PrackLab] = []

    async def make(tserver: str = "") -> PrackLab:
        ports = {key: free_port(NODE) for key in ("sip", "default", "http", "tc", "tchttp")}
        ports["phone"] = free_port(PHONE)
        ports["target"] = free_port(TARGET)
        lab = PrackLab(tmp_path, ports, require_tool("sipp"), free_port)
        labs.append(lab)
        lab.config.write_text(cluster_text(ports, tserver))
        lab.start("sip-server", "SIPS_A")
        return lab

    yield make
    for lab in labs:
        await lab.close()


class MovedClock:
    """The running loop's ``time()`` plus an offset the test moves forward."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.real = loop.time
        self.offset = 0.0
        loop.time = self.time  # type: ignore[method-assign]

    def time(self) -> float:
        return self.real() + self.offset

    async def advance(self, seconds: float) -> None:
        self.offset += seconds
        self.loop.call_soon(lambda: None)  # the loop wakes and runs what is now due
        await asyncio.sleep(0.05)

    def restore(self) -> None:
        self.loop.time = self.real  # type: ignore[method-assign]


@pytest.fixture
async def node(tmp_path: Path, free_port: Callable[..., int],
               require_tool: Callable[[str], str]) -> AsyncIterator[tuple[PrackLab, MovedClock]]:
    """The node in this process (sip-session-expires 90 s, no-answer after 60 s) on a
    loop whose clock the test moves (:class:`MovedClock`), its peers SIPp processes."""
    clock = MovedClock(asyncio.get_running_loop())
    ports = {key: free_port(NODE) for key in ("sip", "default", "http", "tc", "tchttp")}
    ports["phone"] = free_port(PHONE)
    ports["target"] = free_port(TARGET)
    lab = PrackLab(tmp_path, ports, require_tool("sipp"), free_port)
    lab.config.write_text(cluster_text(
        ports, "sip-session-expires = 90\nextn-no-answer-timeout = 60"))
    server = SipServer(load_cluster(lab.config), "SIPS_A")
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while server.management.port is None:
                assert not task.done(), task
                await asyncio.sleep(0.02)
        yield lab, clock
    finally:
        server.stopping.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await task
        await lab.close()
        clock.restore()


async def until(check: Callable[[], Any], timeout: float = 15.0) -> None:
    """Poll ``check`` in a thread (it may ask the node's HTTP port, served on this loop)."""
    async with asyncio.timeout(timeout):
        while True:
            if await asyncio.to_thread(check):
                return
            await asyncio.sleep(0.05)


def body(message: str) -> str:
    text = message.replace("\r\n", "\n")
    return text.split("\n\n", 1)[1].strip() if "\n\n" in text else ""


def header(message: str, name: str) -> list[str]:
    """The values of header ``name`` in a traced message."""
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.split("\n")[1:]
            if line.split(":", 1)[0].strip().lower() == name.lower()]


def received_responses(sipp: Sipp, status: int) -> list[str]:
    """The ``status`` responses SIPp received, whole."""
    out = []
    for block in sipp.messages().split("----------------------------------------------- ")[1:]:
        head = block.split("\n", 3)
        if len(head) == 4 and "message received" in head[1] \
                and head[3].startswith(f"SIP/2.0 {status} "):
            out.append(head[3].rstrip("\n"))
    return out


__all__ = ["CALLEE_DN", "CALLER", "NODE", "PHONE", "TARGET", "TARGET_DN", "MovedClock",
           "PrackLab", "body", "cluster_text", "header", "node", "prack_lab",
           "received_responses", "until"]
