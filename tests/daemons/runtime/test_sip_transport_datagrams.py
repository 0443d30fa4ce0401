"""The UDP transport's per-datagram path (daemons.runtime.datagrams) over loopback:
keep-alives, a failing handler, datagrams sent from the listener and counted, a
send on a closed socket; and which build of it runs (compiled with mypyc, or the
source). Addresses: 127.0.89.0/24."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import daemons.runtime as runtime_pkg
import protocols.sip as sip
from daemons.runtime import COMPILED_MODULES
from daemons.runtime.management import Metrics
from daemons.runtime.sip_transport import Flow, SipTransportManager, TransportError
from protocols.sip import stale_modules
from protocols.sip.message import Request, Response, parse_message

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.89.1"
PEER = "127.0.89.2"


def options(call_id: str) -> bytes:
    return (
        "OPTIONS sip:svc@127.0.89.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PEER};branch=z9hG4bK{call_id}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:a@example.com>;tag=1\r\n"
        "To: <sip:svc@127.0.89.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Sink:
    """Collects what a manager delivers; raises on a Call-ID starting with "boom"."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Request | Response, Flow]] = asyncio.Queue()

    def __call__(self, msg: Request | Response, flow: Flow) -> None:
        if msg.call_id.startswith("boom"):
            raise RuntimeError("handler bug")
        self.queue.put_nowait((msg, flow))

    async def get(self) -> tuple[Request | Response, Flow]:
        return await asyncio.wait_for(self.queue.get(), 10)


@pytest.fixture
async def server() -> AsyncIterator[tuple[SipTransportManager, Sink, Metrics, int]]:
    sink = Sink()
    metrics = Metrics("test")
    mgr = SipTransportManager(sink, metrics=metrics)
    _, port = await mgr.listen_pair(HOST)
    yield mgr, sink, metrics, port
    await mgr.close()


def peer_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((PEER, 0))
    sock.setblocking(False)
    return sock


def count(metrics: Metrics, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with ``labels`` (0 when there is none)."""
    for line in metrics.render().decode().splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.startswith(name + "{") and \
                all(f'{k}="{v}"' in sample for k, v in labels.items()):
            return float(value)
    return 0.0


async def test_udp_keepalive_is_counted_and_the_next_message_delivered(server: tuple) -> None:
    _, sink, metrics, port = server
    with peer_socket() as sock:
        peer = sock.getsockname()[:2]
        sock.sendto(b"\r\n\r\n", (HOST, port))
        sock.sendto(options("after-ping"), (HOST, port))
        msg, flow = await sink.get()
    assert msg.call_id == "after-ping"
    assert flow.transport == "UDP" and flow.remote == peer and flow.local == (HOST, port)
    assert sink.queue.empty()  # the ping was not delivered
    assert count(metrics, "test_sip_keepalives_received_total", transport="UDP") == 1
    assert count(metrics, "test_sip_messages_received_total", transport="UDP",
                 kind="request") == 1


async def test_a_failing_handler_is_counted_and_the_listener_goes_on(server: tuple) -> None:
    _, sink, metrics, port = server
    with peer_socket() as sock:
        sock.sendto(options("boom-1"), (HOST, port))
        sock.sendto(options("fine-2"), (HOST, port))
        msg, first_flow = await sink.get()
        sock.sendto(options("fine-3"), (HOST, port))
        msg3, flow3 = await sink.get()
    assert msg.call_id == "fine-2" and msg3.call_id == "fine-3"
    assert flow3 is first_flow  # one flow per peer, built once
    assert count(metrics, "test_sip_transport_errors_total", transport="UDP",
                 reason="handler_error") == 1
    assert count(metrics, "test_sip_messages_received_total", transport="UDP",
                 kind="request") == 3


async def test_send_datagram_leaves_from_the_listener_and_is_counted(server: tuple) -> None:
    mgr, _, metrics, port = server
    loop = asyncio.get_running_loop()
    with peer_socket() as sock:
        dest = sock.getsockname()[:2]
        assert mgr.send_datagram(options("out-1"), dest) is True
        assert mgr.send_datagram(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", dest) is True
        first, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 10)
        second = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
    assert source == (HOST, port)
    assert parse_message(first).call_id == "out-1"
    assert second.startswith(b"SIP/2.0 200")
    for kind in ("request", "response"):
        assert count(metrics, "test_sip_messages_sent_total", transport="UDP", kind=kind) == 1
    assert mgr.udp_ready(PEER) and not mgr.udp_ready("localhost")
    assert mgr.send_datagram(b"x", ("localhost", 5060)) is False  # a name needs send()


class _FailingSocket:
    """A datagram transport whose sends fail as the kernel may refuse them."""

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    def close(self) -> None:
        pass


async def test_send_datagram_failures(server: tuple) -> None:
    mgr, _, metrics, _ = server
    ep = mgr._udp[0]
    assert mgr.send_datagram(options("warm"), (PEER, 9)) is True
    real = ep.transport
    ep.transport = _FailingSocket()
    try:
        with pytest.raises(TransportError, match="unreachable"):
            mgr.send_datagram(options("refused"), (PEER, 9))
    finally:
        ep.transport = real
    assert count(metrics, "test_sip_transport_errors_total", transport="UDP",
                 reason="send_failed") == 1
    assert count(metrics, "test_sip_messages_sent_total", transport="UDP", kind="request") == 1
    real.close()
    await asyncio.sleep(0)
    # no open socket of the family left: the caller takes send(), which opens one
    assert mgr.send_datagram(options("late"), (PEER, 9)) is False
    assert not mgr.udp_ready(PEER)


PROBE = (
    "import json, sys\n"
    "import protocols.sip as s, daemons.runtime as r\n"
    "import daemons.runtime.datagrams as d\n"
    "print(json.dumps([s.COMPILED, r.COMPILED, d.__file__]))\n"
)


def probe(**env: str) -> tuple[bool, bool, str]:
    environ = {k: v for k, v in os.environ.items() if k != "SIPCLUSTER_PURE_PYTHON"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=environ,
                         capture_output=True, text=True, timeout=60, check=True)
    sip_compiled, compiled, path = json.loads(out.stdout)
    return sip_compiled, compiled, path


def test_pure_python_on_request() -> None:
    sip_compiled, compiled, path = probe(SIPCLUSTER_PURE_PYTHON="1")
    assert not sip_compiled and not compiled and path.endswith("datagrams.py")


def test_build_in_use_matches_what_is_on_disk() -> None:
    sip_compiled, compiled, path = probe()
    here = ROOT / "daemons" / "runtime"
    assert compiled == (sip_compiled and stale_modules(here, COMPILED_MODULES) == [])
    assert path.endswith(".so" if compiled else "datagrams.py")


def test_this_run_uses_the_build_it_asked_for() -> None:
    """make test compiles first: a CI run that silently fell back is a failure."""
    here = ROOT / "daemons" / "runtime"
    if os.environ.get("SIPCLUSTER_PURE_PYTHON", "") not in ("", "0"):
        assert not runtime_pkg.COMPILED
    elif os.environ.get("CI") == "true":
        assert sip.COMPILED and runtime_pkg.COMPILED
    else:
        assert runtime_pkg.COMPILED == (sip.COMPILED and
                                        stale_modules(here, COMPILED_MODULES) == [])
