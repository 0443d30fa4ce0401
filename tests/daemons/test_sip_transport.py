"""SipTransportManager over loopback: UDP/TCP delivery, Via received/rport,
flow reuse, CRLF keep-alive, malformed input, UDP->TCP switch, limits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from daemons.runtime.management import Metrics
from daemons.runtime.sip_transport import Flow, SipTransportManager
from protocols.sip.message import Request, Response, make_response, parse_message
from protocols.sip.rules import build_error_response


def options(via: str, extra: str = "", body: bytes = b"") -> bytes:
    head = (
        "OPTIONS sip:svc@127.0.0.1 SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:a@example.com>;tag=1\r\n"
        "To: <sip:svc@127.0.0.1>\r\n"
        "Call-ID: c1@example.com\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Sink:
    """Collects what a manager delivers."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Request | Response, Flow]] = asyncio.Queue()

    def __call__(self, msg: Request | Response, flow: Flow) -> None:
        self.queue.put_nowait((msg, flow))

    async def get(self) -> tuple[Request | Response, Flow]:
        return await asyncio.wait_for(self.queue.get(), 5)


@pytest.fixture
async def server() -> AsyncIterator[tuple[SipTransportManager, Sink, Metrics, int]]:
    sink = Sink()
    metrics = Metrics("test")
    mgr = SipTransportManager(sink, metrics=metrics, max_message_size=4000)
    _, port = await mgr.listen_pair("127.0.0.1")
    yield mgr, sink, metrics, port
    await mgr.close()


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def recv_datagram(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)


async def test_udp_delivery_fills_rport_and_received(server: tuple) -> None:
    _, sink, _, port = server
    sock = udp_client()
    sock.sendto(options("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKa;rport"), ("127.0.0.1", port))
    msg, flow = await sink.get()
    assert isinstance(msg, Request) and msg.method == "OPTIONS"
    assert flow.transport == "UDP" and flow.connection_id is None
    assert flow.remote == sock.getsockname() and flow.local == ("127.0.0.1", port)
    via = msg.top_via
    assert via.received == "127.0.0.1" and via.rport == sock.getsockname()[1]
    assert via.branch == "z9hG4bKa"
    sock.close()


async def test_received_only_when_host_differs(server: tuple) -> None:
    _, sink, _, port = server
    sock = udp_client()
    sock.sendto(options("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKb"), ("127.0.0.1", port))
    msg, _ = await sink.get()
    assert "received" not in msg.top_via.params and "rport" not in msg.top_via.params
    sock.sendto(options("SIP/2.0/UDP client.example.com;branch=z9hG4bKc"), ("127.0.0.1", port))
    msg, _ = await sink.get()
    assert msg.top_via.received == "127.0.0.1"
    sock.close()


async def test_tcp_response_reuses_the_request_connection(server: tuple) -> None:
    mgr, sink, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(options("SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKd"))
    msg, flow = await sink.get()
    assert flow.transport == "TCP" and flow.connection_id is not None
    assert isinstance(msg, Request)
    # sent-by port 5999 is not listening: only the open connection can carry the answer
    used = await mgr.send(make_response(msg, 200), "TCP", flow.remote,
                          connection_id=flow.connection_id)
    assert used.connection_id == flow.connection_id
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    answer = parse_message(data)
    assert isinstance(answer, Response) and answer.status == 200
    assert mgr.connection_count == 1
    writer.close()


async def test_crlf_keepalive_is_answered(server: tuple) -> None:
    _, sink, metrics, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    # the connection still carries messages afterwards
    writer.write(options("SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKe"))
    msg, _ = await sink.get()
    assert isinstance(msg, Request)
    assert b'test_sip_keepalives_received_total{transport="TCP"} 1.0' in metrics.render()
    writer.close()


