"""The sip-proxy daemon on a loopback cluster: registrar front, replicated
bindings, routing to AoRs, out-of-service detection, fail-over between data
centres, restart catch-up, MWI, protection rules."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.sip_proxy.registrar import Binding
from protocols.sip.message import Request, Response
from tests.daemons.sip_proxy.conftest import (  # type: ignore[import-not-found]
    DOMAIN,
    Cluster,
    register,
    standard_topology,
)

ALL_DC1 = {"SIPS_dc1_1", "SIPS_dc1_2", "SIPS_dc2_1"}


async def start_all(c: Cluster, proxies: tuple[str, ...] | None = None) -> None:
    for name in c.topo.nodes:
        await c.start_node(name)
    for name in proxies or tuple(c.topo.proxies):
        await c.start_proxy(name)
    for name in proxies or tuple(c.topo.proxies):
        await c.wait_nodes(name, set(c.topo.nodes))


def invite(to_uri: str, caller: SipEndpoint, call_id: str) -> Request:
    local = caller.local_address("UDP")
    assert local is not None
    req = Request("INVITE", to_uri)
    h = req.headers
    h.add("From", f"<sip:5000@{DOMAIN}>;tag=caller1")
    h.add("To", f"<{to_uri}>")
    h.add("Call-ID", call_id)
    h.add("CSeq", "1 INVITE")
    h.add("Contact", f"<sip:5000@{local[0]}:{local[1]}>")
    h.add("Content-Type", "application/sdp")
    req.body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
               b"m=audio 4000 RTP/AVP 0\r\n"
    return req


class Phone:
    """A phone that answers INVITE with 200 and BYE with 200, and records them."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.ep: SipEndpoint | None = None

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        self.requests.append(incoming.request)
        if incoming.method == "INVITE":
            assert self.ep is not None
            local = self.ep.local_address(incoming.flow.transport)
            assert local is not None
            return incoming.response(200, headers=[
                ("Contact", f"<sip:1001@{local[0]}:{local[1]}>")])
        if incoming.method == "ACK":
            return None
        return incoming.response(200)


async def test_register_through_one_proxy_call_through_another(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology())
    await start_all(c)
    phone = Phone()
    ep = await c.endpoint("127.0.1.201", phone.handle)
    phone.ep = ep
    resp = await register(ep, c.proxy_dest("SPX_dc1_1"), "1001")
    assert resp.status == 200
    assert "X-SC-Node" not in resp.headers
    # the binding reaches every proxy of both data centres
    for name, proxy in c.proxies.items():
        for _ in range(100):
            if proxy.store.lookup(f"1001@{DOMAIN}", time.time()):
                break
            await asyncio.sleep(0.02)
        (b,) = proxy.store.lookup(f"1001@{DOMAIN}", time.time())
        assert b.origin == "SPX_dc1_1", name
        assert b.contact.startswith("sip:1001@127.0.1.201:")
        assert b.expires_at > time.time() + 200
    # a node of DC2 calls the AoR through the DC2 proxy -> DC1 proxy -> phone
    node_side = await c.endpoint("127.0.2.111")
    inv = invite(f"sip:1001@{DOMAIN}", node_side, "call-1@test")
    final = await node_side.request(inv, c.proxy_dest("SPX_dc2_1"))
    assert final.status == 200
    assert [r.method for r in phone.requests] == ["INVITE"]
    got = phone.requests[0]
    assert "X-SC-Node" not in got.headers  # private header stays inside the cluster
    rr = got.headers.get_all("Record-Route")
    assert len(rr) == 2  # both proxies stay in the dialog
    # the in-dialog ACK and BYE follow the Record-Route back to the phone
    await node_side.send_ack(inv, final)
    bye_dialog_final = await _bye(node_side, inv, final)
    assert bye_dialog_final.status == 200
    await asyncio.sleep(0.1)
    assert [r.method for r in phone.requests] == ["INVITE", "ACK", "BYE"]
    # an AoR without a binding: 480, whether the DN exists or not
    for user in ("1002", "9999"):
        final = await node_side.request(invite(f"sip:{user}@{DOMAIN}", node_side, f"c-{user}"),
                                        c.proxy_dest("SPX_dc2_1"))
        assert final.status == 480


async def _bye(ep: SipEndpoint, invite_req: Request, final: Response) -> Response:
    from protocols.sip.dialog import Dialog
    # the request as the caller sent it: rebuild the caller's dialog from its 2xx
    dialog = Dialog.create_uac(invite_req, final)
    bye = dialog.create_request("BYE")
    return await ep.request(bye)


async def test_register_over_tcp_routes_on_the_phone_flow(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology(dc2=False))
    await start_all(c)
    phone = Phone()
    ep = await c.endpoint("127.0.1.202", phone.handle, tcp=True)
    phone.ep = ep
    resp = await register(ep, c.proxy_dest("SPX_dc1_1", "TCP"), "1001")
    assert resp.status == 200
    b = c.proxies["SPX_dc1_1"].store.lookup(f"1001@{DOMAIN}", time.time())[0]
    assert b.transport == "TCP" and b.received is not None
    node_side = await c.endpoint("127.0.1.111")
    final = await node_side.request(invite(f"sip:1001@{DOMAIN}", node_side, "tcp-call@test"),
                                    c.proxy_dest("SPX_dc1_2"))
    assert final.status == 200
    assert phone.requests[0].method == "INVITE"


