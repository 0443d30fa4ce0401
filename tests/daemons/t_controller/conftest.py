"""Fixtures for t-controller integration tests: a cluster file, a stand-in
sip-server default-port built from the shared T-Library listener, the
t-controller service in-process, and desktop clients that record every event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemons.cluster.config import load_cluster
from daemons.runtime.tlib_client import TLibClient
from daemons.runtime.tlib_server import TLibConnection, TLibServer
from daemons.t_controller.service import TControllerService
from protocols.tlib.events import RequestReceived
from tests.support.processes import START_TIMEOUT

TMap = dict[str, Any]


def cluster_text(node_port: int, sip_port: int, *, tserver: str = "",
                 owners: str = '["Cluster"]', tc_host: str = "127.0.0.1",
                 node_host: str = "127.0.0.1", smart_proxy: bool = True) -> str:
    """A one-node cluster: SIP phones 1001/1002, PSTN agent 2001, routing point 5000."""
    sp = "smart-proxy-port = 0\n" if smart_proxy else ""
    return f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[switch.tserver]
{tserver}

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
dn-owner-applications = {owners}
addp-timeout = 2
addp-remote-timeout = 3

[dns.5000]
type = "RoutingPoint"

[dns.1001]
type = "Extension"
contact = "*"
password = "lab-1001-secret"

[dns.1002]
type = "Extension"
contact = "*"
password = "lab-1002-secret"

[dns.2001]
type = "Extension"
contact = "sip:+15550102001@127.0.0.1:5999"

[applications.SIPS_1]
kind = "sip-server"
host = "{node_host}"
geo-location = "dc1"
sip-port = {sip_port}
default-port = {node_port}

[applications.TC_1]
kind = "t-controller"
host = "{tc_host}"
sip-server = "SIPS_1"
tc-port = 0
{sp}http-port = 0
"""


class FakeNode:
    """The default-port of a sip-server as the node link sees it (docs/node.md):
    DN service events for the registered DNs on link-up, call events on demand,
    one answer per forwarded request."""

    def __init__(self) -> None:
        self.server: TLibServer | None = None
        self.conns: list[TLibConnection] = []
        self.registered: dict[str, str] = {}
        self.requests: list[TMap] = []
        #: request name -> callable(conn, request) answering it; default EventACK
        self.answers: dict[str, Callable[[TLibConnection, RequestReceived], None]] = {}
        self.connected = asyncio.Event()

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.address is not None
        return self.server.address[1]

    async def start(self) -> None:
        self.server = TLibServer(self, application_name="SIPS_1", port_name="default-port")
        await self.server.listen("127.0.0.1", 0)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def on_registered(self, conn: TLibConnection) -> None:
        self.conns.append(conn)
        for dn, contact in self.registered.items():
            conn.send_event("EventDNBackInService", {
                "AttributeThisDN": dn,
                "AttributeExtensions": {"contact": contact, "expires": 120, "ownership": "sip"},
            })
        self.connected.set()

    def on_request(self, conn: TLibConnection, request: RequestReceived) -> None:
        self.requests.append(dict(request.message))
        handler = self.answers.get(request.name)
        if handler is not None:
            handler(conn, request)
        else:
            conn.answer(request, "EventACK",
                        {"AttributeThisDN": request.message["AttributeThisDN"]})

    def on_closed(self, conn: TLibConnection, reason: str) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        if not self.conns:
            self.connected.clear()

    def emit(self, name: str, **attributes: Any) -> None:
        for conn in self.conns:
            conn.send_event(name, attributes)

    def register(self, dn: str, contact: str = "sip:1001@127.0.0.1:5099") -> None:
        self.registered[dn] = contact
        self.emit("EventDNBackInService", AttributeThisDN=dn,
                  AttributeExtensions={"contact": contact, "expires": 120, "ownership": "sip"})

    def unregister(self, dn: str) -> None:
        self.registered.pop(dn, None)
        self.emit("EventDNOutOfService", AttributeThisDN=dn)

    def call(self, name: str, dn: str, conn_id: str, **attributes: Any) -> None:
        self.emit(name, AttributeThisDN=dn, AttributeConnID=conn_id, **attributes)


