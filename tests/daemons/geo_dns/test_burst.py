"""A burst of unpaced UDP queries waits in a receive buffer sized for it, and
what the kernel still drops is counted in /metrics
(``sipcluster_geo_dns_udp_receive_drops``, from /proc/net/udp).

The queries are sent while the server's event loop is busy (the test holds
it), as a burst meets a daemon answering something else: everything then
waits in the kernel's receive buffer.
"""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rdatatype

from daemons.geo_dns.server import GeoDnsServer
from daemons.geo_dns.zones import ZoneSet, compile_views
from daemons.runtime.management import Metrics

BURST = 5000


def handled(metrics: Metrics) -> float:
    return sum(sample.value for family in metrics.registry.collect()
               for sample in family.samples
               if sample.name == "sipcluster_geo_dns_queries_total")


def drops(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("sipcluster_geo_dns_udp_receive_drops")
    assert value is not None
    return value


async def burst(zone_set: ZoneSet, **server_args: int) -> tuple[float, float]:
    """Send BURST queries with the loop held, then let the server answer all it got;
    (queries answered, kernel drops) as /metrics shows them."""
    metrics = Metrics("sipcluster")
    server = GeoDnsServer(compile_views(zone_set), metrics=metrics, **server_args)
    await server.start([("127.0.0.1", 0)])
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.1.9", 0))
        wire = dns.message.make_query("_sip._udp.spx-srv.cluster.lab",
                                      dns.rdatatype.SRV).to_wire()
        for _ in range(BURST):
            sock.sendto(wire, server.bound[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while handled(metrics) + drops(metrics) < BURST and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        sock.close()
        return handled(metrics), drops(metrics)
    finally:
        await server.stop()


async def test_a_burst_of_5000_queries_waits_in_the_receive_buffer(
    example_zone_set: ZoneSet,
) -> None:
    assert await burst(example_zone_set) == (BURST, 0)


async def test_what_the_kernel_drops_is_counted(example_zone_set: ZoneSet) -> None:
    """A buffer too small for the burst: the drops show in /metrics, and every
    query is either answered or counted there."""
    answered, dropped = await burst(example_zone_set, udp_receive_buffer=16 * 1024)
    assert dropped > 0
    assert answered + dropped == BURST