async def test_restarted_proxy_catches_up_before_serving(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology(dc2=False))
    await start_all(c)
    phone = Phone()
    ep = await c.endpoint("127.0.1.203", phone.handle)
    phone.ep = ep
    assert (await register(ep, c.proxy_dest("SPX_dc1_1"), "1001")).status == 200
    await c.stop_proxy("SPX_dc1_2")
    assert (await register(ep, c.proxy_dest("SPX_dc1_1"), "1002")).status == 200
    p2 = await c.start_proxy("SPX_dc1_2")
    assert p2.replicator is not None and p2.replicator.synced
    assert {b.aor for b in p2.store.all()} == {f"1001@{DOMAIN}", f"1002@{DOMAIN}"}
    await c.wait_nodes("SPX_dc1_2", {"SIPS_dc1_1", "SIPS_dc1_2"})
    node_side = await c.endpoint("127.0.1.112")
    final = await node_side.request(invite(f"sip:1002@{DOMAIN}", node_side, "after@test"),
                                    c.proxy_dest("SPX_dc1_2"))
    assert final.status == 200


async def test_unsynced_proxy_answers_503(cluster_factory: Any) -> None:
    topo = standard_topology(dc2=False)
    c: Cluster = cluster_factory(topo)
    await start_all(c, ("SPX_dc1_1",))
    # pretend the peer holds bindings and never finishes: sync must not be claimed
    p = await c.start_proxy("SPX_dc1_2", wait_synced=False, sync_timeout=60.0)
    assert p.replicator is not None
    p.replicator._synced.clear()  # force the catch-up window
    ep = await c.endpoint("127.0.1.204")
    resp = await register(ep, c.proxy_dest("SPX_dc1_2"), "1001")
    assert resp.status == 503
    assert resp.headers.get("Retry-After") is not None


async def test_node_out_of_service_and_dc_failover(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology())
    await start_all(c, ("SPX_dc1_1",))
    ep = await c.endpoint("127.0.1.205")
    await c.stop_node("SIPS_dc1_1")
    started = asyncio.get_running_loop().time()
    await c.wait_nodes("SPX_dc1_1", {"SIPS_dc1_2", "SIPS_dc2_1"})
    # oos-check 0.3 + oos-force 0.6 (+ scheduling slack)
    assert asyncio.get_running_loop().time() - started < 3.0
    for i in range(6):
        ep2 = await c.endpoint("127.0.1.205")
        assert (await register(ep2, c.proxy_dest("SPX_dc1_1"), "1001")).status == 200, i
    p = c.proxies["SPX_dc1_1"]
    assert p.nodes_status()["nodes"]["SIPS_dc1_1"]["state"] == "out-of-service"
    # both DC1 nodes down: the DC2 node takes the traffic
    await c.stop_node("SIPS_dc1_2")
    await c.wait_nodes("SPX_dc1_1", {"SIPS_dc2_1"})
    resp = await register(ep, c.proxy_dest("SPX_dc1_1"), "1002")
    assert resp.status == 200
    dc2_node = c.nodes["SIPS_dc2_1"]
    assert dc2_node.registrar.bindings.get(f"1002@{DOMAIN}")
    # the node comes back: in service again on its first answer
    await c.start_node("SIPS_dc1_1")
    await c.wait_nodes("SPX_dc1_1", {"SIPS_dc1_1", "SIPS_dc2_1"})


async def test_same_call_id_goes_to_the_same_node(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology(dc2=False))
    await start_all(c)
    picks = {name: c.proxies[name].router.select("abc@host").name  # type: ignore[union-attr]
             for name in c.proxies}
    assert len(set(picks.values())) == 1
    spread = {c.proxies["SPX_dc1_1"].router.select(f"id{i}").name  # type: ignore[union-attr]
              for i in range(50)}
    assert spread == {"SIPS_dc1_1", "SIPS_dc1_2"}