@dataclass
class Desktop:
    """A T-Library client that keeps every event it receives, in order."""

    client: TLibClient
    events: list[TMap] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(cls, address: tuple[str, int], app: str = "desktop",
                      client_type: str = "legacy") -> Desktop:
        client = await TLibClient.connect(address[0], address[1], app, client_type,
                                          addp_timeout=None)
        desktop = cls(client)
        client.add_listener(desktop._record)
        asyncio.get_running_loop().create_task(desktop._drain())
        return desktop

    def _record(self, event: TMap) -> None:
        self.events.append(event)
        self.changed.set()

    async def _drain(self) -> None:
        async for _ in self.client.events():
            pass

    async def request(self, name: str, **attributes: Any) -> TMap:
        async with asyncio.timeout(5):
            return await self.client.request(name, attributes)

    def names(self) -> list[str]:
        return [e["message"] for e in self.events]

    def of(self, name: str) -> list[TMap]:
        return [e for e in self.events if e["message"] == name]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 5.0,
                       **match: Any) -> TMap:
        """The ``count``-th event named ``name`` (matching ``match``)."""
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.events if e["message"] == name
                         and all(e.get(k) == v for k, v in match.items())]
                if len(found) >= count:
                    return found[count - 1]
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        await self.client.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds (state that has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


@dataclass
class Harness:
    node: FakeNode
    service: TControllerService
    task: asyncio.Task[None]
    opened: list[Desktop] = field(default_factory=list)

    @property
    def tc(self) -> tuple[str, int]:
        assert self.service.tc_address is not None
        return self.service.tc_address

    @property
    def sp(self) -> tuple[str, int]:
        assert self.service.smart_proxy_address is not None
        return self.service.smart_proxy_address

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.service.management.port}"

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        await wait_until(predicate, timeout)

    async def desktop(self, app: str = "desktop", client_type: str = "legacy") -> Desktop:
        desktop = await Desktop.connect(self.tc, app, client_type)
        self.opened.append(desktop)
        return desktop

    async def monitor(self, app: str = "statserver") -> Desktop:
        """A legacy client on the Smart Proxy port."""
        desktop = await Desktop.connect(self.sp, app, "legacy")
        self.opened.append(desktop)
        return desktop


async def start_service(config_path: Path, name: str = "TC_1",
                        **kwargs: Any) -> tuple[TControllerService, asyncio.Task[None]]:
    service = TControllerService(load_cluster(config_path), name, **kwargs)
    task = asyncio.create_task(service.serve())
    async with asyncio.timeout(START_TIMEOUT):
        while service.management.port is None:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    return service, task


async def stop_service(service: TControllerService, task: asyncio.Task[None]) -> None:
    service.stopping.set()
    async with asyncio.timeout(10):
        await task


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[Any]:
    """Factory: ``await make_harness(tserver="wrap-up-time = 1", registered={"1001": ...})``."""
    started: list[Harness] = []
    desktops: list[Desktop] = []

    async def make(*, tserver: str = "", owners: str = '["Cluster"]',
                   registered: dict[str, str] | None = None,
                   resync_grace: float | None = None) -> Harness:
        node = FakeNode()
        node.registered.update(registered or {})
        await node.start()
        path = tmp_path / f"cluster-{len(started)}.toml"
        path.write_text(cluster_text(node.port, 5060 + len(started), tserver=tserver,
                                     owners=owners))
        service, task = await start_service(path, resync_grace=resync_grace)
        harness = Harness(node, service, task, desktops)
        started.append(harness)
        assert service.node_link is not None and service.controller is not None
        async with asyncio.timeout(5):
            await service.node_link.wait_up()
            await node.connected.wait()
        # the link-up burst of EventDNBackInService has been taken in
        ownership = service.controller.ownership
        await wait_until(lambda: all(ownership.owner(dn) for dn in node.registered))
        return harness

    yield make

    for d in desktops:
        with contextlib.suppress(Exception):
            await d.close()
    for h in started:
        if not h.task.done():
            await stop_service(h.service, h.task)
        await h.node.close()


@pytest.fixture
def kit() -> Any:
    """The helpers of this file, for tests that start daemons themselves."""
    return SimpleNamespace(Desktop=Desktop, FakeNode=FakeNode, cluster_text=cluster_text,
                           start_service=start_service, stop_service=stop_service,
                           wait_until=wait_until)
