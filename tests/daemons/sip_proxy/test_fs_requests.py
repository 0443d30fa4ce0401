"""The feature-server's requests through the sip-proxy (docs/sip-proxy.md): an MWI
SUBSCRIBE is record-routed with the phone's flow, and the feature-server's
in-dialog requests (its NOTIFYs) go to the phone -- over the connection the
phone opened, or to its Contact -- never to a node; the phone's refresh goes
back to the feature-server. A proxy and a node (``sipcluster sip responder``)
in the test's loop on 127.0.251.x; the feature-server is our SIP endpoint
acting as a notifier (RFC 6665 §4.2), so only the proxy's routing is tested.
"""

from __future__ import annotations

import asyncio
from typing import Any

from daemons.runtime.sip_endpoint import IncomingRequest, SipEndpoint
from protocols.sip.dialog import Dialog
from protocols.sip.message import Request, Response
from tests.daemons.sip_proxy.conftest import (  # type: ignore[import-not-found]
    DOMAIN,
    Cluster,
    Topology,
    pair_port,
)

PROXY, NODE, FS = "127.0.251.21", "127.0.251.11", "127.0.251.31"


class Notifier:
    """The feature-server's part: 200 with the Record-Route copied (§12.1.1), then
    NOTIFYs along the dialog's route set; refreshes kept."""

    def __init__(self) -> None:
        self.endpoint = SipEndpoint(self.handle)
        self.dialog: Dialog | None = None
        self.refreshes: list[Request] = []
        self.subscribed = asyncio.Event()

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        request = incoming.request
        if request.to.tag:
            self.refreshes.append(request)
            return incoming.response(200, headers=[("Expires", "0")])
        local = incoming.flow.local
        response = incoming.response(200, headers=[
            *[("Record-Route", v) for v in request.headers.get_lines("Record-Route")],
            ("Expires", "60"), ("Contact", f"<sip:{request.ruri.user}@{local[0]}:{local[1]}>")])
        self.dialog = Dialog.create_uas(request, response, transport="UDP")
        self.subscribed.set()
        return response

    async def notify(self) -> Response:
        assert self.dialog is not None
        req = self.dialog.create_request("NOTIFY", headers=[
            ("Event", "message-summary"), ("Subscription-State", "active;expires=60"),
            ("Content-Type", "application/simple-message-summary")],
            body=b"Messages-Waiting: yes\r\n")
        return await self.endpoint.request(req)


class Subscriber:
    """A phone: NOTIFYs kept with the transport and peer they came from."""

    def __init__(self) -> None:
        self.notifies: list[tuple[str, tuple[str, int]]] = []

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        if incoming.method == "NOTIFY":
            self.notifies.append((incoming.flow.transport, incoming.flow.remote))
            return incoming.response(200)
        return incoming.response(405)


def subscribe(phone: SipEndpoint, user: str, transport: str) -> Request:
    local = phone.local_address("UDP")
    assert local is not None
    tp = "" if transport == "UDP" else f";transport={transport.lower()}"
    req = Request("SUBSCRIBE", f"sip:{user}@{DOMAIN}")
    for name, value in (("From", f"<sip:{user}@{DOMAIN}>;tag=s{user}"),
                        ("To", f"<sip:{user}@{DOMAIN}>"), ("Call-ID", f"mwi-{transport}@test"),
                        ("CSeq", "1 SUBSCRIBE"), ("Event", "message-summary"),
                        ("Expires", "60"), ("Contact", f"<sip:{user}@{local[0]}:{local[1]}{tp}>")):
        req.headers.add(name, value)
    return req


async def _cluster(cluster_factory: Any) -> tuple[Cluster, Notifier]:
    topo = Topology()
    topo.proxies["SPX_1"] = ("dc1", PROXY, pair_port(PROXY))
    topo.nodes["SIPS_1"] = ("dc1", NODE, pair_port(NODE))
    topo.feature_server = (FS, pair_port(FS))
    c: Cluster = cluster_factory(topo)
    await c.start_node("SIPS_1")
    fs = Notifier()
    await fs.endpoint.listen("UDP", FS, topo.feature_server[1])
    c.endpoints.append(fs.endpoint)
    await c.start_proxy("SPX_1")
    await c.wait_nodes("SPX_1", {"SIPS_1"})
    return c, fs


async def test_notify_goes_over_the_phones_tcp_flow_not_to_a_node(
        cluster_factory: Any) -> None:
    c, fs = await _cluster(cluster_factory)
    sub = Subscriber()
    phone = await c.endpoint("127.0.251.41", sub.handle)   # UDP listener only
    dest = c.proxy_dest("SPX_1", "TCP")
    req = subscribe(phone, "1001", "TCP")
    final = await phone.request(req, dest)
    assert final.status == 200
    assert "ft=tcp-127.0.251.41-" in (final.headers.get("Record-Route") or ""), final
    assert (await fs.notify()).status == 200
    assert sub.notifies == [("TCP", (PROXY, c.topo.proxies["SPX_1"][2]))]
    core = c.proxies["SPX_1"].core
    assert core is not None
    assert core.requests.labels("NOTIFY", "flow").value == 1
    assert core.requests.labels("NOTIFY", "node").value == 0
    # the phone's refresh follows the route set back to the feature-server
    dialog = Dialog.create_uac(req, final)
    refresh = dialog.create_request("SUBSCRIBE", headers=[("Event", "message-summary"),
                                                          ("Expires", "0")])
    assert (await phone.request(refresh)).status == 200
    assert len(fs.refreshes) == 1


async def test_notify_to_a_udp_phone_goes_to_its_contact(cluster_factory: Any) -> None:
    c, fs = await _cluster(cluster_factory)
    sub = Subscriber()
    phone = await c.endpoint("127.0.251.42", sub.handle)
    final = await phone.request(subscribe(phone, "1002", "UDP"), c.proxy_dest("SPX_1"))
    assert final.status == 200
    assert (await fs.notify()).status == 200
    assert [t for t, _ in sub.notifies] == ["UDP"]
    core = c.proxies["SPX_1"].core
    assert core is not None
    assert core.requests.labels("NOTIFY", "ruri").value == 1
    assert core.requests.labels("NOTIFY", "node").value == 0
