"""The proxy core over UDP, driven with datagrams in-process: non-INVITE server
and client transactions of the transaction layer (RFC 3261 §17.2.2, §17.1.2)
carrying the request spliced from the received bytes, the top Via popped on
the response bytes (§16.7 step 3) and ACK for 2xx forwarded statelessly
(§16.11). The UDP listener's socket is replaced by a recorder, so every test
sees exactly what the proxy sent and where; timers are driven by passing
``now`` to the core (no sleeping)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from daemons.runtime.management import Metrics
from daemons.sip_proxy.proxy import ProxyCore, ProxySettings
from daemons.sip_proxy.registrar import BindingStore
from daemons.sip_proxy.routing import NodeTarget, Router
from protocols.sip.message import Request, Response, parse_message
from protocols.sip.timers import TimerSettings

PROXY = ("127.0.150.1", 5060)
NODE = ("127.0.150.2", 5070)
PHONE = ("127.0.150.3", 5080)
UAC = ("127.0.150.4", 5090)


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class _Socket:
    """Stands in for the listener's datagram transport: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


class Clock:
    """The core's clock (loop time), moved by the test only."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    core: ProxyCore
    sock: _Socket
    metrics: Metrics
    clock: Clock

    @property
    def now(self) -> float:
        return self.clock.now

    @now.setter
    def now(self, value: float) -> None:
        self.clock.now = value

    def deliver(self, data: bytes, source: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
        """Hand one datagram to the listener; what the proxy sent because of it."""
        assert self.core.transport is not None
        self.sock.sent.clear()
        self.core.transport._udp[0].datagram_received(data, source)
        return list(self.sock.sent)

    def drain(self) -> list[tuple[bytes, tuple[str, int]]]:
        out = list(self.sock.sent)
        self.sock.sent.clear()
        return out

    def run_timers(self, until: float) -> list[tuple[float, bytes, tuple[str, int]]]:
        """Fire the core's timers in order up to ``until`` (loop time), as the
        loop would; what was sent, and at which ``now``."""
        sent: list[tuple[float, bytes, tuple[str, int]]] = []
        self.drain()
        layer = self.core.layer
        while (deadline := layer.next_timer()) is not None and deadline <= until:
            self.now = deadline
            self.core._on_timer(deadline)
            sent.extend((deadline, data, addr) for data, addr in self.drain())
        return sent


async def _rig() -> Rig:
    router = Router([NodeTarget("SIPS_1", "dc1", NODE[0], NODE[1])], "dc1", lambda name: True)
    metrics = Metrics("sipcluster")
    clock = Clock(1000.0)
    core = ProxyCore(ProxySettings("SPX_1", PROXY[0], PROXY[1], "dc1", "cluster.lab"),
                     router=router, store=BindingStore(), metrics=metrics, log=_Log(),
                     timers=TimerSettings(), clock=clock)
    await core.start()
    assert core.transport is not None
    ep = core.transport._udp[0]
    assert ep.transport is not None
    ep.transport.close()
    sock = _Socket()
    ep.transport = sock  # type: ignore[assignment]
    ep.local = PROXY
    core._own = {PROXY}
    return Rig(core, sock, metrics, clock)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await _rig()
    yield r
    await r.core.close()


def register(user: str, src: tuple[str, int], branch: str = "z9hG4bK-r1") -> bytes:
    return (f"REGISTER sip:cluster.lab SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch={branch}\r\n"
            f"From: <sip:{user}@cluster.lab>;tag=f1\r\nTo: <sip:{user}@cluster.lab>\r\n"
            f"Call-ID: reg-{user}@{src[0]}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:{user}@{src[0]}:{src[1]}>\r\nExpires: 600\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def answer(request: bytes, status: str, *, tag: str = "n1", extra: str = "") -> bytes:
    """A response the way a UAS builds it (§8.2.6): Vias, From, To (+tag), Call-ID, CSeq,
    and the Contact, Path and Record-Route of the request."""
    req = parse_message(request)
    assert isinstance(req, Request)
    h = req.headers
    to = h.get("To") or ""
    lines = [f"SIP/2.0 {status}", *(f"Via: {v}" for v in h.get_lines("Via")),
             f"From: {h.get('From')}", f"To: {to}" + ("" if ";tag=" in to else f";tag={tag}"),
             f"Call-ID: {h.get('Call-ID')}", f"CSeq: {h.get('CSeq')}"]
    for name in ("Contact", "Path", "Record-Route"):
        lines += [f"{name}: {v}" for v in h.get_lines(name)]
    if extra:
        lines.append(extra)
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


def parsed(data: bytes) -> Request | Response:
    return parse_message(data)


async def test_register_retransmissions_are_absorbed_and_answered_again(rig: Rig) -> None:
    out = rig.deliver(register("1001", UAC), UAC)
    assert [addr for _, addr in out] == [NODE]
    forwarded = parsed(out[0][0])
    assert isinstance(forwarded, Request)
    assert forwarded.top_via.host == PROXY[0] and forwarded.max_forwards == 69
    assert forwarded.headers.get("Path") == f"<sip:{PROXY[0]}:{PROXY[1]};lr>"
    assert forwarded.headers.get("X-SC-Node") == "SIPS_1"
    # the phone's retransmission before the node answered: absorbed, nothing sent
    assert rig.deliver(register("1001", UAC), UAC) == []
    back = rig.deliver(answer(out[0][0], "200 OK"), NODE)
    assert [addr for _, addr in back] == [UAC]
    ok = parsed(back[0][0])
    assert isinstance(ok, Response) and ok.status == 200
    assert [v.host for v in ok.vias] == [UAC[0]]  # our Via popped
    assert "Path" not in ok.headers and "X-SC-Node" not in ok.headers
    assert rig.core.store.lookup("1001@cluster.lab", 0.0)
    # a retransmission after the final answer gets the same answer again (§17.2.2)
    again = rig.deliver(register("1001", UAC), UAC)
    assert again == back
    # the node's retransmitted 200 is absorbed by the client transaction (timer K)
    assert rig.deliver(answer(out[0][0], "200 OK"), NODE) == []
    text = rig.metrics.render().decode()
    assert 'sipcluster_proxy_requests_total{action="register",method="REGISTER"} 1.0' in text
    assert 'sipcluster_sip_messages_sent_total{kind="response",transport="UDP"} 2.0' in text


async def test_response_with_several_vias_in_one_line_keeps_the_others(rig: Rig) -> None:
    out = rig.deliver(register("1002", UAC, "z9hG4bK-r2"), UAC)
    req = parsed(out[0][0])
    assert isinstance(req, Request)
    vias = ", ".join(req.headers.get_lines("Via"))
    resp = (f"SIP/2.0 200 OK\r\nv: {vias}\r\nFrom: {req.headers.get('From')}\r\n"
            f"To: {req.headers.get('To')};tag=n2\r\nCall-ID: {req.call_id}\r\n"
            "CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n").encode()
    back = rig.deliver(resp, NODE)
    ok = parsed(back[0][0])
    assert isinstance(ok, Response)
    assert [(v.host, v.branch) for v in ok.vias] == [(UAC[0], "z9hG4bK-r2")]


async def test_unanswered_request_is_retransmitted_then_times_out_with_408(rig: Rig) -> None:
    start = rig.now
    out = rig.deliver(register("1003", UAC, "z9hG4bK-r3"), UAC)
    assert [addr for _, addr in out] == [NODE]
    sent = rig.run_timers(start + 40.0)
    to_node = [(round(t - start, 1), data) for t, data, addr in sent if addr == NODE]
    to_phone = [(round(t - start, 1), data) for t, data, addr in sent if addr == UAC]
    # timer E: the same bytes at T1, doubling up to T2 (§17.1.2.2)
    assert [t for t, _ in to_node] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(data == out[0][0] for _, data in to_node)
    # timer F (64*T1): the 408 goes to the phone, our Via popped
    assert len(to_phone) == 1 and to_phone[0][0] == 32.0
    timeout = parsed(to_phone[0][1])
    assert isinstance(timeout, Response) and timeout.status == 408
    assert [v.host for v in timeout.vias] == [UAC[0]]
    # the phone's retransmission now gets the 408 again; timer J ends that too
    assert [d for d, _ in rig.deliver(register("1003", UAC, "z9hG4bK-r3"), UAC)] == \
        [to_phone[0][1]]
    rig.run_timers(start + 32.0 + 32.0 + 0.5)
    assert len(rig.core.layer) == 0
    assert rig.core._by_server == {} and rig.core._by_client == {}


async def test_retransmitted_register_before_the_final_is_absorbed_then_answered(
        rig: Rig) -> None:
    """§17.2.2: retransmissions in Trying are absorbed; once the node's final is
    forwarded, each one gets the same bytes again until timer J."""
    start = rig.now
    out = rig.deliver(register("1004", UAC, "z9hG4bK-r4"), UAC)
    assert rig.deliver(register("1004", UAC, "z9hG4bK-r4"), UAC) == []
    back = rig.deliver(answer(out[0][0], "200 OK"), NODE)
    assert [a for _, a in back] == [UAC]
    # the node's client transaction: the node's retransmitted 200 absorbed until K (T4)
    assert rig.deliver(answer(out[0][0], "200 OK"), NODE) == []
    rig.run_timers(start + 6.0)
    assert len(rig.core.layer) == 1  # the server transaction waits out timer J
    assert rig.deliver(register("1004", UAC, "z9hG4bK-r4"), UAC) == back
    rig.run_timers(start + 33.0)
    assert len(rig.core.layer) == 0
    # after J the same branch is a new request again: forwarded anew
    assert [a for _, a in rig.deliver(register("1004", UAC, "z9hG4bK-r4"), UAC)] == [NODE]


async def test_dialog_ack_and_bye_follow_the_record_route(rig: Rig) -> None:
    reg_fwd = rig.deliver(register("1001", PHONE, "z9hG4bK-p"), PHONE)
    assert [a for _, a in rig.deliver(answer(reg_fwd[0][0], "200 OK"), NODE)] == [PHONE]
    invite = (f"INVITE sip:1001@cluster.lab SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP {NODE[0]}:{NODE[1]};branch=z9hG4bK-i1\r\n"
              f"From: <sip:node@{NODE[0]}:{NODE[1]}>;tag=c1\r\nTo: <sip:1001@cluster.lab>\r\n"
              "Call-ID: call-1@x\r\nCSeq: 1 INVITE\r\n"
              f"Contact: <sip:node@{NODE[0]}:{NODE[1]}>\r\nMax-Forwards: 70\r\n"
              "Content-Length: 0\r\n\r\n").encode()
    out = rig.deliver(invite, NODE)
    fwd = [d for d, a in out if a == PHONE]
    assert len(fwd) == 1
    ok_bytes = answer(fwd[0], "200 OK", tag="p1",
                      extra=f"Contact: <sip:1001@{PHONE[0]}:{PHONE[1]}>")
    back = rig.deliver(ok_bytes, PHONE)
    assert [a for _, a in back] == [NODE]
    ok = parsed(back[0][0])
    assert isinstance(ok, Response)
    routes = "".join(f"Route: {v}\r\n" for v in ok.headers.get_lines("Record-Route"))
    assert routes
    for method, cseq, branch in (("ACK", "1 ACK", "z9hG4bK-a1"), ("BYE", "2 BYE", "z9hG4bK-b1")):
        msg = (f"{method} sip:1001@{PHONE[0]}:{PHONE[1]} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {NODE[0]}:{NODE[1]};branch={branch}\r\n"
               f"From: <sip:node@{NODE[0]}:{NODE[1]}>;tag=c1\r\nTo: {ok.headers.get('To')}\r\n"
               f"Call-ID: call-1@x\r\nCSeq: {cseq}\r\n{routes}Max-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        sent = rig.deliver(msg, NODE)
        assert [a for _, a in sent] == [PHONE], method
        req = parsed(sent[0][0])
        assert isinstance(req, Request) and req.method == method
        assert "Route" not in req.headers  # our own Route popped (§16.4)
        assert [v.host for v in req.vias] == [PROXY[0], NODE[0]]
        assert req.max_forwards == 69
        if method == "ACK":
            # stateless: a retransmitted ACK leaves with the same branch (§16.11)
            assert rig.deliver(msg, NODE)[0][0] == sent[0][0]
        else:
            bye_ok = rig.deliver(answer(sent[0][0], "200 OK"), PHONE)
            assert [a for _, a in bye_ok] == [NODE]
            final = parsed(bye_ok[0][0])
            assert isinstance(final, Response) and final.status == 200
            assert [v.host for v in final.vias] == [NODE[0]]
