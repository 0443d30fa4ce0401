"""The embedded geo-aware DNS over real sockets: views by source address,
authoritative answers, negative answers, REFUSED, FORMERR, TCP, truncation
and EDNS0; ordered SIP targets through our RFC 3263 resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemons.geo_dns.server import GeoDnsServer
from daemons.geo_dns.zones import ViewSpec, ZoneSet, compile_views
from daemons.runtime.management import Metrics
from protocols.sip.location import Transport

DC1_CLIENT = "127.0.1.101"
DC2_CLIENT = "127.0.2.101"
OTHER_CLIENT = "127.0.0.1"
DC1_PROXIES = {"127.0.1.21", "127.0.1.22"}
DC2_PROXIES = {"127.0.2.21", "127.0.2.22"}
SRV_FQDN = "spx-srv.cluster.lab"


def _counter(server: GeoDnsServer, name: str, **labels: str) -> float:
    for metric in server.queries.collect() + server.malformed.collect() + \
            server.dropped.collect() + server.truncated.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# ---------------------------------------------------------------- SipResolver


async def test_dc1_client_gets_dc1_proxies_first(geo_server: GeoDnsServer,
                                                 sip_resolver: Any) -> None:
    resolver = sip_resolver(geo_server.bound[0], DC1_CLIENT)
    for transport in ("udp", "tcp"):
        targets = await resolver.resolve(SRV_FQDN, transport=transport)
        assert [t.transport for t in targets] == [Transport(transport.upper())] * 4
        assert {t.host_ip for t in targets[:2]} == DC1_PROXIES
        assert {t.host_ip for t in targets[2:]} == DC2_PROXIES
        assert {t.port for t in targets} == {5060}
        # a TLS server must prove the SIP domain, whatever SRV target it is (RFC 5922)
        assert {t.server_name for t in targets} == {SRV_FQDN.rstrip(".").lower()}


async def test_dc2_client_gets_dc2_proxies_first(geo_server: GeoDnsServer,
                                                 sip_resolver: Any) -> None:
    resolver = sip_resolver(geo_server.bound[0], DC2_CLIENT)
    for transport in ("udp", "tcp"):
        targets = await resolver.resolve(SRV_FQDN, transport=transport)
        assert {t.host_ip for t in targets[:2]} == DC2_PROXIES
        assert {t.host_ip for t in targets[2:]} == DC1_PROXIES


async def test_naptr_leads_to_tcp_then_udp_then_tls_in_data_centre_order(
    geo_server: GeoDnsServer, sip_resolver: Any
) -> None:
    """SIP+D2T, SIP+D2U, then SIPS+D2T on the proxies' sip-tls-port (RFC 3263 §4.1)."""
    resolver = sip_resolver(geo_server.bound[0], DC2_CLIENT)
    for host in (SRV_FQDN, "cluster.lab"):
        targets = await resolver.resolve(host)
        assert [t.transport for t in targets] == \
            [Transport.TCP] * 4 + [Transport.UDP] * 4 + [Transport.TLS] * 4
        assert {t.port for t in targets[8:]} == {5061}
        for block in (targets[:4], targets[4:8], targets[8:]):
            assert {t.host_ip for t in block[:2]} == DC2_PROXIES
            assert {t.host_ip for t in block[2:]} == DC1_PROXIES


async def test_sips_uri_finds_the_local_tls_listeners_first(
    geo_server: GeoDnsServer, sip_resolver: Any
) -> None:
    """A ``sips:`` URI (or ``transport=tls``) follows only SIPS+D2T / ``_sips._tcp``:
    the data centre's own proxies on sip-tls-port first, with the SRV FQDN as the
    name their certificate must prove (RFC 5922 §4.1)."""
    for client, local, remote in ((DC1_CLIENT, DC1_PROXIES, DC2_PROXIES),
                                  (DC2_CLIENT, DC2_PROXIES, DC1_PROXIES)):
        resolver = sip_resolver(geo_server.bound[0], client)
        for host in (SRV_FQDN, "cluster.lab"):
            targets = await resolver.resolve(host, secure=True)
            assert [t.transport for t in targets] == [Transport.TLS] * 4, targets
            assert {t.port for t in targets} == {5061}
            assert {t.host_ip for t in targets[:2]} == local
            assert {t.host_ip for t in targets[2:]} == remote
        tls = await resolver.resolve(SRV_FQDN, transport="tls")
        assert {t.host_ip for t in tls[:2]} == local and {t.port for t in tls} == {5061}
        assert {t.server_name for t in tls} == {SRV_FQDN}


