"""Fixtures of the interop matrix: the lab fixtures of tests/interop/lab, plus
baresip phones with a chosen outbound proxy and extra modules (MWI), SIPp
phones of the lab, Kamailio as an edge proxy in front of the cluster and a
tshark capture of the lab's SIP traffic."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.interop.lab import conftest as lab_fixtures
from tests.interop.lab.conftest import (
    LAB_SCENARIOS,
    Baresip,
    Linphonec,
    SippFactory,
    SippRun,
    baresip_config,
    write_tone,
)
from tests.support.processes import START_TIMEOUT

# the lab fixtures of tests/interop/lab, shared here
lab = lab_fixtures.lab
dc_resolvers = lab_fixtures.dc_resolvers
linphonec_phone = lab_fixtures.linphonec_phone

HERE = Path(__file__).resolve().parent
KAMAILIO_CFG = HERE / "kamailio-edge.cfg"
SCENARIOS = HERE / "scenarios"


# =========================================================================== baresip


@pytest.fixture
def baresip(lab: Any, dc_resolvers: dict[str, Any], tmp_path: Path, require_tool: Any,
            free_port: Callable[..., int]) -> Iterator[Callable[..., Baresip]]:
    """Factory: ``baresip("1001", transport="udp", tone_hz=440, via=None, mwi=False)``:
    a baresip of dc1 registered through the first dc1 proxy (or through ``via``,
    ``(host, port)`` of an edge proxy; over TLS through ``sip:SRV-FQDN;transport=tls``
    and the lab CA, as the lab's guide says), auto-answering, playing a tone."""
    binary = require_tool("baresip")
    phones: list[Baresip] = []
    counter = iter(range(101, 150))

    def start(dn: str, *, transport: str = "udp", tone_hz: float = 440.0,
              via: tuple[str, int] | None = None, mwi: bool = False,
              register: bool = True) -> Baresip:
        address = lab.prefix("dc1") + str(next(counter))
        workdir = tmp_path / f"baresip-{dn}-{len(phones)}"
        workdir.mkdir()
        phone = Baresip(name=dn, workdir=workdir, address=address,
                        sip_port=free_port(address), ctrl_port=free_port(address),
                        aor=f"sip:{dn}@{lab.domain}")
        tone = write_tone(workdir / f"tone-{int(tone_hz)}.wav", tone_hz, seconds=20.0)
        resolver = dc_resolvers["dc1"]
        baresip_config(phone, dns=(resolver.address, resolver.port), tone=tone)
        if mwi:
            with (workdir / "config").open("a") as config:
                config.write("module_app\t\tmwi.so\n")
        if transport == "tls":
            # as the lab's guide says: trust the lab CA, the proxy's TLS port
            with (workdir / "config").open("a") as config:
                config.write(f"sip_cafile\t\t{lab.desc['certificates']['ca']}\n")
        if via is None and transport == "tls":
            # exactly as the lab's guide says: the SRV FQDN over TLS, found through the
            # data centre's DNS (_sips._tcp: dc1's proxies on their TLS port)
            outbound = f"sip:{lab.srv_fqdn};transport=tls"
        else:
            if via is None:
                proxy = lab.proxies("dc1")[0]
                via = (proxy["host"], proxy["sip_port"])
            outbound = f"sip:{via[0]}:{via[1]};transport={transport}"
        account = (f"<sip:{dn}@{lab.domain};transport={transport}>;auth_pass={lab.password(dn)};"
                   f"outbound=\"{outbound}\";regint=60;answermode=auto;audio_codecs=PCMU")
        if mwi:
            phone.start(binary, account=account)
        else:
            (workdir / "accounts").write_text(account + "\n")
            phone.start(binary)
        phones.append(phone)
        if register:
            phone.wait_registered()
        return phone

    yield start
    for phone in phones:
        phone.stop()


# =========================================================================== linphonec over TLS


@pytest.fixture
def linphonec_tls(lab: Any, tmp_path: Path, require_tool: Any,
                  free_port: Callable[..., int]) -> Iterator[Callable[..., Linphonec]]:
    """Factory: ``linphonec_tls("1008", tone=Path, record=Path)``: linphonec of dc1
    registered over TLS with the first dc1 proxy's ``tls_port``, trusting only the
    lab CA (``root_ca``) and checking the proxy's certificate and name, as the
    lab's guide says; otherwise as tests/interop/lab's ``linphonec_phone``."""
    binary = require_tool("linphonec")
    phones: list[Linphonec] = []

    def start(dn: str, *, tone: Path, record: Path) -> Linphonec:
        address = lab.prefix("dc1") + "150"
        proxy = lab.proxies("dc1")[0]
        workdir = tmp_path / f"linphonec-tls-{dn}"
        (workdir / ".local" / "share" / "linphone").mkdir(parents=True)
        rc = workdir / "linphonerc"
        rc.write_text(f"""\
[sip]
sip_tls_port={free_port(address)}
bind_address={address}
default_proxy=0
sip_random_port=0
guess_hostname=0
root_ca={lab.desc['certificates']['ca']}
verify_server_certs=1
verify_server_cn=1

[rtp]
audio_rtp_port=30000-39999

[sound]
echocancellation=0
""")
        env = {**os.environ, "HOME": str(workdir), "TERM": "dumb"}
        proc = subprocess.Popen([binary, "-c", str(rc), "-d", "0", "-a"], cwd=workdir,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        phone = Linphonec(workdir, proc)
        threading.Thread(target=phone._read, daemon=True).start()
        phones.append(phone)
        phone.send("soundcard use files")
        phone.send(f"play {tone}")
        phone.send(f"record {record}")
        phone.send(f"register sip:{dn}@{lab.domain} "
                   f"<sip:{proxy['host']}:{proxy['tls_port']};transport=tls> "
                   f"{lab.password(dn)}")
        phone.wait_registered()
        return phone

    yield start
    for phone in phones:
        phone.stop()


# =========================================================================== SIPp


@dataclass
class SippPhones:
    """SIPp phones of dc1: register through the first dc1 proxy, run a scenario."""

    lab: Any
    sipp: SippFactory
    bound: list[tuple[str, str, int, str]] = field(default_factory=list)

    @property
    def proxy(self) -> dict[str, Any]:
        return self.lab.proxies("dc1")[0]  # type: ignore[no-any-return]

    def register(self, dn: str, address: str, port: int, *, transport: str = "u1",
                 expires: int = 120) -> Any:
        run = self.sipp.run("lab_register.xml", address=address, proxy=self.proxy, port=port,
                            transport=transport,
                            args=["-s", dn, "-au", dn, "-ap", self.lab.password(dn),
                                  "-set", "expires", str(expires)])
        assert run.ok(), run.errors()
        if expires:
            self.bound.append((dn, address, port, transport))
        return run

    def unregister_all(self) -> None:
        """Expires: 0 for every binding this cell's SIPp phones made: no stale
        contact of a finished cell is forked to by the next one."""
        for dn, address, port, transport in self.bound:
            with contextlib.suppress(AssertionError):
                self.register(dn, address, port, transport=transport, expires=0)
        self.bound.clear()

    def phone(self, dn: str, scenario: str, *, transport: str = "u1", ring_ms: int = 200,
              timeout: int = 30, address: str | None = None,
              extra: tuple[str, ...] = ()) -> Any:
        """``dn`` registered from ``address`` (by default a fresh one), then running UAS
        ``scenario`` there with ``extra`` arguments."""
        address = address or self.sipp.address("dc1")
        port = self.sipp.free_port(address)
        self.register(dn, address, port, transport=transport)
        return self.sipp.run(scenario, address=address, proxy=self.proxy, port=port,
                             transport=transport, args=["-d", str(ring_ms), *extra],
                             timeout=timeout)

    def call(self, caller: str, callee: str, scenario: str = "lab_uac_call.xml", *,
             transport: str = "u1", talk_ms: int = 300, timeout: int = 30,
             extra: tuple[str, ...] = ()) -> Any:
        return self.sipp.run(scenario, address=self.sipp.address("dc1"), proxy=self.proxy,
                             transport=transport, timeout=timeout,
                             args=["-s", callee, "-set", "caller", caller, "-au", caller,
                                   "-ap", self.lab.password(caller), "-d", str(talk_ms),
                                   *extra])


class MatrixSipp(SippFactory):
    """SIPp runs of the lab's scenarios and of the matrix's own (scenarios/)."""

    def run(self, scenario: str, *, address: str, proxy: dict[str, Any],
            args: list[str], port: int | None = None, transport: str = "u1",
            timeout: int = 20) -> SippRun:
        self.runs += 1
        workdir = self.tmp / f"sipp-{self.runs}-{scenario.removesuffix('.xml')}"
        workdir.mkdir()
        path = SCENARIOS / scenario if (SCENARIOS / scenario).exists() else \
            LAB_SCENARIOS / scenario
        if port is None:
            port = self.free_port(address)
        cmd = [self.binary, f"{proxy['host']}:{proxy['sip_port']}",
               "-sf", str(path), "-i", address, "-p", str(port),
               "-t", transport, "-m", "1", "-nostdin",
               "-trace_err", "-error_file", str(workdir / "errors.log"),
               "-trace_stat", "-stf", str(workdir / "stat.csv"),
               "-trace_logs", "-log_file", str(workdir / "messages.log"),
               "-trace_msg", "-message_file", str(workdir / "wire.log"),
               "-fd", "1", "-timeout", f"{timeout}s", "-timeout_error",
               "-set", "domain", self.lab.domain, *args]
        out = (workdir / "stdout.txt").open("w")
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "TERM": "dumb"})
        run = SippRun(proc, workdir)
        self.started.append(run)
        return run