async def test_mwi_subscribe_goes_to_feature_server(cluster_factory: Any) -> None:
    topo = standard_topology(dc2=False, fs=True)
    c: Cluster = cluster_factory(topo)
    for name in topo.nodes:
        await c.start_node(name)
    assert topo.feature_server is not None
    fs_host, fs_port = topo.feature_server
    seen: list[Request] = []

    async def fs_handler(incoming: IncomingRequest) -> Response:
        seen.append(incoming.request)
        return incoming.response(200, headers=[("Expires", "60")])

    fs = SipEndpoint(fs_handler)
    await fs.listen("UDP", fs_host, fs_port)
    c.endpoints.append(fs)
    await c.start_proxy("SPX_dc1_1")
    await c.start_proxy("SPX_dc1_2")
    await c.wait_nodes("SPX_dc1_1", set(topo.nodes))
    ep = await c.endpoint("127.0.1.206")
    req = Request("SUBSCRIBE", f"sip:1001@{DOMAIN}")
    for name, value in (("From", f"<sip:1001@{DOMAIN}>;tag=m1"), ("To", f"<sip:1001@{DOMAIN}>"),
                        ("Call-ID", "mwi-1@test"), ("CSeq", "1 SUBSCRIBE"),
                        ("Event", "message-summary"), ("Expires", "60"),
                        ("Accept", "application/simple-message-summary"),
                        ("Contact", "<sip:1001@127.0.1.206>")):
        req.headers.add(name, value)
    resp = await ep.request(req, c.proxy_dest("SPX_dc1_1"))
    assert resp.status == 200
    assert len(seen) == 1 and seen[0].headers.get("Event") == "message-summary"
    assert seen[0].headers.get("Record-Route") is not None


async def test_status_page_and_metrics(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology(dc2=False))
    await start_all(c, ("SPX_dc1_1",))
    p = c.proxies["SPX_dc1_1"]
    port = await p.management.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/status/nodes") as r:
                data = await r.json()
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
    finally:
        await p.management.stop()
    assert data["nodes"]["SIPS_dc1_1"]["state"] == "in-service"
    assert data["nodes"]["SIPS_dc1_1"]["checks"] >= 1
    assert 'sipcluster_proxy_node_in_service{geo_location="dc1",node="SIPS_dc1_1"} 1.0' in text
    assert "sipcluster_proxy_node_checks_total" in text


async def test_catch_up_of_10000_bindings(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology(dc2=False))
    await start_all(c, ("SPX_dc1_1",))
    p1 = c.proxies["SPX_dc1_1"]
    now = time.time()
    for i in range(10_000):
        p1.store.apply(Binding(f"u{i}@{DOMAIN}", f"sip:u{i}@10.0.{i // 250}.{i % 250}:5060",
                               now + 600, now, "SPX_dc1_1"))
    p2 = await c.start_proxy("SPX_dc1_2")
    assert len(p2.store) == 10_000
    assert p2.store.lookup(f"u9999@{DOMAIN}", time.time())[0].contact.endswith(".249:5060")
    # then incremental updates flow
    ep = await c.endpoint("127.0.1.207")
    assert (await register(ep, c.proxy_dest("SPX_dc1_1"), "1001")).status == 200
    for _ in range(100):
        if p2.store.lookup(f"1001@{DOMAIN}", time.time()):
            break
        await asyncio.sleep(0.02)
    assert p2.store.lookup(f"1001@{DOMAIN}", time.time())


async def test_failed_authentication_is_slowed_then_refused(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology(dc2=False))
    await start_all(c, ("SPX_dc1_1",))
    ep = await c.endpoint("127.0.1.208")
    proxy = c.proxy_dest("SPX_dc1_1")
    answers = []
    for user in ("1001", "7777"):  # existing and non-existing extension: same answer
        r = await register(ep, proxy, user, "wrong-password")
        answers.append((r.status, sorted(n.lower() for n, _ in r.headers
                                         if n.lower() not in ("content-length",))))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401
    statuses = []
    for _ in range(6):
        statuses.append((await register(ep, proxy, "1001", "wrong-password")).status)
    assert statuses[-1] == 403
    # the good password from that address is refused too while blocked
    assert (await register(ep, proxy, "1001")).status == 403
    # another address is not affected
    other = await c.endpoint("127.0.1.209")
    assert (await register(other, proxy, "1001")).status == 200
    assert c.proxies["SPX_dc1_1"].auth_guard.failures("127.0.1.208") >= 6


async def test_rate_limit_per_source(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(standard_topology(dc2=False))
    for name in c.topo.nodes:
        await c.start_node(name)
    await c.start_proxy("SPX_dc1_1", rate_limit=5.0, rate_burst=5.0)
    p = c.proxies["SPX_dc1_1"]
    flood = await c.endpoint("127.0.1.210")
    _, host, port = c.topo.proxies["SPX_dc1_1"]
    results = await asyncio.gather(*[
        flood.request(_options(host, port, i), Destination("UDP", host, port))
        for i in range(30)])
    codes = [r.status for r in results]
    assert codes.count(200) <= 8
    limited = [r for r in results if r.status == 503]
    assert len(limited) >= 20
    assert all(r.headers.get("Retry-After") for r in limited)
    assert p.rate_limiter.refused >= 20
    calm = await c.endpoint("127.0.1.211")
    assert (await calm.request(_options(host, port, 99), Destination("UDP", host, port))
            ).status == 200


def _options(host: str, port: int, i: int) -> Request:
    req = Request("OPTIONS", f"sip:{host}:{port}")
    for name, value in (("From", f"<sip:probe@{DOMAIN}>;tag=o{i}"), ("To", f"<sip:{host}>"),
                        ("Call-ID", f"opt-{i}-{time.monotonic()}@test"),
                        ("CSeq", "1 OPTIONS")):
        req.headers.add(name, value)
    return req
