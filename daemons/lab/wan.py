"""Emulated WAN between two data centres: delay and loss, both ways.

The kernel's ``netem`` qdisc is the usual tool, but not every kernel has it
(``tc`` answers "Specified qdisc kind is unknown"), and netem on ``lo`` would
touch the whole host. This needs only a TUN device and a network namespace of
its own:

* the namespace gets ``lo`` up and two /24s that are local addresses on ``lo``
  (one per data centre; loopback /24s such as the lab's 127.0.1.0/24 too, with
  ``route_localnet`` set in the namespace so that the kernel routes them
  through another device);
* policy rules, consulted before the local table, send a packet from one /24
  to the other out through a TUN device, both ways; every other packet is
  delivered on ``lo`` as usual;
* a relay reads the TUN device and writes each packet back ``delay`` later, so
  the kernel receives it as if it came off a wire, or drops it with probability
  ``loss``. A fixed delay keeps every flow in order, as netem without jitter
  does; TCP sees the loss and retransmits.

A round trip between the data centres takes twice the delay; nothing outside
the namespace is touched. Needs root (CAP_NET_ADMIN), ``ip`` and /dev/net/tun.

    python -m daemons.lab.wan relay --tun wan0 --delay-ms 40 --loss 1 [--state FILE]

runs the relay in the foreground, in the namespace (``ip netns exec NS``); it
writes its counters to ``--state`` every second and stops on SIGTERM.
``Wan.create()`` / ``Wan.delete()`` set up and remove a namespace with its relay;
``sipcluster lab start --wan-delay-ms 40 --wan-loss 1`` and
``bench/bench_failover.py`` run the lab inside one (``stop_detached`` removes
one whose relay outlived the process that made it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
#: a routing table of the namespace's own for the packets between the data centres
WAN_TABLE = 100

log = structlog.get_logger("lab.wan")


class WanError(RuntimeError):
    """The kernel refused what the emulation needs, or a tool is missing."""


# --------------------------------------------------------------------------- relay


def open_tun(name: str) -> int:
    """Attach to the TUN device ``name`` (made by ``ip tuntap add``); raw IP packets."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class Counters:
    delayed: int = 0
    dropped: int = 0
    write_errors: int = 0
    by_direction: dict[str, int] = field(default_factory=dict)


class Relay:
    """Writes every packet read from the TUN device back ``delay`` seconds later,
    or drops it with probability ``loss``."""

    def __init__(self, fd: int, delay: float, loss: float,
                 rng: Callable[[], float] = random.random) -> None:
        self.fd, self.delay, self.loss, self.rng = fd, delay, loss, rng
        self.counters = Counters()
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)

    def stop(self) -> None:
        self.loop.remove_reader(self.fd)

    def _write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, packet)
        except OSError as exc:  # the kernel refused it (e.g. no route back): count it
            self.counters.write_errors += 1
            log.warning("wan_write_failed", error=str(exc), size=len(packet))

    def _readable(self) -> None:
        for _ in range(256):
            try:
                packet = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not packet:
                return
            if self.loss > 0 and self.rng() < self.loss:
                self.counters.dropped += 1
                continue
            self.counters.delayed += 1
            if self.delay > 0:
                self.loop.call_later(self.delay, self._write, packet)
            else:
                self._write(packet)


async def serve(tun: str, delay: float, loss: float, state: Path | None) -> int:
    try:
        fd = open_tun(tun)
    except OSError as exc:
        log.error("wan_start_failed", tun=tun, error=str(exc))
        print(f"wan: cannot attach to {tun}: {exc}", file=sys.stderr)
        return 1
    relay = Relay(fd, delay, loss)
    relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("wan_started", tun=tun, delay_ms=delay * 1000, loss_percent=loss * 100)

    def write_state() -> None:
        if state is None:
            return
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "tun": tun, "delay_ms": delay * 1000,
                                   "loss_percent": loss * 100, "delayed": relay.counters.delayed,
                                   "dropped": relay.counters.dropped,
                                   "write_errors": relay.counters.write_errors,
                                   "at": time.time()}))
        tmp.replace(state)

    write_state()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        write_state()
    relay.stop()
    os.close(fd)
    log.info("wan_stopped", delayed=relay.counters.delayed, dropped=relay.counters.dropped,
             write_errors=relay.counters.write_errors)
    return 0


# --------------------------------------------------------------------------- namespace