async def test_malformed_udp_request_gets_400_and_listener_keeps_serving(server: tuple) -> None:
    _, sink, metrics, port = server
    sock = udp_client()
    bad = options("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKf").replace(
        b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
    sock.sendto(bad, ("127.0.0.1", port))
    answer = parse_message(await recv_datagram(sock))
    assert isinstance(answer, Response) and answer.status == 400
    assert "CSeq" in answer.reason
    assert answer.call_id == "c1@example.com" and answer.to.tag
    # garbage is dropped without an answer, but counted
    sock.sendto(b"\x00\xffnot sip at all", ("127.0.0.1", port))
    sock.sendto(options("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKg"), ("127.0.0.1", port))
    msg, _ = await sink.get()
    assert isinstance(msg, Request) and msg.top_via.branch == "z9hG4bKg"
    assert b'reason="malformed",transport="UDP"} 2.0' in metrics.render()
    sock.close()


async def test_version_505_and_no_answer_without_headers() -> None:
    data = options("SIP/2.0/UDP h;branch=z9hG4bKh").replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1)
    answer = build_error_response(data, 505, "SIP version SIP/3.0 not supported")
    assert answer is not None and answer.startswith(b"SIP/2.0 505 SIP version")
    assert build_error_response(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n", 400, "x") is None
    assert build_error_response(b"SIP/2.0 200 OK\r\n\r\n", 400, "x") is None


@pytest.mark.parametrize("line", [b"INVITE sip:user@example.com; lr SIP/2.0",
                                  b"INVITE  sip:user@example.com  SIP/2.0",
                                  b"INVITE\tsip:user@example.com; lr \tSIP/2.0"])
def test_whitespace_in_request_uri_is_answered_400(line: bytes) -> None:
    """RFC 4475 §3.1.2.10/11: whitespace inside or around the Request-URI."""
    data = options("SIP/2.0/UDP h;branch=z9hG4bKw").split(b"\r\n", 1)[1]
    answer = build_error_response(line + b"\r\n" + data, 400, "malformed Request-Line")
    assert answer is not None and answer.startswith(b"SIP/2.0 400 malformed Request-Line\r\n")
    parsed = parse_message(answer)
    assert isinstance(parsed, Response) and parsed.top_via.branch == "z9hG4bKw"


async def test_large_udp_request_switches_to_tcp(server: tuple) -> None:
    _, sink, _, port = server
    client = SipTransportManager(lambda m, f: None)
    cport = (await client.listen_pair("127.0.0.1"))[1]
    request = parse_message(options(f"SIP/2.0/UDP 127.0.0.1:{cport};branch=z9hG4bKi",
                                    extra="Content-Type: text/plain\r\n", body=b"x" * 1500))
    assert isinstance(request, Request)
    flow = await client.send(request, "UDP", ("127.0.0.1", port))
    assert flow.transport == "TCP"
    msg, in_flow = await sink.get()
    assert in_flow.transport == "TCP" and msg.top_via.transport == "TCP"
    assert msg.top_via.port == cport and len(msg.body) == 1500
    await client.close()


async def test_oversized_stream_closes_connection(server: tuple) -> None:
    _, _, metrics, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"OPTIONS sip:x SIP/2.0\r\nX-Filler: " + b"a" * 5000)
    data = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed
    assert b"SIP/2.0 200" not in data
    assert b'reason="oversized",transport="TCP"} 1.0' in metrics.render()
    writer.close()


async def test_idle_connection_is_closed() -> None:
    mgr = SipTransportManager(lambda m, f: None, idle_timeout=0.2)
    port = (await mgr.listen("TCP", "127.0.0.1", 0))[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await asyncio.sleep(0)
    assert mgr.connection_count == 0
    writer.close()
    await mgr.close()


async def test_udp_send_uses_listening_socket(server: tuple) -> None:
    mgr, _, _, port = server
    sock = udp_client()
    flow = await mgr.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "UDP",
                          sock.getsockname())
    assert flow.local == ("127.0.0.1", port)
    data = await recv_datagram(sock)
    assert data.startswith(b"SIP/2.0 200 OK")
    sock.close()


@pytest.mark.parametrize("listen_on", ["127.0.0.7", "0.0.0.0"])
async def test_outgoing_tcp_leaves_from_the_listening_host(server: tuple, listen_on: str) -> None:
    """A peer that knows us by address (a proxy and its nodes) sees our listening
    host as the source of our TCP connections, as for our UDP datagrams; with a
    wildcard listener the kernel picks the source."""
    _, sink, _, peer_port = server
    mgr = SipTransportManager(Sink(), metrics=Metrics("test-client"))
    await mgr.listen_pair(listen_on)
    try:
        flow = await mgr.send(options(f"SIP/2.0/TCP {listen_on}:5060;branch=z9hG4bKsrc"), "TCP",
                              ("127.0.0.1", peer_port))
        _, seen = await sink.get()
        expected = "127.0.0.1" if listen_on == "0.0.0.0" else listen_on
        assert seen.transport == "TCP" and seen.remote[0] == expected
        assert flow.local[0] == expected
    finally:
        await mgr.close()
