"""The node's checks of its SIP Proxies (daemons/sip_server/outbound.py) on real sockets."""

from __future__ import annotations

import asyncio

import structlog

from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.sip_server.outbound import PeerWatch
from protocols.sip.message import Response
from protocols.sip.oos import NodeState
from protocols.sip.timers import TimerSettings

FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.25, trying_delay=None)


async def answer(incoming: IncomingRequest) -> Response | None:
    return incoming.response(200)


async def watch_until_usable(watch: PeerWatch, dest: Destination, limit: float) -> float | None:
    """Drive the watch like OutboundProxies does; seconds until ``dest`` is usable."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < limit:
        if watch.usable(dest):
            return loop.time() - started
        await asyncio.sleep(min(0.05, watch.step(loop.time())))
    return None


async def test_tcp_proxy_that_starts_listening_late_is_in_service_within_the_check(
        free_port: object) -> None:
    """Over TCP a refused connection fails the check at once, where UDP would have
    retransmitted: the check is tried again inside its oos-force window, so the
    proxy is in service long before the next oos-check."""
    port = free_port("127.0.0.1")  # type: ignore[operator]
    node = SipEndpoint(answer, timers=FAST)
    await node.listen_pair("127.0.0.1")
    watch = PeerWatch(lambda: node, name="SIPS_1", host="127.0.0.1", oos_check=60.0,
                      oos_force=3.0, log=structlog.get_logger())
    dest = Destination("TCP", "127.0.0.1", port)
    watch.watch([dest])
    proxy = SipEndpoint(answer, timers=FAST)
    try:
        watch.step(asyncio.get_running_loop().time())  # the first check: refused
        await asyncio.sleep(0.2)
        assert not watch.usable(dest)
        await proxy.listen("TCP", "127.0.0.1", port)
        took = await watch_until_usable(watch, dest, 2.8)
        assert took is not None, watch.monitor.nodes
        assert watch.monitor.nodes[PeerWatch.key(dest)].checks == 1
    finally:
        watch.close()
        await proxy.close()
        await node.close()


async def test_tcp_proxy_that_stays_down_goes_out_of_service(free_port: object) -> None:
    port = free_port("127.0.0.1")  # type: ignore[operator]
    node = SipEndpoint(answer, timers=FAST)
    await node.listen_pair("127.0.0.1")
    watch = PeerWatch(lambda: node, name="SIPS_1", host="127.0.0.1", oos_check=60.0,
                      oos_force=1.0, log=structlog.get_logger())
    dest = Destination("TCP", "127.0.0.1", port)
    watch.watch([dest])
    try:
        # never usable within twice oos-force: the retries do not hide a dead proxy
        assert await watch_until_usable(watch, dest, 2.0) is None
        # and out of service once the window is over (a loaded host may run the
        # window's last step late: waited for, never usable meanwhile)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while watch.state(dest) is not NodeState.OUT_OF_SERVICE and loop.time() < deadline:
            assert not watch.usable(dest)
            await asyncio.sleep(min(0.05, watch.step(loop.time())))
        assert watch.state(dest) is NodeState.OUT_OF_SERVICE
    finally:
        watch.close()
        await node.close()