async def test_client_outside_data_centres_gets_default_view_dc1_first(
    geo_server: GeoDnsServer, sip_resolver: Any
) -> None:
    resolver = sip_resolver(geo_server.bound[0], OTHER_CLIENT)
    targets = await resolver.resolve(SRV_FQDN, transport="udp")
    assert {t.host_ip for t in targets[:2]} == DC1_PROXIES
    assert {t.host_ip for t in targets[2:]} == DC2_PROXIES


# ---------------------------------------------------------------- answers


async def test_srv_answer_is_authoritative_with_priorities(
    geo_server: GeoDnsServer, ask: Any
) -> None:
    server = geo_server.bound[0]
    for source, local in ((DC1_CLIENT, "dc1"), (DC2_CLIENT, "dc2")):
        msg = await ask(server, f"_sip._udp.{SRV_FQDN}", "SRV", source=source)
        assert msg.rcode() == dns.rcode.NOERROR
        assert msg.flags & dns.flags.AA
        assert not msg.flags & dns.flags.RA
        prio = {rd.target.to_text(): rd.priority for rd in msg.answer[0]}
        assert prio == {
            f"spx1-{local}.cluster.lab.": 10, f"spx2-{local}.cluster.lab.": 10,
            **{f"spx{i}-{o}.cluster.lab.": 200 for i in (1, 2)
               for o in ("dc1", "dc2") if o != local},
        }
        # the targets' addresses ride along in the additional section
        extra = {r.name.to_text() for r in msg.additional if r.rdtype == dns.rdatatype.A}
        assert extra == set(prio)
    assert _counter(geo_server, "test_geo_dns_queries_total", view="dc1", rcode="NOERROR",
                    transport="udp") == 1
    assert _counter(geo_server, "test_geo_dns_queries_total", view="dc2", rcode="NOERROR",
                    transport="udp") == 1


async def test_external_contact_a_records_are_local(geo_server: GeoDnsServer, ask: Any) -> None:
    server = geo_server.bound[0]
    for source, local in ((DC1_CLIENT, DC1_PROXIES), (DC2_CLIENT, DC2_PROXIES)):
        msg = await ask(server, SRV_FQDN, "A", source=source)
        assert {rd.address for rd in msg.answer[0]} == local


async def test_nxdomain_and_nodata_carry_soa(geo_server: GeoDnsServer, ask: Any) -> None:
    server = geo_server.bound[0]
    nx = await ask(server, "nope.cluster.lab", "A", source=DC1_CLIENT)
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.flags & dns.flags.AA
    assert not nx.answer
    assert [(r.name.to_text(), r.rdtype, r.ttl) for r in nx.authority] == [
        ("cluster.lab.", dns.rdatatype.SOA, 60)
    ]
    for name, rdtype in (("spx1-dc1.cluster.lab", "AAAA"),
                         (f"_udp.{SRV_FQDN}", "SRV"),        # empty non-terminal
                         (f"_sip._udp.{SRV_FQDN}", "A")):
        msg = await ask(server, name, rdtype, source=DC2_CLIENT)
        assert msg.rcode() == dns.rcode.NOERROR, name
        assert not msg.answer
        assert msg.authority[0].rdtype == dns.rdatatype.SOA


async def test_other_zone_is_refused(geo_server: GeoDnsServer, ask: Any) -> None:
    msg = await ask(geo_server.bound[0], "example.com", "A", source=DC1_CLIENT)
    assert msg.rcode() == dns.rcode.REFUSED
    assert not msg.flags & dns.flags.AA
    assert not msg.answer
    transfer = await ask(geo_server.bound[0], "cluster.lab", "AXFR", source=DC1_CLIENT,
                         tcp=True)
    assert transfer.rcode() == dns.rcode.REFUSED


async def test_tcp_answers_the_same(geo_server: GeoDnsServer, ask: Any,
                                    answer_summary: Any) -> None:
    server = geo_server.bound[0]
    udp = await ask(server, f"_sip._tcp.{SRV_FQDN}", "SRV", source=DC2_CLIENT)
    tcp = await ask(server, f"_sip._tcp.{SRV_FQDN}", "SRV", source=DC2_CLIENT, tcp=True)
    assert answer_summary(udp) == answer_summary(tcp)
    assert _counter(geo_server, "test_geo_dns_queries_total", view="dc2", transport="tcp") == 1


