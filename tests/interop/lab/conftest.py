"""Fixtures for interop tests through the two-data-centre lab: the lab itself,
a data centre's DNS resolver, baresip and linphonec softphones, SIPp phones.

The lab runs from a cluster file generated from ``deploy/etc/cluster.toml``
with the data centres moved to other loopback subnets (each test module names
its own in ``LAB_SUBNETS``), so it never collides with the default lab
(127.0.1.x / 127.0.2.x) or with another test's lab.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import (  # type: ignore[import-not-found]
    LabDescription,
    http_json,
)
from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[3]
LAB_SCENARIOS = Path(__file__).resolve().parent / "scenarios"
EXAMPLE_CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
BARESIP_MODULES = Path("/usr/lib/baresip/modules")

#: subnets used when a test module does not name its own
DEFAULT_SUBNETS = {"127.0.1.": "127.0.11.", "127.0.2.": "127.0.12."}


# =========================================================================== the lab


def generate_cluster_file(
    path: Path, subnets: dict[str, str], tserver: dict[str, object] | None = None,
    switch: dict[str, object] | None = None, drop: tuple[str, ...] = (),
) -> Path:
    """``deploy/etc/cluster.toml`` with every ``127.0.1.`` / ``127.0.2.`` address
    moved to ``subnets``, the given ``[switch.tserver]`` options replaced,
    ``[switch]`` options added and the applications named in ``drop`` removed."""
    text = EXAMPLE_CLUSTER.read_text()
    for name in drop:
        # the application's tables, then its name in the cluster node DN's lists
        text = re.sub(rf"(?ms)^\[applications\.{re.escape(name)}(\.[^\]]+)?\]\n.*?(?=^\[|\Z)",
                      "", text)
        text = re.sub(rf'"{re.escape(name)}",\s*|,\s*"{re.escape(name)}"', "", text)
    for old, new in subnets.items():
        text = text.replace(old, new)
    for option, value in (switch or {}).items():
        text = text.replace("[switch]\n", f"[switch]\n{option} = {json.dumps(value)}\n", 1)
    for option, value in (tserver or {}).items():
        rendered = json.dumps(value)
        text, count = re.subn(rf"(?m)^{re.escape(option)}\s*=\s*[^#\n]*",
                              f"{option} = {rendered}   ", text, count=1)
        if count == 0:
            text = text.replace("[switch.tserver]\n", f"[switch.tserver]\n{option} = {rendered}\n")
    path.write_text(text)
    return path


@dataclass
class Lab(LabDescription):
    """A running ``sipcluster lab`` and what its lab.json says."""

    subnets: dict[str, str]
    http_json = staticmethod(http_json)

    def prefix(self, geo: str) -> str:
        """``127.0.11.`` for dc1 ...: where a phone "in" that data centre binds."""
        return self.desc["data_centres"][geo]["nodes"][0]["host"].rsplit(".", 1)[0] + "."

    def nodes(self, geo: str | None = None) -> list[dict[str, Any]]:
        return [n for g, c in self.desc["data_centres"].items() if geo in (None, g)
                for n in c["nodes"]]

    def proxies(self, geo: str | None = None) -> list[dict[str, Any]]:
        return [p for g, c in self.desc["data_centres"].items() if geo in (None, g)
                for p in c["proxies"]]

    def registrations(self) -> dict[str, Any]:
        """``/status/registrations`` of every node, merged: DN -> (node name, entry)."""
        merged: dict[str, Any] = {}
        for node in self.nodes():
            try:
                regs = self.http_json(node["host"], node["http_port"], "/status/registrations")
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for dn, entry in regs.items():
                merged[dn] = (node["name"], entry)
        return merged


def _lab_command(
    directory: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIPCLUSTER, "lab", *args, "--dir", str(directory)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab per test module, from a generated cluster file.

    A module sets ``LAB_SUBNETS`` (old prefix -> new prefix), ``LAB_TSERVER``
    (``[switch.tserver]`` options to override) and ``LAB_SWITCH`` (``[switch]``
    options to add) and ``LAB_DROP`` (applications to leave out) to shape it.
    """
    subnets: dict[str, str] = getattr(request.module, "LAB_SUBNETS", DEFAULT_SUBNETS)
    tserver: dict[str, object] = getattr(request.module, "LAB_TSERVER", {})
    switch: dict[str, object] = getattr(request.module, "LAB_SWITCH", {})
    drop: tuple[str, ...] = getattr(request.module, "LAB_DROP", ())
    tmp = tmp_path_factory.mktemp("lab")
    config = generate_cluster_file(tmp / "cluster-generated.toml", subnets, tserver, switch,
                                   drop)
    directory = tmp / "run"
    started = _lab_command(directory, "start", "--config", str(config))
    try:
        if started.returncode != 0:
            pytest.fail(f"lab did not start:\n{started.stdout}\n{started.stderr}")
        desc = json.loads((directory / "lab.json").read_text())
        lab = Lab(directory, desc, subnets)
        _wait_local_nodes_usable(lab)
        yield lab
    finally:
        _lab_command(directory, "stop")


