"""SipResolver against a small authoritative DNS server on loopback (dnspython zone).

The server runs in the test's event loop on an ephemeral UDP port, answers
NAPTR/SRV/A/AAAA from a zone text, NXDOMAIN for names it does not hold, and
counts the queries it receives so cache behaviour is observable.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from daemons.runtime.dns import AllTargetsFailed, SipResolver, parse_nameserver, try_targets
from protocols.sip.location import (
    DnsCache,
    DnsFailure,
    Query,
    RdType,
    StaticRecords,
    Target,
    Transport,
)

ORIGIN = "lab.test."


class ZoneServer(asyncio.DatagramProtocol):
    """Authoritative answers from one zone; silent when ``mute`` is set."""

    def __init__(self, zone: dns.zone.Zone) -> None:
        self.zone = zone
        self.queries: Counter[tuple[str, str]] = Counter()
        self.mute = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = dns.message.from_wire(data)
        question = request.question[0]
        qname = question.name.to_text(omit_final_dot=True).lower()
        self.queries[(qname, dns.rdatatype.to_text(question.rdtype))] += 1
        if self.mute:
            return
        response = dns.message.make_response(request)
        response.flags |= dns.flags.AA
        node = None
        if question.name.is_subdomain(self.zone.origin):
            node = self.zone.get_node(question.name)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            rdataset = node.get_rdataset(dns.rdataclass.IN, question.rdtype)
            if rdataset is not None:
                rrset = response.find_rrset(
                    response.answer,
                    question.name,
                    dns.rdataclass.IN,
                    question.rdtype,
                    create=True,
                )
                rrset.update(rdataset)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    def count(self, name: str, rdtype: str) -> int:
        return self.queries[(name, rdtype)]


def free_tcp_port() -> int:
    """A port nobody listens on (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def sip_listener() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP server standing in for a SIP proxy; records what it was sent."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(100))
        writer.write(b"SIP/2.0 200 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, received
    server.close()
    await server.wait_closed()


async def start_dns(zone_text: str) -> tuple[ZoneServer, asyncio.DatagramTransport, int]:
    zone = dns.zone.from_text(zone_text, origin=ORIGIN, relativize=False, check_origin=False)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: ZoneServer(zone), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    return protocol, transport, port


def zone_text(dead_port: int, live_port: int) -> str:
    return f"""
$TTL 300
@           IN SOA ns1 hostmaster 1 3600 600 86400 60
@           IN NS  ns1
ns1         IN A   127.0.0.1
@           IN NAPTR 10 50 "s" "SIP+D2T" "" _sip._tcp
@           IN NAPTR 20 50 "s" "SIP+D2U" "" _sip._udp
_sip._tcp   60 IN SRV 10 100 {dead_port} dead
_sip._tcp   60 IN SRV 20 100 {live_port} live
_sip._udp   IN SRV 10 0 5060 live
dead        30 IN A 127.0.0.1
live        30 IN A 127.0.0.1
v6only      IN AAAA ::1
plain       IN A 127.0.1.1
plain       IN A 127.0.1.2
"""


@pytest.fixture
async def lab_dns(
    sip_listener: tuple[int, list[bytes]],
) -> AsyncIterator[tuple[ZoneServer, int, int, int]]:
    live_port, _ = sip_listener
    dead_port = free_tcp_port()
    server, transport, port = await start_dns(zone_text(dead_port, live_port))
    yield server, port, dead_port, live_port
    transport.close()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_resolver(dns_port: int, clock: Callable[[], float], **kwargs: object) -> SipResolver:
    return SipResolver(
        [f"127.0.0.1:{dns_port}"],
        timeout=1.0,
        clock=clock,
        rng=random.Random(5),
        **kwargs,  # type: ignore[arg-type]
    )


def test_parse_nameserver() -> None:
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5300") == ("::1", 5300)
    assert parse_nameserver("::1", 5301) == ("::1", 5301)
    assert parse_nameserver(("127.0.0.2", 54)) == ("127.0.0.2", 54)


async def test_naptr_srv_a_chain_over_real_dns(lab_dns: tuple[ZoneServer, int, int, int]) -> None:
    server, dns_port, dead_port, live_port = lab_dns
    resolver = make_resolver(dns_port, FakeClock())
    targets = await resolver.resolve("lab.test")
    assert targets == [
        Target(Transport.TCP, "127.0.0.1", dead_port, "lab.test"),
        Target(Transport.TCP, "127.0.0.1", live_port, "lab.test"),
        Target(Transport.UDP, "127.0.0.1", 5060, "lab.test"),
    ]
    assert server.count("lab.test", "NAPTR") == 1
    assert server.count("_sip._tcp.lab.test", "SRV") == 1
    # A and AAAA of "live" asked once although two SRV records point at it.
    assert server.count("live.lab.test", "A") == 1
    assert server.count("live.lab.test", "AAAA") == 1


async def test_nxdomain_and_address_fallback(lab_dns: tuple[ZoneServer, int, int, int]) -> None:
    server, dns_port, _, _ = lab_dns
    resolver = make_resolver(dns_port, FakeClock())
    assert await resolver.query(Query("nothing.lab.test", RdType.A)) is DnsFailure.NXDOMAIN
    assert await resolver.query(Query("plain.lab.test", RdType.AAAA)) == []
    targets = await resolver.resolve("plain.lab.test")
    # the addresses of one A RRset come in no defined order (RFC 2181 §5)
    assert sorted((t.transport, t.host_ip, t.port) for t in targets) == [
        (Transport.UDP, "127.0.1.1", 5060),
        (Transport.UDP, "127.0.1.2", 5060),
    ]
    assert server.count("_sip._udp.plain.lab.test", "SRV") == 1
    v6 = await resolver.resolve("v6only.lab.test", port=5070, transport="tcp")
    assert v6 == [Target(Transport.TCP, "::1", 5070, "v6only.lab.test")]


async def test_ttl_caching_counts_server_queries(
    lab_dns: tuple[ZoneServer, int, int, int],
) -> None:
    server, dns_port, _, _ = lab_dns
    clock = FakeClock(1000.0)
    resolver = make_resolver(dns_port, clock, cache=DnsCache(negative_ttl=10.0))
    first = await resolver.resolve("lab.test")
    total = sum(server.queries.values())
    assert total > 0

    clock.now = 1009.0  # all fresh: A 30 s, NODATA for AAAA held negative_ttl=10 s
    assert await resolver.resolve("lab.test") == first
    assert sum(server.queries.values()) == total

    clock.now = 1015.0  # the NODATA answers expired, nothing else
    assert await resolver.resolve("lab.test") == first
    assert server.count("live.lab.test", "AAAA") == 2
    assert sum(server.queries.values()) == total + 2

    clock.now = 1031.0  # A (30 s) expired; SRV (60 s) and NAPTR (300 s) not
    assert await resolver.resolve("lab.test") == first
    assert server.count("live.lab.test", "A") == 2
    assert server.count("_sip._tcp.lab.test", "SRV") == 1
    assert server.count("lab.test", "NAPTR") == 1

    clock.now = 1061.0  # SRV expired too
    await resolver.resolve("lab.test")
    assert server.count("_sip._tcp.lab.test", "SRV") == 2
    assert server.count("lab.test", "NAPTR") == 1

    # Negative caching: NXDOMAIN held for negative_ttl.
    await resolver.resolve("ghost.lab.test")
    await resolver.resolve("ghost.lab.test")
    assert server.count("ghost.lab.test", "NAPTR") == 1
    clock.now = 1072.0
    await resolver.resolve("ghost.lab.test")
    assert server.count("ghost.lab.test", "NAPTR") == 2


async def test_failover_to_next_target_on_refused_connection(
    lab_dns: tuple[ZoneServer, int, int, int],
    sip_listener: tuple[int, list[bytes]],
) -> None:
    _, dns_port, dead_port, live_port = lab_dns
    _, received = sip_listener
    resolver = make_resolver(dns_port, FakeClock())
    targets = await resolver.resolve("lab.test", transport="tcp")
    assert [t.port for t in targets] == [dead_port, live_port]
    failed: list[Target] = []

    async def connect(target: Target) -> bytes:
        reader, writer = await asyncio.open_connection(target.host_ip, target.port)
        writer.write(b"OPTIONS sip:lab.test SIP/2.0\r\n\r\n")
        await writer.drain()
        reply = await reader.read(100)
        writer.close()
        await writer.wait_closed()
        return reply

    target, reply = await try_targets(
        targets, connect, per_target_timeout=5.0, on_failure=lambda t, e: failed.append(t)
    )
    assert target.port == live_port
    assert reply.startswith(b"SIP/2.0 200 OK")
    assert received == [b"OPTIONS sip:lab.test SIP/2.0\r\n\r\n"]
    assert [t.port for t in failed] == [dead_port]


async def test_failover_on_timeout_and_all_failed() -> None:
    hang = asyncio.Event()
    targets = [
        Target(Transport.UDP, "127.0.0.1", 1, "a"),
        Target(Transport.UDP, "127.0.0.1", 2, "b"),
    ]

    async def connect(target: Target) -> int:
        if target.port == 1:
            await hang.wait()  # never set: stands for a peer that does not answer
        return target.port

    chosen, value = await try_targets(targets, connect, per_target_timeout=0.05)
    assert (chosen.port, value) == (2, 2)

    async def refuse(target: Target) -> int:
        raise ConnectionRefusedError(target.port)

    with pytest.raises(AllTargetsFailed) as info:
        await try_targets(targets, refuse)
    assert [t.port for t, _ in info.value.failures] == [1, 2]


async def test_unanswering_server_times_out_to_empty_result(
    lab_dns: tuple[ZoneServer, int, int, int],
) -> None:
    server, dns_port, _, _ = lab_dns
    server.mute = True
    resolver = SipResolver([("127.0.0.1", dns_port)], timeout=0.1, lifetime=0.2)
    assert await resolver.query(Query("plain.lab.test", RdType.A)) is DnsFailure.TIMEOUT
    targets = await resolver.resolve("plain.lab.test", port=5060)
    assert targets == []
    # Timeouts are not cached: the next attempt asks again.
    before = server.count("plain.lab.test", "A")
    await resolver.resolve("plain.lab.test", port=5060)
    assert server.count("plain.lab.test", "A") > before


async def test_static_records_bypass_dns(lab_dns: tuple[ZoneServer, int, int, int]) -> None:
    server, dns_port, _, _ = lab_dns
    static = StaticRecords.from_config(
        {
            "_sip._udp.pbx.lab": {"SRV": ["0 0 5070 127.0.2.10"]},
            "lab.test": {"A": ["127.0.3.3"]},
        }
    )
    resolver = make_resolver(dns_port, FakeClock(), static=static)
    assert await resolver.resolve("pbx.lab", transport="udp") == [
        Target(Transport.UDP, "127.0.2.10", 5070, "pbx.lab")
    ]
    # A static entry overrides what DNS would have said for that name.
    assert await resolver.resolve("lab.test") == [
        Target(Transport.UDP, "127.0.3.3", 5060, "lab.test")
    ]
    assert sum(server.queries.values()) == 0
