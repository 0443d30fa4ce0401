"""Fixtures for end-to-end tests of the whole cluster: phones -> SIP Proxies ->
cluster nodes -> SIP Proxies -> phones, with the real daemons of ``sipcluster lab``.

The lab runs from ``deploy/etc/cluster.toml`` moved to 127.0.21.x (DC1) and
127.0.22.x (DC2), with short out-of-service detection so failures are seen
quickly. Phones are SIPp processes bound to an address of their data centre;
like a phone that supports SRV (RFC 3263) they resolve the SIP Cluster FQDN
from their own address, so the geo-aware DNS gives their data centre's proxies
first, and they fail over to the next target when one does not answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.dns import SipResolver

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
EXAMPLE_CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
SUBNETS = {"127.0.1.": "127.0.21.", "127.0.2.": "127.0.22."}
#: proxies check the nodes every PROXY_OOS_CHECK s, out of service PROXY_OOS_FORCE s later
PROXY_OOS_CHECK = 1
PROXY_OOS_FORCE = 2
#: nodes check the proxies (SIP Outbound Proxy DN oos-check / oos-force)
NODE_OOS_CHECK = 2
NODE_OOS_FORCE = 1
PROXIES = ("SIPProxy_dc1_1", "SIPProxy_dc1_2", "SIPProxy_dc2_1", "SIPProxy_dc2_2")


def generate_cluster_file(path: Path) -> Path:
    """The example cluster file on the test subnets, with fast oos-check settings."""
    text = EXAMPLE_CLUSTER.read_text()
    for old, new in SUBNETS.items():
        text = text.replace(old, new)
    # the SIP Outbound Proxy DN: how the nodes watch the proxies
    text, count = re.subn(
        r"(?ms)(service-type = \"sip-outbound-proxy\".*?)oos-check = \d+\noos-force = \d+",
        rf"\1oos-check = {NODE_OOS_CHECK}\noos-force = {NODE_OOS_FORCE}", text)
    assert count == 1, "the SIP Outbound Proxy DN of the example file changed shape"
    # every proxy: how it watches the nodes
    text = re.sub(r"(?ms)^\[applications\.[^\]]+\.sipproxy\]\n.*?(?=^\[|\Z)", "", text)
    for name in PROXIES:
        text += (f"\n[applications.{name}.sipproxy]\noos-check = {PROXY_OOS_CHECK}\n"
                 f"oos-force = {PROXY_OOS_FORCE}\n")
    path.write_text(text)
    return path


def http_json(host: str, port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read().decode())


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {what} (last: {last!r})")


@dataclass
class Lab:
    """A running lab: its directory, lab.json and the applications' addresses."""

    directory: Path
    desc: dict[str, Any]
    proxy_oos_check: float = PROXY_OOS_CHECK
    proxy_oos_force: float = PROXY_OOS_FORCE
    node_oos_check: float = NODE_OOS_CHECK
    node_oos_force: float = NODE_OOS_FORCE
    wait_for = staticmethod(wait_for)

    def command(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemons.cli", "lab", *args, "--dir",
                               str(self.directory)], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def kill(self, name: str) -> None:
        done = self.command("kill", name)
        assert done.returncode == 0, done.stdout + done.stderr

    def restart(self, name: str) -> None:
        done = self.command("restart", name)
        assert done.returncode == 0, done.stdout + done.stderr

    @property
    def dns(self) -> tuple[str, int]:
        return self.desc["dns"]["host"], int(self.desc["dns"]["port"])

    @property
    def domain(self) -> str:
        return str(self.desc["domain"])

    @property
    def srv_fqdn(self) -> str:
        return str(self.desc["srv_fqdn"])

    def password(self, dn: str) -> str:
        return next(str(a["password"]) for a in self.desc["accounts"] if a["dn"] == dn)

    def nodes(self, geo: str | None = None) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for g, c in self.desc["data_centres"].items() if geo in (None, g)
                for n in c["nodes"]}

    def proxies(self, geo: str | None = None) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for g, c in self.desc["data_centres"].items() if geo in (None, g)
                for p in c["proxies"]}

    def proxy_at(self, host: str) -> str:
        return next(name for name, p in self.proxies().items() if p["host"] == host)

    def status(self, name: str, path: str) -> Any:
        app = {**self.nodes(), **self.proxies()}[name]
        return http_json(app["host"], app["http_port"], path)

    def binding(self, proxy: str, dn: str) -> dict[str, Any] | None:
        """The live binding of ``dn`` in ``proxy``'s replicated registrar."""
        regs = self.status(proxy, "/status/registrations")
        aor = f"sip:{dn}@{self.domain}"
        for b in regs["bindings"]:
            if b.get("aor") in (aor, f"{dn}@{self.domain}"):
                return dict(b)
        return None

    def node_of(self, dn: str) -> str | None:
        """The node that holds ``dn``'s registration (the one its REGISTER went to)."""
        for name in self.nodes():
            try:
                if self.status(name, "/status/registrations").get(dn):
                    return name
            except (urllib.error.URLError, OSError):
                continue
        return None

    def log(self, name: str) -> str:
        path = self.directory / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The whole cluster, started once for the integration tests (the phones
    fixture checks for SIPp)."""
    tmp = tmp_path_factory.mktemp("cluster")
    config = generate_cluster_file(tmp / "cluster.toml")
    lab = Lab(tmp / "run", {})
    started = lab.command("start", "--config", str(config), "--timeout", "60", timeout=120)
    try:
        if started.returncode != 0:
            pytest.fail(f"lab did not start:\n{started.stdout}\n{started.stderr}")
        lab.desc = json.loads((lab.directory / "lab.json").read_text())
        yield lab
    finally:
        lab.command("stop")


# =========================================================================== phones


def resolve_proxies(lab: Lab, address: str) -> list[tuple[str, int]]:
    """RFC 3263 targets of the SIP Cluster FQDN as a phone at ``address`` gets them."""
    async def run() -> list[tuple[str, int]]:
        resolver = SipResolver([lab.dns], source=address, timeout=1.0)
        targets = await resolver.resolve(lab.srv_fqdn, transport="udp")
        return [(t.host_ip, t.port) for t in targets]
    return asyncio.run(run())


def answers_options(address: str, target: tuple[str, int], timeout: float = 0.5) -> bool:
    """One OPTIONS from ``address`` to ``target``; True when any response comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        tag = os.urandom(4).hex()
        msg = (f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {address}:{port};branch=z9hG4bK{tag};rport\r\n"
               f"From: <sip:probe@{address}>;tag={tag}\r\nTo: <sip:{target[0]}:{target[1]}>\r\n"
               f"Call-ID: probe-{tag}@{address}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n")
        try:
            sock.sendto(msg.encode(), target)
            data, _ = sock.recvfrom(65535)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 ")