async def test_edns_echoed_and_badvers(geo_server: GeoDnsServer, ask: Any) -> None:
    server = geo_server.bound[0]
    msg = await ask(server, SRV_FQDN, "NAPTR", source=DC1_CLIENT, edns=0)
    assert msg.edns == 0
    assert msg.payload == 1232
    plain = await ask(server, SRV_FQDN, "NAPTR", source=DC1_CLIENT)
    assert plain.edns == -1
    bad = await ask(server, SRV_FQDN, "NAPTR", source=DC1_CLIENT, edns=1)
    assert bad.rcode() == dns.rcode.BADVERS
    assert not bad.answer


async def test_notify_opcode_is_not_implemented(geo_server: GeoDnsServer) -> None:
    query = dns.message.make_query("cluster.lab", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = await dns.asyncquery.udp(query, "127.0.0.1", timeout=2.0,
                                     port=geo_server.bound[0][1], source=DC1_CLIENT)
    assert reply.rcode() == dns.rcode.NOTIMP


# ---------------------------------------------------------------- malformed input


def _udp_exchange(port: int, payload: bytes, *, expect_reply: bool) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((DC1_CLIENT, 0))
        sock.settimeout(2.0 if expect_reply else 0.3)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


async def test_malformed_query_gets_formerr_and_server_keeps_answering(
    geo_server: GeoDnsServer, ask: Any
) -> None:
    port = geo_server.bound[0][1]
    # a header that promises a question, then a label running past the end
    garbage = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x3fabc"
    reply = await asyncio.to_thread(_udp_exchange, port, garbage, expect_reply=True)
    assert reply is not None
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    assert qid == 0xBEEF
    assert flags & 0x8000  # QR
    assert flags & 0x000F == dns.rcode.FORMERR
    assert flags & dns.flags.RD  # copied from the query
    assert (qd, an, ns, ar) == (0, 0, 0, 0)
    # two questions are a format error too (RFC 1035 §4.1.1)
    two = dns.message.make_query("cluster.lab", "SOA")
    two.question.append(two.question[0])
    reply = await asyncio.to_thread(_udp_exchange, port, two.to_wire(), expect_reply=True)
    assert reply is not None and reply[3] & 0x0F == dns.rcode.FORMERR
    # too short for a header: nothing to answer, counted
    assert await asyncio.to_thread(_udp_exchange, port, b"\x01\x02\x03",
                                   expect_reply=False) is None
    assert _counter(geo_server, "test_geo_dns_malformed_total", transport="udp") == 2
    assert _counter(geo_server, "test_geo_dns_dropped_total", reason="short") == 1
    # still serving, over UDP and TCP
    ok = await ask(geo_server.bound[0], f"_sip._udp.{SRV_FQDN}", "SRV", source=DC1_CLIENT)
    assert ok.rcode() == dns.rcode.NOERROR and len(ok.answer[0]) == 4
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(DC2_CLIENT, 0))
    writer.write(len(garbage).to_bytes(2, "big") + garbage)
    size = int.from_bytes(await reader.readexactly(2), "big")
    assert (await reader.readexactly(size))[3] & 0x0F == dns.rcode.FORMERR
    good = dns.message.make_query(SRV_FQDN, "A").to_wire()
    writer.write(len(good).to_bytes(2, "big") + good)  # same connection goes on
    size = int.from_bytes(await reader.readexactly(2), "big")
    msg = dns.message.from_wire(await reader.readexactly(size))
    assert {rd.address for rd in msg.answer[0]} == DC2_PROXIES
    writer.close()
    await writer.wait_closed()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_respond_never_raises_on_random_bytes(data: bytes, example_zone_set: ZoneSet) -> None:
    server = _fuzz_server(example_zone_set)
    outcome = server.respond(data, DC1_CLIENT, "udp")
    if outcome.wire is not None:
        assert outcome.wire[:2] == data[:2]
        assert outcome.wire[2] & 0x80


_VALID = dns.message.make_query(f"_sip._udp.{SRV_FQDN}", "SRV", use_edns=0).to_wire()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)),
                      min_size=1, max_size=4),
       cut=st.integers(0, len(_VALID)))
def test_respond_survives_mutated_queries(
    flips: list[tuple[int, int]], cut: int, example_zone_set: ZoneSet
) -> None:
    wire = bytearray(_VALID)
    for pos, value in flips:
        wire[pos] = value
    server = _fuzz_server(example_zone_set)
    outcome = server.respond(bytes(wire[:cut]), DC2_CLIENT, "tcp")
    if outcome.wire is not None:
        dns.message.from_wire(outcome.wire)  # whatever we send parses


_FUZZ: dict[int, GeoDnsServer] = {}


