"""SipEndpoint over loopback: two endpoints talk through real sockets (UDP and TCP)."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator

import pytest

from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from protocols.sip.dialog import Dialog
from protocols.sip.headers import Headers
from protocols.sip.message import Request, Response
from protocols.sip.timers import TimerSettings

FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.25, trying_delay=None)


class Uas:
    """A TU that records requests; INVITEs ring and are answered on ``answer``."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.answer = asyncio.Event()
        self.cancelled: list[IncomingRequest] = []

    async def __call__(self, incoming: IncomingRequest) -> Response | list[Response] | None:
        self.seen.append(incoming.method)
        if incoming.method == "INVITE":
            incoming.respond(180)
            try:
                await self.answer.wait()
            except asyncio.CancelledError:
                self.cancelled.append(incoming)
                raise
            return incoming.response(200, headers=[("Contact", f"<{contact(incoming)}>")],
                                     body=b"v=0\r\n")
        if incoming.method == "ACK":
            return None
        return incoming.response(200)


def contact(incoming: IncomingRequest) -> str:
    return incoming.endpoint.contact_uri(incoming.flow.transport)


def build(method: str, uri: str, uac: SipEndpoint, transport: str, cseq: int = 1) -> Request:
    headers = Headers([
        ("From", "<sip:alice@127.0.0.1>;tag=abc"),
        ("To", f"<{uri}>"),
        ("Call-ID", f"call-{method}-{transport}@test"),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", f"<{uac.contact_uri(transport)}>"),
    ])
    return Request(method, uri, headers=headers)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SipEndpoint, SipEndpoint, Uas, int]]:
    tu = Uas()
    uas = SipEndpoint(tu, timers=FAST)
    port = (await uas.listen_pair("127.0.0.1"))[1]
    uac = SipEndpoint(None, timers=FAST)
    await uac.listen_pair("127.0.0.1")
    yield uac, uas, tu, port
    await uac.close()
    await uas.close()


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_options_round_trip(pair: tuple, transport: str) -> None:
    uac, _, tu, port = pair
    uri = f"sip:svc@127.0.0.1:{port}"
    response = await uac.request(build("OPTIONS", uri, uac, transport),
                                 Destination(transport, "127.0.0.1", port))
    assert response.status == 200 and tu.seen == ["OPTIONS"]
    assert response.top_via.transport == transport
    # RFC 3581 §4: the UAS filled our empty rport, so it added received too
    assert response.top_via.received == "127.0.0.1"
    assert response.top_via.rport is not None


async def test_uri_destination_is_located(pair: tuple) -> None:
    uac, _, _, port = pair
    uri = f"sip:svc@127.0.0.1:{port};transport=tcp"
    response = await uac.request(build("OPTIONS", uri, uac, "TCP"))
    assert response.status == 200 and response.top_via.transport == "TCP"


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_invite_ack_bye(pair: tuple, transport: str) -> None:
    uac, _, tu, port = pair
    uri = f"sip:svc@127.0.0.1:{port}"
    dest = Destination(transport, "127.0.0.1", port)
    invite = build("INVITE", uri, uac, transport)
    provisional: list[int] = []

    def ringing(resp: Response) -> None:
        provisional.append(resp.status)
        tu.answer.set()

    response = await uac.request(invite, dest, on_provisional=ringing)
    assert provisional == [180] and response.status == 200 and response.to.tag
    await uac.send_ack(invite, response)
    dialog = Dialog.create_uac(invite, response)
    bye = await uac.request(dialog.create_request("BYE"), dest)
    assert bye.status == 200
    assert tu.seen == ["INVITE", "ACK", "BYE"]


async def test_cancel_gets_487(pair: tuple) -> None:
    uac, _, tu, port = pair
    uri = f"sip:svc@127.0.0.1:{port}"
    invite = build("INVITE", uri, uac, "UDP")
    rang = asyncio.Event()
    task = asyncio.create_task(uac.request(invite, Destination("UDP", "127.0.0.1", port),
                                           on_provisional=lambda r: rang.set()))
    await asyncio.wait_for(rang.wait(), 5)
    assert uac.cancel(invite)
    response = await asyncio.wait_for(task, 5)
    assert response.status == 487
    assert len(tu.cancelled) == 1 and tu.cancelled[0].cancelled.is_set()


async def test_timeout_is_408() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # receives and never answers
    uac = SipEndpoint(None, timers=TimerSettings(t1=0.01, t2=0.04, trying_delay=None))
    await uac.listen("UDP", "127.0.0.1", 0)
    port = silent.getsockname()[1]
    uri = f"sip:svc@127.0.0.1:{port}"
    response = await uac.request(build("OPTIONS", uri, uac, "UDP"),
                                 Destination("UDP", "127.0.0.1", port))
    assert response.status == 408
    silent.close()
    await uac.close()


