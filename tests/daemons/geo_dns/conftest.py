"""Fixtures for the geo-aware DNS tests: the example cluster's zones, a running
embedded server on an ephemeral port, and resolvers bound to a data centre's
source address (DC1 = 127.0.1.x, DC2 = 127.0.2.x, see TESTING.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.rdatatype
import pytest

from daemons.cluster.config import load_cluster
from daemons.geo_dns.server import GeoDnsServer
from daemons.geo_dns.zones import ZoneSet, compile_views, generate_zone_set
from daemons.runtime.dns import SipResolver
from daemons.runtime.management import Metrics

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
DEPLOY_DNS = ROOT / "deploy" / "dns"

DC1_CLIENT = "127.0.1.101"
DC2_CLIENT = "127.0.2.101"
OTHER_CLIENT = "127.0.0.1"
DC1_PROXIES = {"127.0.1.21", "127.0.1.22"}
DC2_PROXIES = {"127.0.2.21", "127.0.2.22"}
SRV_FQDN = "spx-srv.cluster.lab"


@pytest.fixture(scope="session")
def example_zone_set() -> ZoneSet:
    return generate_zone_set(load_cluster(EXAMPLE_CLUSTER), source_name="cluster.toml")


@pytest.fixture
async def geo_server(example_zone_set: ZoneSet) -> AsyncIterator[GeoDnsServer]:
    """The embedded server with the example zones on 127.0.0.1, an OS-chosen port."""
    server = GeoDnsServer(compile_views(example_zone_set), metrics=Metrics("test"))
    await server.start([("127.0.0.1", 0)])
    try:
        yield server
    finally:
        await server.stop()


def sip_resolver(server: tuple[str, int], source: str) -> SipResolver:
    """Our RFC 3263 resolver pointed at ``server``, its queries sent from ``source``."""
    return SipResolver([server], timeout=1.0, lifetime=3.0, source=source)


async def ask(
    server: tuple[str, int],
    name: str,
    rdtype: str,
    *,
    source: str,
    tcp: bool = False,
    edns: int = -1,
    payload: int = 1232,
) -> dns.message.Message:
    """One query to ``server`` from ``source`` over UDP (no retry over TCP) or TCP."""
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), use_edns=edns,
                                   payload=payload)
    query.flags = 0  # an authoritative server is asked without RD
    if tcp:
        return await dns.asyncquery.tcp(query, server[0], timeout=2.0, port=server[1],
                                        source=source)
    return await dns.asyncquery.udp(query, server[0], timeout=2.0, port=server[1],
                                    source=source, ignore_trailing=False)


def answer_summary(msg: dns.message.Message) -> dict[str, Any]:
    """What two servers must agree on: rcode, AA, TC and the answer/authority data."""

    def section(rrsets: list[Any]) -> list[tuple[str, str, int, tuple[str, ...]]]:
        return sorted(
            (r.name.to_text(), dns.rdatatype.to_text(r.rdtype), r.ttl,
             tuple(sorted(rd.to_text() for rd in r)))
            for r in rrsets
        )

    return {
        "rcode": msg.rcode(),
        "aa": bool(msg.flags & dns.flags.AA),
        "tc": bool(msg.flags & dns.flags.TC),
        "answer": section(msg.answer),
        "authority": section(msg.authority),
    }


@pytest.fixture(name="ask")
def _ask_fixture() -> Any:
    return ask


@pytest.fixture(name="sip_resolver")
def _sip_resolver_fixture() -> Any:
    return sip_resolver


@pytest.fixture(name="answer_summary")
def _answer_summary_fixture() -> Any:
    return answer_summary
