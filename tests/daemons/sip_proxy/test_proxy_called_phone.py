"""A called phone that registered by the data centre's proxy name (docs/sip-proxy.md,
"What goes where"): its binding records the name, every proxy learns it by
replication, ``/status/registrations`` shows it, and a call delivered to the
phone is record-routed by that name on the phone's side, so the phone's BYE
reaches the node through another proxy when the one that delivered the call
is gone. Phones by address, over TCP, keep the address form.

Rolling upgrade: a proxy of the previous release (twelve binding fields, no
``fields`` in its hello) gets bindings in the twelve-field form, and its
bindings are read by a proxy of this release.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.sip_proxy.registrar import LEGACY_WIRE_FIELDS, WIRE_FIELDS, Binding
from daemons.sip_proxy.service import replication_port
from protocols.sip.dialog import Dialog
from protocols.sip.message import Request, Response
from protocols.tlib.framing import FrameDecoder, encode_frame
from tests.daemons.sip_proxy.conftest import (  # type: ignore[import-not-found]
    DOMAIN,
    Cluster,
    register,
    standard_topology,
)

NAME = "spx-srv.cluster.lab"
BY_NAME = f"<sip:{NAME};lr>"


class CalledPhone:
    """A phone that answers INVITE with 200 and keeps the dialog it made (§12.1.1)."""

    def __init__(self) -> None:
        self.ep: SipEndpoint | None = None
        self.invites: list[Request] = []
        self.dialog: Dialog | None = None

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        if incoming.method == "ACK":
            return None
        if incoming.method != "INVITE":
            return incoming.response(200)
        self.invites.append(incoming.request)
        assert self.ep is not None
        local = self.ep.local_address(incoming.flow.transport)
        assert local is not None
        answer = incoming.response(200, headers=[("Contact", f"<sip:1001@{local[0]}:{local[1]}>")])
        self.dialog = Dialog.create_uas(incoming.request, answer)
        return answer


def _invite(to_uri: str, caller: SipEndpoint, call_id: str) -> Request:
    local = caller.local_address("UDP")
    assert local is not None
    req = Request("INVITE", to_uri)
    for name, value in (("From", f"<sip:5000@{DOMAIN}>;tag=caller1"), ("To", f"<{to_uri}>"),
                        ("Call-ID", call_id), ("CSeq", "1 INVITE"),
                        ("Contact", f"<sip:5000@{local[0]}:{local[1]}>")):
        req.headers.add(name, value)
    return req


async def _start(c: Cluster) -> None:
    for name in c.topo.nodes:
        await c.start_node(name)
    for name in c.topo.proxies:
        await c.start_proxy(name)
    for name in c.topo.proxies:
        await c.wait_nodes(name, set(c.topo.nodes))


def _named_cluster(cluster_factory: Any) -> Cluster:
    """One data centre whose proxies answer for the outbound proxy name ``NAME``."""
    topo = standard_topology(dc2=False)
    topo.outbound_name = NAME
    cluster: Cluster = cluster_factory(topo)
    return cluster


async def _started_named_cluster(cluster_factory: Any) -> Cluster:
    c = _named_cluster(cluster_factory)
    await _start(c)
    return c


async def _phone(c: Cluster, address: str, *, tcp: bool = False) -> tuple[CalledPhone, Any]:
    """A phone answering calls at ``address``, and its endpoint."""
    phone = CalledPhone()
    phone.ep = await c.endpoint(address, phone.handle, tcp=tcp)
    return phone, phone.ep


async def _replicated(c: Cluster, proxy: str, aor: str) -> Binding:
    store = c.proxies[proxy].store
    deadline = time.monotonic() + 10
    while not store.lookup(aor, time.time()):
        assert time.monotonic() < deadline, f"{aor} never reached {proxy}"
        await asyncio.sleep(0.02)
    return store.lookup(aor, time.time())[0]


async def _status_bindings(c: Cluster, proxy: str) -> list[dict[str, Any]]:
    p = c.proxies[proxy]
    port = await p.management.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/status/registrations") as r:
                data = await r.json()
    finally:
        await p.management.stop()
    return list(data["bindings"])


async def test_a_phone_called_after_registering_by_the_proxy_name_outlives_the_proxy(
    cluster_factory: Any,
) -> None:
    c = await _started_named_cluster(cluster_factory)
    topo = c.topo
    phone, ep = await _phone(c, "127.0.1.221")
    assert (await register(ep, c.proxy_dest("SPX_dc1_1"), "1001", route=BY_NAME)).status == 200
    aor = f"1001@{DOMAIN}"
    # the binding says so on the proxy that took it and on the one it replicated to
    assert c.proxies["SPX_dc1_1"].store.lookup(aor, time.time())[0].proxy_name == NAME
    replica = await _replicated(c, "SPX_dc1_2", aor)
    assert replica.origin == "SPX_dc1_1" and replica.proxy_name == NAME
    [shown] = [b for b in await _status_bindings(c, "SPX_dc1_2") if b["aor"] == aor]
    assert shown["proxy_name"] == NAME
    # a node calls the phone through the other proxy: it goes through the proxy
    # that took the registration, which record-routes the phone's side by the name
    node_side = await c.endpoint("127.0.1.111")
    inv = _invite(f"sip:1001@{DOMAIN}", node_side, "called-by-name@test")
    final = await node_side.request(inv, c.proxy_dest("SPX_dc1_2"))
    assert final.status == 200
    await node_side.send_ack(inv, final)
    [got] = phone.invites
    routes = [str(r) for r in got.headers.get_all("Record-Route")]
    _, host1, port1 = topo.proxies["SPX_dc1_1"]
    _, host2, port2 = topo.proxies["SPX_dc1_2"]
    assert routes[0] == f"<sip:{NAME};transport=udp;lr;sc-node=SIPS_dc1_1>", routes
    assert routes[1].startswith(f"<sip:{host1}:{port1};lr;sc-node=SIPS_dc1_1"), routes
    assert routes[2].startswith(f"<sip:{host2}:{port2};lr;sc-node=SIPS_dc1_1"), routes
    assert len(routes) == 3, routes
    # the proxy that delivered the call dies; the phone's BYE goes by the name,
    # which the data centre's DNS now answers with the other proxy
    await c.stop_proxy("SPX_dc1_1")
    replicator = c.proxies["SPX_dc1_2"].replicator
    assert replicator is not None
    deadline = time.monotonic() + 10
    while replicator.peer_alive("SPX_dc1_1"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert phone.dialog is not None
    bye = phone.dialog.create_request("BYE")
    assert str(bye.headers.get_all("Route")[0]).startswith(f"<sip:{NAME};")
    answer = await ep.request(bye, Destination("UDP", host2, port2))
    # the sc-node pin took it to the node that owns the call: that node answers
    # (this test's node is a responder that never saw the call: 481), not a
    # proxy's 408 / 503
    assert answer.status == 481, answer.status


async def test_a_call_through_the_registers_path_is_record_routed_by_the_name(
    cluster_factory: Any,
) -> None:
    """A node reaches a phone through the Path of its REGISTER (RFC 3327): the
    Request-URI is the contact, the To the AoR; the binding says how it registered."""
    c = await _started_named_cluster(cluster_factory)
    topo = c.topo
    _, host1, port1 = topo.proxies["SPX_dc1_1"]
    node_side = await c.endpoint("127.0.1.111")
    for user, route, address in (("1001", BY_NAME, "127.0.1.227"),
                                 ("1002", None, "127.0.1.228")):
        phone, ep = await _phone(c, address)
        assert (await register(ep, c.proxy_dest("SPX_dc1_1"), user, route=route)).status == 200
        [binding] = c.proxies["SPX_dc1_1"].store.lookup(f"{user}@{DOMAIN}", time.time())
        inv = _invite(binding.contact, node_side, f"path-{user}@test")
        inv.headers.set("To", f"<sip:{user}@{DOMAIN}>")
        inv.headers.add("Route", f"<sip:{host1}:{port1};lr>")
        final = await node_side.request(inv, c.proxy_dest("SPX_dc1_1"))
        assert final.status == 200
        [got] = phone.invites
        routes = [str(r) for r in got.headers.get_all("Record-Route")]
        if route is None:
            assert routes == [f"<sip:{host1}:{port1};lr;sc-node=SIPS_dc1_1>"], routes
        else:
            assert routes == [f"<sip:{NAME};transport=udp;lr;sc-node=SIPS_dc1_1>",
                              f"<sip:{host1}:{port1};lr;sc-node=SIPS_dc1_1>"], routes


async def test_phones_by_address_or_over_tcp_keep_the_address_form(
    cluster_factory: Any,
) -> None:
    c = await _started_named_cluster(cluster_factory)
    topo = c.topo
    by_address, ep = await _phone(c, "127.0.1.222")
    assert (await register(ep, c.proxy_dest("SPX_dc1_1"), "1001")).status == 200
    tcp, tcp_ep = await _phone(c, "127.0.1.223", tcp=True)
    assert (await register(tcp_ep, c.proxy_dest("SPX_dc1_1", "TCP"), "1002",
                           route=f"<sip:{NAME};transport=tcp;lr>")).status == 200
    store = c.proxies["SPX_dc1_1"].store
    assert store.lookup(f"1001@{DOMAIN}", time.time())[0].proxy_name is None
    b = store.lookup(f"1002@{DOMAIN}", time.time())[0]
    assert b.proxy_name is None and b.transport == "TCP"  # its flow is on this proxy
    shown = {x["aor"]: x for x in await _status_bindings(c, "SPX_dc1_1")}
    assert shown[f"1001@{DOMAIN}"]["proxy_name"] is None
    node_side = await c.endpoint("127.0.1.111")
    _, host1, _ = topo.proxies["SPX_dc1_1"]
    for user, phone in (("1001", by_address), ("1002", tcp)):
        final = await node_side.request(_invite(f"sip:{user}@{DOMAIN}", node_side,
                                                f"by-address-{user}@test"),
                                        c.proxy_dest("SPX_dc1_1"))
        assert final.status == 200
        [got] = phone.invites
        routes = [str(r) for r in got.headers.get_all("Record-Route")]
        assert routes and all(r.startswith(f"<sip:{host1}:") for r in routes), routes
        assert not any(NAME in r for r in routes), routes


async def test_bindings_replicate_with_a_proxy_of_the_previous_release(
    cluster_factory: Any,
) -> None:
    """The previous release's hello has no ``fields`` and its records twelve fields;
    it drops a link that brings a longer record."""
    c = _named_cluster(cluster_factory)
    topo = c.topo
    for name in c.topo.nodes:
        await c.start_node(name)
    # SPX_dc1_1 is of the previous release: a replication listener that answers
    # a hello with a snapshot of one binding in the twelve-field form
    _, old_host, _ = topo.proxies["SPX_dc1_1"]
    old_port = replication_port(c.cfg.applications["SPX_dc1_1"])
    now = time.time()
    old_binding = Binding(f"1002@{DOMAIN}", "sip:1002@127.0.1.224:5060", now + 300, now,
                          "SPX_dc1_1")
    hellos: list[dict[str, Any]] = []

    async def old_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while (hello := decoder.next_frame()) is None:
            data = await reader.read(65536)
            if not data:
                return
            decoder.feed(data)
        hellos.append(dict(hello))
        record = old_binding.to_wire(LEGACY_WIRE_FIELDS)
        writer.write(encode_frame({"t": "snap", "b": [record]}))
        writer.write(encode_frame({"t": "sync", "n": 1}))
        await writer.drain()
        await reader.read()  # until the subscriber goes
        writer.close()

    server = await asyncio.start_server(old_proxy, old_host, old_port)
    try:
        new = await c.start_proxy("SPX_dc1_2")
        await c.wait_nodes("SPX_dc1_2", set(c.topo.nodes))
        # the new proxy reads the old record, with no proxy name
        got = await _replicated(c, "SPX_dc1_2", f"1002@{DOMAIN}")
        assert got.contact == old_binding.contact and got.proxy_name is None
        assert hellos and hellos[0].get("fields") == WIRE_FIELDS
        # a phone registers by the name on the new proxy
        ep = await c.endpoint("127.0.1.225")
        assert (await register(ep, c.proxy_dest("SPX_dc1_2"), "1001", route=BY_NAME)
                ).status == 200
        assert new.store.lookup(f"1001@{DOMAIN}", time.time())[0].proxy_name == NAME
        # the old proxy subscribes (no ``fields``): twelve fields, snapshot and updates
        _, new_host, _ = topo.proxies["SPX_dc1_2"]
        assert new.replicator is not None
        old_reader, old_writer = await asyncio.open_connection(
            new_host, new.replicator.port, local_addr=(old_host, 0))
        old_writer.write(encode_frame({"t": "hello", "name": "SPX_dc1_1", "full": True}))
        await old_writer.drain()
        records: list[list[Any]] = []
        decoder = FrameDecoder()

        async def read_until(done: Any) -> None:
            while not done():
                data = await asyncio.wait_for(old_reader.read(65536), 10)
                assert data, "the new proxy closed the link"
                decoder.feed(data)
                for msg in decoder:
                    if msg.get("t") in ("snap", "upd"):
                        records.extend(msg["b"])

        def has(user: str) -> bool:
            return any(r[0] == f"{user}@{DOMAIN}" for r in records)

        await read_until(lambda: has("1001"))
        ep2 = await c.endpoint("127.0.1.226")
        assert (await register(ep2, c.proxy_dest("SPX_dc1_2"), "1002", route=BY_NAME)
                ).status == 200
        await read_until(lambda: any(r[0] == f"1002@{DOMAIN}" and r[4] == "SPX_dc1_2"
                                     for r in records))
        assert records and all(len(r) == LEGACY_WIRE_FIELDS for r in records), records
        old_writer.close()
        # a subscriber of this release gets the name
        cur_reader, cur_writer = await asyncio.open_connection(
            new_host, new.replicator.port, local_addr=(old_host, 0))
        cur_writer.write(encode_frame({"t": "hello", "name": "SPX_dc1_1", "full": True,
                                       "fields": WIRE_FIELDS}))
        await cur_writer.drain()
        decoder = FrameDecoder()
        current: list[list[Any]] = []
        while not any(m for m in current if m[0] == f"1001@{DOMAIN}"):
            data = await asyncio.wait_for(cur_reader.read(65536), 10)
            assert data
            decoder.feed(data)
            for msg in decoder:
                if msg.get("t") == "snap":
                    current.extend(msg["b"])
        [mine] = [r for r in current if r[0] == f"1001@{DOMAIN}"]
        assert len(mine) == WIRE_FIELDS and Binding.from_wire(mine).proxy_name == NAME
        cur_writer.close()
    finally:
        server.close()