async def test_refused_tcp_is_503() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    uac = SipEndpoint(None, timers=FAST)
    await uac.listen("UDP", "127.0.0.1", 0)
    uri = f"sip:svc@127.0.0.1:{port}"
    response = await uac.request(build("OPTIONS", uri, uac, "TCP"),
                                 Destination("TCP", "127.0.0.1", port))
    assert response.status == 503
    await uac.close()


async def test_failover_to_next_target(pair: tuple) -> None:
    uac, _, tu, port = pair
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()
    uri = f"sip:svc@127.0.0.1:{port}"
    client_request = build("OPTIONS", uri, uac, "TCP")
    # two targets: the first refuses the connection (RFC 3263 §4.3)
    original = uac.resolve

    async def two_targets(target: object, default_transport: str | None = None) -> list:
        return [Destination("TCP", "127.0.0.1", dead), Destination("TCP", "127.0.0.1", port)]

    uac.resolve = two_targets  # type: ignore[method-assign]
    try:
        response = await uac.request(client_request, uri)
    finally:
        uac.resolve = original  # type: ignore[method-assign]
    assert response.status == 200 and tu.seen == ["OPTIONS"]
    assert client_request.headers.count("Via") == 1


async def test_2xx_is_retransmitted_until_ack() -> None:
    """§13.3.1.4: without an ACK, the UAS resends its 2xx over UDP."""
    tu = Uas()
    tu.answer.set()
    uas = SipEndpoint(tu, timers=FAST)
    port = (await uas.listen("UDP", "127.0.0.1", 0))[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    lport = sock.getsockname()[1]
    invite = (
        f"INVITE sip:svc@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKretx;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=f1\r\nTo: <sip:svc@x>\r\n"
        "Call-ID: retx@test\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:a@127.0.0.1:{lport}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    sock.sendto(invite, ("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    statuses = []
    while statuses.count(200) < 3:
        data = await loop.run_in_executor(None, sock.recv, 65536)
        statuses.append(int(data.split(b" ", 2)[1]))
    assert statuses[:2] == [180, 200]
    sock.close()
    await uas.close()


class _Ringing:
    """A provisional-response callback whose lifetime the test can watch."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def __call__(self, resp: Response) -> None:
        self.statuses.append(resp.status)


async def test_2xx_retransmission_after_answer_gets_the_same_ack() -> None:
    """§13.2.2.4 / RFC 6026 §8.4: once the final response is handed to the TU the
    endpoint lets go of the request and its callback, and a retransmitted 2xx
    (passed up by the Accepted client transaction) is still answered with the
    same ACK."""
    uac = SipEndpoint(None, timers=FAST)
    await uac.listen("UDP", "127.0.0.1", 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()
    invite = build("INVITE", f"sip:svc@127.0.0.1:{port}", uac, "UDP")
    ringing = _Ringing()
    watch = weakref.ref(ringing)
    task = asyncio.create_task(
        uac.request(invite, Destination("UDP", "127.0.0.1", port), on_provisional=ringing))
    del ringing
    data, peer = await loop.run_in_executor(None, sock.recvfrom, 65536)
    head = data.decode().split("\r\n\r\n")[0].split("\r\n")
    copied = [line for line in head[1:] if line.split(":")[0] in ("Via", "From", "Call-ID",
                                                                  "CSeq")]
    to = next(line for line in head if line.startswith("To:"))

    def response(status: int, reason: str) -> bytes:
        return (f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(copied) + "\r\n"
                f"{to};tag=uas1\r\nContact: <sip:svc@127.0.0.1:{port}>\r\n"
                "Content-Length: 0\r\n\r\n").encode()

    sock.sendto(response(180, "Ringing"), peer)
    sock.sendto(response(200, "OK"), peer)
    final = await asyncio.wait_for(task, 5)
    assert final.status == 200
    ack = await uac.send_ack(invite, final)
    first = await loop.run_in_executor(None, sock.recv, 65536)
    assert first.startswith(b"ACK ")
    gc.collect()
    assert watch() is None, "the provisional callback outlives the final response"
    for _ in range(2):
        sock.sendto(response(200, "OK"), peer)
        again = await loop.run_in_executor(None, sock.recv, 65536)
        assert again == first
    assert ack.cseq.number == invite.cseq.number
    sock.close()
    await uac.close()