@dataclass
class Phone:
    """A SIP phone: DN, the address and port it binds, the proxy it uses."""

    dn: str
    address: str
    port: int
    proxy: tuple[str, int]


@dataclass
class SippRun:
    proc: subprocess.Popen[str]
    workdir: Path

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def output(self) -> str:
        parts = []
        for name in ("stdout.txt", "errors.log", "messages.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def ok(self, timeout: float = 30) -> str:
        code = self.wait(timeout)
        assert code == 0, f"sipp exited {code}\n{self.output()}"
        path = self.workdir / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Phones:
    """SIPp phones bound to data centre addresses."""

    def __init__(self, lab: Lab, sipp: str, tmp: Path, free_port: Callable[..., int]) -> None:
        self.lab = lab
        self.sipp = sipp
        self.tmp = tmp
        self.free_port = free_port
        self.runs: list[SippRun] = []

    def run(self, scenario: str, address: str, port: int, target: tuple[str, int],
            service: str, *args: str, timeout: int = 20) -> SippRun:
        workdir = self.tmp / f"sipp-{len(self.runs)}-{scenario.removesuffix('.xml')}-{service}"
        workdir.mkdir()
        cmd = [self.sipp, f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / scenario),
               "-i", address, "-p", str(port), "-mi", address,
               "-mp", str(self.free_port(address)), "-s", service, "-t", "u1", "-m", "1",
               "-nostdin", "-trace_err", "-error_file", str(workdir / "errors.log"),
               "-trace_logs", "-log_file", str(workdir / "messages.log"),
               "-timeout", f"{timeout}s", "-timeout_error", "-set", "domain", self.lab.domain,
               *args]
        out = (workdir / "stdout.txt").open("w")
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "TERM": "dumb"})
        run = SippRun(proc, workdir)
        self.runs.append(run)
        return run

    def choose_proxy(self, address: str) -> tuple[str, int]:
        """The phone's RFC 3263 choice: the SRV targets in order, the first that answers."""
        for target in resolve_proxies(self.lab, address):
            if answers_options(address, target):
                return target
        raise AssertionError(f"no SIP Proxy answers a phone at {address}")

    def register(self, dn: str, address: str, proxy: tuple[str, int] | None = None,
                 port: int | None = None, expires: int = 600) -> Phone:
        """REGISTER ``dn`` from ``address`` (through ``proxy``, else the SRV choice)."""
        proxy = proxy or self.choose_proxy(address)
        port = port or self.free_port(address)
        self.run("register.xml", address, port, proxy, dn, "-au", dn, "-ap",
                 self.lab.password(dn), "-set", "expires", str(expires)).ok()
        return Phone(dn, address, port, proxy)

    def answer(self, phone: Phone) -> SippRun:
        """The phone waits for one call, answers it and waits for the BYE."""
        return self.run("uas_answer.xml", phone.address, phone.port, phone.proxy, phone.dn)

    def call(self, caller: Phone, callee: str, via: tuple[str, int] | None = None) -> SippRun:
        """``caller`` calls DN ``callee`` through its proxy (or ``via``)."""
        port = self.free_port(caller.address)
        return self.run("uac_call.xml", caller.address, port, via or caller.proxy, callee,
                        "-set", "caller", caller.dn, "-au", caller.dn, "-ap",
                        self.lab.password(caller.dn))

    def inbound(self, address: str, node: str, callee: str) -> SippRun:
        """A trunk call to ``callee`` sent straight to cluster node ``node``."""
        n = self.lab.nodes()[node]
        return self.run("uac_inbound.xml", address, self.free_port(address),
                        (n["host"], n["sip_port"]), callee, "-set", "caller", "+15550100")

    def call_and_answer(self, caller: Phone, callee: Phone,
                        via: tuple[str, int] | None = None) -> tuple[str, str]:
        """One complete call; the two SIPp message logs (callee, caller)."""
        uas = self.answer(callee)
        time.sleep(0.2)  # the UAS socket is bound before the INVITE comes
        uac = self.call(caller, callee.dn, via)
        caller_log = uac.ok()
        return uas.ok(), caller_log


@pytest.fixture
def phones(require_tool: Any, tmp_path: Path, free_port: Callable[..., int],
           request: pytest.FixtureRequest) -> Iterator[Phones]:
    sipp = require_tool("sipp")  # skips (or fails in CI) before the lab starts
    factory = Phones(request.getfixturevalue("lab"), sipp, tmp_path, free_port)
    yield factory
    for run in factory.runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