def _wait_local_nodes_usable(lab: Lab, timeout: float = 20.0) -> None:
    """Healthy is not routed: until its first node checks answer, a proxy knows no
    node of its own data centre in service and sends new dialogs elsewhere. Wait
    until every running proxy has a usable node of its own geo-location."""
    deadline = time.monotonic() + timeout
    pending = [p for p in lab.proxies() if p["running"]]
    while pending:
        for proxy in list(pending):
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError):
                nodes = lab.http_json(proxy["host"], proxy["http_port"], "/status/nodes")["nodes"]
                if any(n["local"] and n["usable"] for n in nodes.values()):
                    pending.remove(proxy)
        if pending and time.monotonic() > deadline:
            pytest.fail("proxies without a usable local node: "
                        + ", ".join(p["name"] for p in pending))
        if pending:
            time.sleep(0.2)


# =========================================================================== DNS


class DcResolver:
    """A data centre's DNS resolver: relays queries to the lab's geo-aware DNS
    from an address of that data centre.

    Phones do not query the authoritative server themselves: they ask the
    resolver of their site, and the geo-aware DNS answers by the resolver's
    address. A phone on loopback sends from 127.0.0.1 whatever address it binds
    for SIP, so without this relay every phone would get the default view.
    """

    def __init__(self, address: str, upstream: tuple[str, int]) -> None:
        self.address = address
        self.upstream = upstream
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            try:
                query, client = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.bind((self.address, 0))
                up.settimeout(2.0)
                try:
                    up.sendto(query, self.upstream)
                    answer, _ = up.recvfrom(65535)
                except OSError:
                    continue
            with contextlib.suppress(OSError):
                self.sock.sendto(answer, client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def dc_resolvers(lab: Lab) -> Iterator[dict[str, DcResolver]]:
    """geo-location -> its data centre's resolver (on .54 of its subnet)."""
    resolvers = {geo: DcResolver(lab.prefix(geo) + "54", lab.dns)
                 for geo in lab.desc["data_centres"]}
    yield resolvers
    for resolver in resolvers.values():
        resolver.close()


# =========================================================================== audio


def write_tone(path: Path, frequency: float, seconds: float = 30.0, rate: int = 8000) -> Path:
    """A sine tone, 8 kHz mono 16-bit WAV (what G.711 carries); longer than any call,
    since baresip ends a call whose audio source runs out."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        sample = int(12000 * math.sin(2 * math.pi * frequency * i / rate))
        frames += struct.pack("<h", sample)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


@dataclass(frozen=True)
class Heard:
    """What a recording holds: its length, loudness and the tone power ratio."""

    seconds: float
    rms: float
    power: dict[float, float]

    def dominant(self) -> float:
        return max(self.power, key=lambda f: self.power[f])


def _goertzel(samples: list[int], rate: int, frequency: float) -> float:
    """Power of ``frequency`` in ``samples`` (Goertzel's single-bin DFT)."""
    coeff = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for x in samples:
        s0 = x + coeff * s1 - s2
        s2, s1 = s1, s0
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / max(len(samples), 1)


def analyse_wav(path: Path, frequencies: tuple[float, ...] = (440.0, 880.0)) -> Heard:
    """Loudness (RMS of the loud part) and per-frequency power of a 16-bit WAV."""
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        channels = wav.getnchannels()
        raw = wav.readframes(wav.getnframes())
        assert wav.getsampwidth() == 2, f"{path}: not 16-bit"
    samples = list(struct.unpack(f"<{len(raw) // 2}h", raw))[::channels]
    # the loudest second-long stretch: the start of a call may be silent
    window = rate
    best: list[int] = samples[:window]
    best_energy = -1.0
    for start in range(0, max(len(samples) - window, 0) + 1, window // 2):
        chunk = samples[start:start + window]
        energy = sum(x * x for x in chunk)
        if energy > best_energy:
            best, best_energy = chunk, energy
    rms = math.sqrt(best_energy / len(best)) if best else 0.0
    power = {f: _goertzel(best, rate, f) for f in frequencies}
    return Heard(len(samples) / rate, rms, power)


@dataclass(frozen=True)
class Audio:
    """Tone files and recording analysis, for tests (fixture ``audio``)."""

    directory: Path

    def tone(self, frequency: float) -> Path:
        return write_tone(self.directory / f"tone-{int(frequency)}.wav", frequency)

    def analyse(self, path: Path) -> Heard:
        return analyse_wav(path)


@pytest.fixture
def audio(tmp_path: Path) -> Audio:
    return Audio(tmp_path)


# =========================================================================== baresip


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


@dataclass
class Baresip:
    """One headless baresip, driven over ``ctrl_tcp`` (JSON netstrings)."""

    name: str
    workdir: Path
    address: str
    sip_port: int
    ctrl_port: int
    aor: str
    proc: subprocess.Popen[bytes] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    _sock: socket.socket | None = None
    _reader: threading.Thread | None = None
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _token: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "baresip.log"

    @property
    def record_dir(self) -> Path:
        return self.workdir / "heard"

    def start(self, binary: str, *, account: str | None = None) -> None:
        """Start baresip from its ``workdir``; with ``account`` (an accounts-file line) the
        user agent is created through the control port once baresip runs, not read from
        the accounts file. Do that for an account with MWI: baresip 1.0's mwi module
        walks its subscription list from a 1 ms start timer and appends to the list it
        walks (modules/mwi/mwi.c, ``tmr_handler``), so an account that registered before
        that timer fired makes it SUBSCRIBE in a loop that never ends."""
        self.record_dir.mkdir(exist_ok=True)
        if account is not None:
            (self.workdir / "accounts").write_text("")
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen([binary, "-f", str(self.workdir), "-s"], cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._sock = socket.create_connection((self.address, self.ctrl_port), timeout=1)
                break
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"baresip {self.name} did not start:\n{self.log()}") from exc
                time.sleep(0.1)
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if account is not None:
            self.command("reginfo", timeout=15.0)  # answered from the main loop
            time.sleep(0.05)                       # past the mwi module's start timer
            created = self.command("uanew", account, timeout=15.0)
            assert created.get("ok"), f"{self.name}: uanew refused: {created}\n{self.log()}"

    def _read(self) -> None:
        assert self._sock is not None
        buffer = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b":" in buffer:
                length_text, rest = buffer.split(b":", 1)
                length = int(length_text)
                if len(rest) < length + 1:
                    break
                message = json.loads(rest[:length])
                buffer = rest[length + 1:]
                with self._lock:
                    if message.get("event"):
                        self.events.append(message)
                    elif message.get("response"):
                        self.responses[str(message.get("token"))] = message
                    self._lock.notify_all()

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Run a baresip command; its response (``ok``, ``data``)."""
        assert self._sock is not None
        self._token += 1
        token = str(self._token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(_netstring(body))
        with self._lock:
            if not self._lock.wait_for(lambda: token in self.responses, timeout):
                raise AssertionError(f"{self.name}: no response to {command}\n{self.log()}")
            return self.responses.pop(token)

    def wait_event(self, kind: str, *, after: int = 0, timeout: float = 15.0) -> dict[str, Any]:
        """The first ``kind`` event (REGISTER_OK, CALL_ESTABLISHED ...) from index ``after``."""
        def found() -> dict[str, Any] | None:
            for event in self.events[after:]:
                # a call that closed first will not get established: fail now
                if event.get("type") in (kind, "CALL_CLOSED"):
                    return event
            return None
        with self._lock:
            if not self._lock.wait_for(lambda: found() is not None, timeout):
                seen = [e.get("type") for e in self.events]
                raise AssertionError(f"{self.name}: no {kind}; events {seen}\n{self.log()}")
            result = found()
            assert result is not None
            if result.get("type") != kind:
                raise AssertionError(f"{self.name}: {result} before {kind}\n{self.log()}")
            return result

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def wait_registered(self, timeout: float = 15.0) -> str:
        """Until ``reginfo`` shows a 200 to the REGISTER (the REGISTER_OK event may
        have gone before the control connection was up)."""
        deadline = time.monotonic() + timeout
        while True:
            info = str(self.command("reginfo").get("data", ""))
            if " 200 " in info or "OK" in info.split("\n", 1)[-1]:
                return info
            refused = re.search(r"reg: \S+: [3-6]\d\d .*|reg: \S+: Register: .*", self.log())
            if refused or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: not registered: {info}\n{self.log()}")
            time.sleep(0.2)

    def dial(self, uri: str) -> None:
        answer = self.command("dial", uri)
        assert answer.get("ok"), answer

    def hangup(self) -> None:
        self.command("hangup")

    def recordings(self, kind: str = "dec") -> set[Path]:
        """sndfile's dumps: ``dec`` = what the phone heard, ``enc`` = what it sent."""
        return set(self.record_dir.glob(f"*-{kind}.wav"))

    def heard(self, before: set[Path], timeout: float = 5.0) -> Heard:
        """What the phone heard in the call recorded after ``before`` (one new dump)."""
        deadline = time.monotonic() + timeout
        while True:
            new = sorted(self.recordings() - before)
            if new and new[-1].stat().st_size > 44:
                with contextlib.suppress(wave.Error, EOFError, AssertionError):
                    return analyse_wav(new[-1])
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no recording of the call in "
                                     f"{sorted(self.record_dir.iterdir())}\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-6000:]

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(_netstring(json.dumps(
                    {"command": "quit", "params": "", "token": "quit"}).encode()))
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._sock is not None:
            self._sock.close()


def baresip_config(phone: Baresip, *, dns: tuple[str, int], tone: Path) -> None:
    """Write ``config`` for a headless phone: G.711, a WAV as microphone,
    sndfile recording what it hears, ctrl_tcp, the data centre's resolver."""
    (phone.workdir / "config").write_text(f"""\
poll_method		epoll
sip_listen		{phone.address}:{phone.sip_port}
call_local_timeout	120
call_max_calls		4
audio_player		aubridge,{phone.name}
audio_source		aufile,{tone}
audio_alert		aubridge,{phone.name}-alert
ausrc_srate		8000
auplay_srate		8000
ausrc_channels		1
auplay_channels		1
rtp_ports		20000-29999
rtp_timeout		0
dns_server		{dns[0]}:{dns[1]}
net_interface		{phone.address}
module_path		{BARESIP_MODULES}
module			g711.so
module			aufile.so
module			aubridge.so
module			sndfile.so
module_app		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		{phone.address}:{phone.ctrl_port}
snd_path		{phone.record_dir}
""")


@pytest.fixture
def baresip_phone(
    lab: Lab, dc_resolvers: dict[str, DcResolver], tmp_path: Path, require_tool: Any,
    free_port: Callable[..., int],
) -> Iterator[Callable[..., Baresip]]:
    """Factory: ``baresip_phone("1001", "dc1", route="srv", transport="udp", tone_hz=440)``:
    a baresip registered through the lab, auto-answering, playing a tone.

    ``route`` says how the phone finds the proxies, always through its data
    centre's resolver: ``srv`` = outbound proxy ``sip:<SRV FQDN>;transport=T``
    (RFC 3263 §4.2 SRV), ``naptr`` = no outbound proxy, the AoR's domain is
    resolved (RFC 3263 §4.1 NAPTR, which picks the transport), ``address`` =
    outbound proxy at the first proxy of its data centre, by address.
    ``tone_seconds``: how long the phone plays (baresip ends a call whose audio
    source runs out)."""
    binary = require_tool("baresip")
    phones: list[Baresip] = []
    counter = iter(range(101, 200))

    def start(dn: str, geo: str, *, route: str = "srv", transport: str = "udp",
              tone_hz: float = 440.0, tone_seconds: float = 30.0) -> Baresip:
        address = lab.prefix(geo) + str(next(counter))
        workdir = tmp_path / f"baresip-{dn}-{geo}-{transport}"
        workdir.mkdir()
        phone = Baresip(name=f"{dn}-{geo}", workdir=workdir, address=address,
                        sip_port=free_port(address), ctrl_port=free_port(address),
                        aor=f"sip:{dn}@{lab.domain}")
        tone = write_tone(workdir / f"tone-{int(tone_hz)}.wav", tone_hz, tone_seconds)
        resolver = dc_resolvers[geo]
        baresip_config(phone, dns=(resolver.address, resolver.port), tone=tone)
        if route == "naptr":
            aor, outbound = f"<sip:{dn}@{lab.domain}>", ""
        else:
            proxy = lab.proxies(geo)[0]
            target = lab.srv_fqdn if route == "srv" else f"{proxy['host']}:{proxy['sip_port']}"
            aor = f"<sip:{dn}@{lab.domain};transport={transport}>"
            outbound = f"outbound=\"sip:{target};transport={transport}\";"
        (workdir / "accounts").write_text(
            f"{aor};auth_pass={lab.password(dn)};{outbound}regint=60;"
            f"answermode=auto;audio_codecs=PCMU\n")
        phone.start(binary)
        phones.append(phone)
        phone.wait_registered()
        return phone

    yield start
    for phone in phones:
        phone.stop()


# =========================================================================== linphonec


@dataclass
class Linphonec:
    """linphonec driven over its stdin; its output is collected in ``output``."""

    workdir: Path
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    _lock: threading.Condition = field(default_factory=threading.Condition)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.output.append(line.rstrip("\n"))
                self._lock.notify_all()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 15.0) -> str:
        regex = re.compile(pattern)

        def found() -> str | None:
            for line in self.output[after:]:
                if regex.search(line):
                    return line
            return None
        with self._lock:
            if not self._lock.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"linphonec: no /{pattern}/ in:\n" +
                                     "\n".join(self.output[-60:]))
            line = found()
            assert line is not None
            return line

    def mark(self) -> int:
        with self._lock:
            return len(self.output)

    def wait_registered(self, timeout: float = 15.0) -> None:
        """Until ``status register`` says the proxy config registered."""
        deadline = time.monotonic() + timeout
        while True:
            mark = self.mark()
            self.send("status register")
            with contextlib.suppress(AssertionError):
                line = self.wait_for(r"^(linphonec> )?(registered|unregistered|registered,)",
                                     after=mark, timeout=2)
                if "unregistered" not in line and "=-1" not in line:
                    return
            if time.monotonic() > deadline:
                raise AssertionError("linphonec: not registered:\n" + "\n".join(self.output[-40:]))
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("quit")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def linphonec_phone(
    lab: Lab, tmp_path: Path, require_tool: Any, free_port: Callable[..., int],
) -> Iterator[Callable[..., Linphonec]]:
    """Factory: ``linphonec_phone("1003", "dc1", transport="udp", tone=Path, record=Path)``:
    linphonec registered (``register`` command; linphonec 5 ignores a
    ``[proxy_0]`` of the -c file) through the first proxy of its data centre
    by address, auto-answering, playing ``tone`` and recording what it hears."""
    binary = require_tool("linphonec")
    phones: list[Linphonec] = []

    def start(dn: str, geo: str, *, transport: str = "udp", tone: Path,
              record: Path) -> Linphonec:
        address = lab.prefix(geo) + "150"
        proxy = lab.proxies(geo)[0]
        workdir = tmp_path / f"linphonec-{dn}"
        (workdir / ".local" / "share" / "linphone").mkdir(parents=True)
        port = free_port(address)
        tport = {"udp": "sip_port", "tcp": "sip_tcp_port"}[transport]
        rc = workdir / "linphonerc"
        rc.write_text(f"""\
[sip]
{tport}={port}
bind_address={address}
default_proxy=0
sip_random_port=0
guess_hostname=0

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
        # no sound card here: play a WAV as the microphone, record what is heard
        phone.send("soundcard use files")
        phone.send(f"play {tone}")
        phone.send(f"record {record}")
        phone.send(f"register sip:{dn}@{lab.domain} "
                   f"<sip:{proxy['host']}:{proxy['sip_port']};transport={transport}> "
                   f"{lab.password(dn)}")
        phone.wait_registered()
        return phone

    yield start
    for phone in phones:
        phone.stop()


# =========================================================================== SIPp


@dataclass
class SippRun:
    """A SIPp process started in the background; ``wait`` gives its last stat row."""

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

    def ok(self, timeout: float = 30.0) -> bool:
        stats = self.wait(timeout)
        return (stats.get("SuccessfulCall(C)") == "1" and stats.get("FailedCall(C)") == "0"
                and self.proc.returncode == 0)

    def logs(self) -> str:
        path = self.workdir / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def errors(self) -> str:
        path = self.workdir / "errors.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        out = (self.workdir / "stdout.txt").read_text(errors="replace")
        return f"rc={self.proc.returncode} {text[-3000:]}\n{out[-1500:]}\n{self.logs()[-3000:]}"


@dataclass
class SippFactory:
    """Starts SIPp phones of the lab: bound in a data centre, talking to a proxy."""

    lab: Lab
    binary: str
    tmp: Path
    free_port: Callable[..., int]
    runs: int = 0
    started: list[SippRun] = field(default_factory=list)
    _hosts: Iterator[int] = field(default_factory=lambda: iter(range(160, 250)))

    def address(self, geo: str) -> str:
        return self.lab.prefix(geo) + str(next(self._hosts))

    def run(self, scenario: str, *, address: str, proxy: dict[str, Any],
            args: list[str], port: int | None = None, transport: str = "u1",
            timeout: int = 20) -> SippRun:
        self.runs += 1
        workdir = self.tmp / f"sipp-{self.runs}-{scenario.removesuffix('.xml')}"
        workdir.mkdir()
        if port is None:
            port = self.free_port(address)
        cmd = [self.binary, f"{proxy['host']}:{proxy['sip_port']}",
               "-sf", str(LAB_SCENARIOS / scenario), "-i", address, "-p", str(port),
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
def sipp_lab(lab: Lab, require_tool: Any, tmp_path: Path,
             free_port: Callable[..., int]) -> Iterator[SippFactory]:
    factory = SippFactory(lab, require_tool("sipp"), tmp_path, free_port)
    yield factory
    for run in factory.started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