def _fuzz_server(zone_set: ZoneSet) -> GeoDnsServer:
    if id(zone_set) not in _FUZZ:
        _FUZZ[id(zone_set)] = GeoDnsServer(compile_views(zone_set), metrics=Metrics("fuzz"))
    return _FUZZ[id(zone_set)]


# ---------------------------------------------------------------- truncation


_BIG_ZONE = """$ORIGIN big.lab.
$TTL 300
@ IN SOA ns.big.lab. hostmaster.big.lab. 1 3600 600 86400 60
@ IN NS ns.big.lab.
ns IN A 127.0.1.53
""" + "".join(f"many IN A 127.0.1.{i}\n" for i in range(1, 61))


async def test_udp_truncation_without_edns_and_full_answer_over_tcp(
    tmp_path: Path, ask: Any
) -> None:
    everyone = (ipaddress.ip_network("0.0.0.0/0"),)
    zone_set = ZoneSet((ViewSpec("all", everyone, {"big.lab": "big.lab.zone"}),),
                       {"big.lab.zone": _BIG_ZONE})
    server = GeoDnsServer(compile_views(zone_set), metrics=Metrics("trunc"))
    bound = (await server.start([("127.0.0.1", 0)]))[0]
    try:
        small = await ask(bound, "many.big.lab", "A", source=DC1_CLIENT)
        assert small.flags & dns.flags.TC
        assert len(small.to_wire()) <= 512
        assert sum(len(r) for r in small.answer) < 60
        edns = await ask(bound, "many.big.lab", "A", source=DC1_CLIENT, edns=0, payload=4096)
        assert not edns.flags & dns.flags.TC  # 60 A records fit in 1232 bytes
        assert len(edns.answer[0]) == 60
        tiny = await ask(bound, "many.big.lab", "A", source=DC1_CLIENT, edns=0, payload=600)
        assert tiny.flags & dns.flags.TC
        tcp = await ask(bound, "many.big.lab", "A", source=DC1_CLIENT, tcp=True)
        assert not tcp.flags & dns.flags.TC
        assert len(tcp.answer[0]) == 60
        assert _counter(server, "trunc_geo_dns_truncated_total") == 2
    finally:
        await server.stop()


async def test_client_of_no_data_centre_gets_the_view_of_the_listener_it_asked(
    example_zone_set: ZoneSet, sip_resolver: Any,
) -> None:
    """A phone told to use DC2's DNS server whose resolver sends from 127.0.0.1
    gets DC2's proxies first, over UDP and TCP; a DC1 client asking the same
    listener keeps DC1's answer."""
    server = GeoDnsServer(compile_views(example_zone_set), metrics=Metrics("test"))
    await server.start([("127.0.2.53", 0)])
    try:
        for transport in ("udp", "tcp"):
            resolver = sip_resolver(server.bound[0], OTHER_CLIENT)
            targets = await resolver.resolve(SRV_FQDN, transport=transport)
            assert {t.host_ip for t in targets[:2]} == DC2_PROXIES, transport
        dc1 = await sip_resolver(server.bound[0], DC1_CLIENT).resolve(SRV_FQDN, transport="udp")
        assert {t.host_ip for t in dc1[:2]} == DC1_PROXIES
    finally:
        await server.stop()


async def test_any_is_answered_with_every_rrset_of_the_name(geo_server: GeoDnsServer,
                                                           ask: Any) -> None:
    server = geo_server.bound[0]
    for tcp in (False, True):
        apex = await ask(server, "cluster.lab", "ANY", source=DC1_CLIENT, tcp=tcp)
        assert apex.rcode() == dns.rcode.NOERROR and apex.flags & dns.flags.AA
        assert {dns.rdatatype.SOA, dns.rdatatype.NS} <= {r.rdtype for r in apex.answer}
        # the data centre's own view: the DC2 client gets DC2's addresses
        name = await ask(server, SRV_FQDN, "ANY", source=DC2_CLIENT, tcp=tcp)
        a_sets = [r for r in name.answer if r.rdtype == dns.rdatatype.A]
        assert len(a_sets) == 1 and {rd.address for rd in a_sets[0]} == DC2_PROXIES
        nx = await ask(server, "nope.cluster.lab", "ANY", source=DC1_CLIENT, tcp=tcp)
        assert nx.rcode() == dns.rcode.NXDOMAIN and not nx.answer
        other = await ask(server, "example.com", "ANY", source=DC1_CLIENT, tcp=tcp)
        assert other.rcode() == dns.rcode.REFUSED