@dataclass
class Wan:
    """A network namespace in which packets between subnets ``a`` and ``b`` (both
    local on its ``lo``) pass through the relay."""

    namespace: str
    a: str  # e.g. "10.183.0.0/24"
    b: str
    delay_ms: float
    loss_percent: float
    state: Path
    tun: str = "wan0"
    relay: subprocess.Popen[bytes] | None = None
    created: bool = False

    def _run(self, cmd: list[str]) -> None:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:  # no ip / sh here
            raise WanError(f"{cmd[0]}: {exc} (apt-get install iproute2)") from exc
        if done.returncode != 0:
            raise WanError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    def _ip(self, *args: str, inside: bool = True) -> None:
        self._run([*self.exec_prefix(), "ip", *args] if inside else ["ip", *args])

    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it in the namespace."""
        return ["ip", "netns", "exec", self.namespace]

    def create(self, log_path: Path, timeout: float = 10.0) -> None:
        """Set the namespace up and start the relay in it; WanError says what failed
        (everything made so far is removed again)."""
        if not 0 <= self.loss_percent < 100 or self.delay_ms < 0:
            raise WanError("delay must be >= 0 ms and loss within 0-100 %")
        self._ip("netns", "add", self.namespace, inside=False)
        self.created = True
        try:
            self._setup()
            self._start_relay(log_path, timeout)
        except BaseException:
            self.delete()
            raise

    def _setup(self) -> None:
        self._ip("link", "set", "lo", "up")
        for net in (self.a, self.b):
            self._ip("route", "add", "local", net, "dev", "lo", "table", "local")
        self._ip("tuntap", "add", "dev", self.tun, "mode", "tun")
        self._ip("link", "set", self.tun, "mtu", "1500", "up")
        # a packet written back comes in on the TUN device with a source that is
        # local to this namespace: accept it and skip reverse-path filtering
        # route_localnet: the data centres may be loopback /24s (127.0.1.0/24), which
        # the kernel otherwise keeps off every device but lo
        for key, value in (("all/rp_filter", "0"), (f"{self.tun}/rp_filter", "0"),
                           ("all/accept_local", "1"), (f"{self.tun}/accept_local", "1"),
                           ("all/route_localnet", "1"), ("lo/route_localnet", "1"),
                           (f"{self.tun}/route_localnet", "1")):
            self._run([*self.exec_prefix(), "sh", "-c",
                       f"echo {value} > /proc/sys/net/ipv4/conf/{key}"])
        self._ip("route", "add", "default", "dev", self.tun, "table", str(WAN_TABLE))
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            # "iif lo": sent by a process here, not the relay's packet coming back
            self._ip("rule", "add", "pref", "100", "from", src, "to", dst, "iif", "lo",
                     "lookup", str(WAN_TABLE))
        self._ip("rule", "add", "pref", "1000", "lookup", "local")
        self._ip("rule", "del", "pref", "0")

    def _start_relay(self, log_path: Path, timeout: float) -> None:
        self.state.unlink(missing_ok=True)
        root = Path(__file__).resolve().parents[2]
        with open(log_path, "ab") as out:
            self.relay = subprocess.Popen(
                [*self.exec_prefix(), sys.executable, "-m", "daemons.lab.wan", "relay",
                 "--tun", self.tun, "--delay-ms", f"{self.delay_ms:g}", "--loss",
                 f"{self.loss_percent:g}", "--state", str(self.state)],
                cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # a lab started in the background outlives this process, its relay too:
                # not in the terminal's process group (Ctrl-C, hang-up)
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.state.exists():
            if self.relay.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise WanError("the WAN relay exited: " + " | ".join(tail))
            if time.monotonic() > deadline:
                raise WanError(f"the WAN relay did not start within {timeout:g} s")
            time.sleep(0.05)

    def counters(self) -> dict[str, float]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.state.read_text()))
        return {}

    def delete(self) -> None:
        """Stop the relay (its last counters stay in ``state``) and remove the
        namespace with everything in it."""
        if self.relay is not None:
            self.relay.terminate()
            try:
                self.relay.wait(10)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()
            self.relay = None
        if self.created:
            subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
            self.created = False


def wan_unavailable() -> str | None:
    """None when a WAN namespace can be made here; else why not."""
    if shutil.which("ip") is None:
        return "ip is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "needs root (network namespaces, a TUN device)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def namespace_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def relay_pid(state: Path) -> int:
    """The relay's process id from its state file (0 when unknown)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        return int(json.loads(state.read_text()).get("pid") or 0)
    return 0


def stop_detached(namespace: str, pid: int, timeout: float = 10.0) -> None:
    """Stop the relay ``pid`` (started by another process, see :func:`relay_pid`)
    and remove ``namespace``."""
    if pid > 0 and _is_relay(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_relay(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_relay(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if namespace_exists(namespace):
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _is_relay(pid: int) -> bool:
    """``pid`` is still a WAN relay (not a process that reused the number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    return b"daemons.lab.wan" in cmdline and ") Z " not in stat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="run the relay on a TUN device (foreground)")
    relay.add_argument("--tun", default="wan0", help="TUN device name (default: wan0)")
    relay.add_argument("--delay-ms", type=float, default=40.0, help="each way (default: 40)")
    relay.add_argument("--loss", type=float, default=0.0, help="percent of packets dropped")
    relay.add_argument("--state", type=Path, default=None,
                       help="JSON file for the settings and counters (rewritten every second)")
    args = parser.parse_args(argv)
    if not 0 <= args.loss < 100 or args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0 and --loss within 0-100")
    from daemons.runtime.logs import configure_logging
    configure_logging("info")
    return asyncio.run(serve(args.tun, args.delay_ms / 1000, args.loss / 100, args.state))


if __name__ == "__main__":
    sys.exit(main())