@pytest.fixture
def sipp_phones(lab: Any, require_tool: Any, tmp_path: Path,
                free_port: Callable[..., int]) -> Iterator[SippPhones]:
    factory = MatrixSipp(lab, require_tool("sipp"), tmp_path, free_port)
    phones = SippPhones(lab, factory)
    yield phones
    for run in factory.started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    phones.unregister_all()


# =========================================================================== Kamailio


@dataclass
class Kamailio:
    """Kamailio as an edge proxy (the SBC position) in front of the lab's dc1 proxy."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    version: str = ""
    relayed: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def kamailio_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()
    return first[0] if first else "?"


@pytest.fixture(scope="module")
def kamailio(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """One Kamailio per module on .90 of dc1, UDP and TCP, forwarding to SIPProxy_dc1_1."""
    binary = require_tool("kamailio")
    proxy = lab.proxies("dc1")[0]
    host = lab.prefix("dc1") + "90"
    port = 5060
    tmp = tmp_path_factory.mktemp("kamailio")
    log_path = tmp / "kamailio.log"
    upstream = f"{proxy['host']}:{proxy['sip_port']}"
    cmd = [binary, "-DD", "-E", "-m", "64", "-M", "8", "-f", str(KAMAILIO_CFG),
           "-l", f"udp:{host}:{port}", "-l", f"tcp:{host}:{port}",
           "-A", f'UPSTREAM="{upstream}"', "-A", f'DOMAIN="{lab.domain}"',
           "-Y", str(tmp), "-P", str(tmp / "kamailio.pid")]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    edge = Kamailio(host, port, proc, log_path, kamailio_version(binary))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"kamailio did not start:\n{edge.log()[-3000:]}")
            time.sleep(0.1)
        yield edge
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _listening(host: str, port: int) -> bool:
    import socket
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


# =========================================================================== helpers


def feature_server(lab: Any) -> tuple[str, int]:
    """(host, http port) of FS_dc1 (lab.json does not list feature-servers)."""
    return lab.prefix("dc1") + "31", 8080


def fs_json(lab: Any, path: str) -> Any:
    host, port = feature_server(lab)
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def fs_metric(lab: Any, name: str) -> float:
    """Sum of every sample of ``name`` on FS_dc1's /metrics."""
    host, port = feature_server(lab)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}(\{{| )", line):
            total += float(line.rsplit(" ", 1)[1])
    return total
