"""A loopback SIP cluster for the sip-proxy tests: proxies and nodes run in the
test's event loop (nodes are ``sipcluster sip responder`` instances), phones
and node-side callers are :class:`SipEndpoint` objects."""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.cluster.config import ClusterConfig, load_cluster
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.sip_proxy.service import SipProxy
from daemons.tools.sip_responder import SipResponder, add_parser
from protocols.sip.digest import DigestClient
from protocols.sip.message import Request, Response

DOMAIN = "cluster.lab"
PASSWORDS = {"1001": "lab-1001-secret", "1002": "lab-1002-secret"}


def pair_port(host: str) -> int:
    """A port free for UDP+TCP on ``host`` whose +1000 (replication) is free for TCP."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port > 64000:
            continue
        ok = True
        for p, kind in ((port, socket.SOCK_STREAM), (port + 1000, socket.SOCK_STREAM)):
            with socket.socket(socket.AF_INET, kind) as s2:
                try:
                    s2.bind((host, p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port pair")


@dataclass
class Topology:
    """Names and addresses of the test cluster."""

    proxies: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # geo, host, port
    nodes: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    feature_server: tuple[str, int] | None = None
    #: the SIP Outbound Proxy DN's contact host: the data centre's proxy name
    outbound_name: str | None = None

    def toml(self, backups: dict[str, tuple[str, int]] | None = None) -> str:
        backups = backups or {}
        lines = ['[switch]', 'name = "SIP_Cluster"', f'domain = "{DOMAIN}"', "",
                 "[dns.SIP_Cluster_DN]", 'type = "VoIPService"',
                 'service-type = "sip-cluster-nodes"',
                 "applications = [" + ", ".join(f'"{n}"' for n in self.nodes) + "]",
                 "siproxy-applications = [" + ", ".join(f'"{n}"' for n in self.proxies) + "]",
                 ""]
        if self.outbound_name:
            lines += ["[dns.SIPProxy_DN]", 'type = "VoIPService"',
                      'service-type = "sip-outbound-proxy"',
                      f'contact = "sip:{self.outbound_name}"', ""]
        for dn, pw in PASSWORDS.items():
            lines += [f"[dns.{dn}]", 'type = "Extension"', 'contact = "*"',
                      f'password = "{pw}"', ""]
        tc_port = 40000
        for name, (geo, host, port) in self.nodes.items():
            lines += [f"[applications.{name}]", 'kind = "sip-server"', f'host = "{host}"',
                      f'geo-location = "{geo}"', f"sip-port = {port}", "default-port = 0"]
            if name in backups:
                lines.append(f'backup = "{name}_B"')
            lines.append("")
            if name in backups:
                bhost, bport = backups[name]
                lines += [f"[applications.{name}_B]", 'kind = "sip-server"', f'host = "{bhost}"',
                          f'geo-location = "{geo}"', f"sip-port = {bport}",
                          "default-port = 0", ""]
            tc_port += 1
            lines += [f"[applications.TC_{name}]", 'kind = "t-controller"', f'host = "{host}"',
                      f'sip-server = "{name}"', "tc-port = 0", ""]
        for name, (geo, host, port) in self.proxies.items():
            lines += [f"[applications.{name}]", 'kind = "sip-proxy"', f'host = "{host}"',
                      f'geo-location = "{geo}"', f"sip-port = {port}", "http-port = 0", "",
                      f"[applications.{name}.sipproxy]", "oos-check = 1", "oos-force = 1",
                      "registrar-default-timeout = 140", ""]
        if self.feature_server:
            host, port = self.feature_server
            lines += ["[applications.FS_dc1]", 'kind = "feature-server"', f'host = "{host}"',
                      'geo-location = "dc1"', "http-port = 0", f"sip-port = {port}", ""]
        return "\n".join(lines) + "\n"


def proxy_args(name: str, config: Path, **over: Any) -> argparse.Namespace:
    values: dict[str, Any] = dict(
        config=str(config), name=name, replication_port=None, feature_server_address=None,
        http_port=0, oos_check=0.3, oos_force=0.6, rate_limit=0.0, rate_burst=0.0,
        auth_slow_after=3, auth_block_after=6, auth_block_seconds=30.0, sync_timeout=20.0,
        replication_batch_ms=5.0,
        log_level="warning", log_format="json")
    values.update(over)
    return argparse.Namespace(**values)


def responder_args(name: str, host: str, port: int, *, users: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub)
    argv = ["responder", "--listen", f"{host}:{port}", "--tcp", "--realm", DOMAIN,
            "--name", name, "--max-auth-failures", "0"]
    if users:
        for user, pw in PASSWORDS.items():
            argv += ["--user", f"{user}:{pw}"]
    return parser.parse_args(argv)


class Cluster:
    """Running daemons of one test, stopped at the end."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.config = tmp / "cluster.toml"
        self.config.write_text(topo.toml())
        self.cfg: ClusterConfig = load_cluster(self.config)
        self.proxies: dict[str, SipProxy] = {}
        self.nodes: dict[str, SipResponder] = {}
        self.endpoints: list[SipEndpoint] = []

    async def start_node(self, name: str, *, users: bool = True) -> SipResponder:
        _, host, port = self.topo.nodes[name]
        node = SipResponder(responder_args(name, host, port, users=users))
        await node.start()
        self.nodes[name] = node
        return node

    async def stop_node(self, name: str) -> None:
        node = self.nodes.pop(name)
        await node.stop()

    async def start_proxy(self, name: str, *, wait_synced: bool = True,
                          **over: Any) -> SipProxy:
        proxy = SipProxy(proxy_args(name, self.config, **over), self.cfg)
        await proxy.start()
        self.proxies[name] = proxy
        if wait_synced:
            assert proxy.replicator is not None
            await asyncio.wait_for(proxy.replicator.wait_synced(), 15)
        return proxy

    async def stop_proxy(self, name: str) -> None:
        proxy = self.proxies.pop(name)
        await proxy.stop()

    async def wait_nodes(self, proxy: str, usable: set[str], timeout: float = 8.0) -> None:
        p = self.proxies[proxy]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while {n.name for n in p.nodes if p.monitor.usable(n.name)} != usable:
            if loop.time() > deadline:
                raise TimeoutError(f"{proxy}: usable nodes never became {sorted(usable)}")
            await asyncio.sleep(0.05)  # polled: the monitor has no change event

    async def endpoint(self, host: str,
                       handler: Callable[[IncomingRequest], Awaitable[Any]] | None = None,
                       tcp: bool = False) -> SipEndpoint:
        ep = SipEndpoint(handler)
        if tcp:
            await ep.listen_pair(host)
        else:
            await ep.listen("UDP", host, 0)
        self.endpoints.append(ep)
        return ep

    def proxy_dest(self, name: str, transport: str = "UDP") -> Destination:
        _, host, port = self.topo.proxies[name]
        return Destination(transport, host, port)

    async def close(self) -> None:
        for ep in self.endpoints:
            await ep.close()
        for name in list(self.proxies):
            await self.stop_proxy(name)
        for name in list(self.nodes):
            await self.stop_node(name)


def make_register(phone: SipEndpoint, user: str, *, transport: str = "UDP",
                  expires: int = 300, call_id: str | None = None,
                  route: str | None = None) -> Request:
    local = phone.local_address(transport)
    assert local is not None
    tp = "" if transport == "UDP" else f";transport={transport.lower()}"
    req = Request("REGISTER", f"sip:{DOMAIN}")
    h = req.headers
    h.add("From", f"<sip:{user}@{DOMAIN}>;tag=r{user}")
    h.add("To", f"<sip:{user}@{DOMAIN}>")
    h.add("Call-ID", call_id or f"reg-{user}-{local[1]}@test")
    h.add("CSeq", "1 REGISTER")
    h.add("Contact", f"<sip:{user}@{local[0]}:{local[1]}{tp}>")
    h.add("Expires", str(expires))
    if route is not None:
        h.add("Route", route)  # the phone's outbound proxy (RFC 3261 §8.1.2)
    return req


async def register(phone: SipEndpoint, proxy: Destination, user: str,
                   password: str | None = None, *, expires: int = 300,
                   route: str | None = None) -> Response:
    """REGISTER with digest through ``proxy`` (RFC 3261 §10.2, §22); ``route``: a
    Route header naming the outbound proxy (else none: the proxy by address)."""
    req = make_register(phone, user, transport=proxy.transport, expires=expires, route=route)
    resp = await phone.request(req, proxy)
    if resp.status != 401:
        return resp
    client = DigestClient(user, password=password if password is not None else PASSWORDS[user])
    again = make_register(phone, user, transport=proxy.transport, expires=expires,
                          call_id=req.call_id, route=route)
    again.headers.set("CSeq", "2 REGISTER")
    again.headers.add("Authorization", client.authorize(
        resp.headers.get_all("WWW-Authenticate"), method="REGISTER", uri=again.uri))
    return await phone.request(again, proxy)


@pytest.fixture
async def cluster_factory(tmp_path: Path) -> AsyncIterator[Callable[[Topology], Cluster]]:
    made: list[Cluster] = []

    def make(topo: Topology) -> Cluster:
        c = Cluster(topo, tmp_path)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def standard_topology(*, dc2: bool = True, fs: bool = False) -> Topology:
    topo = Topology()
    for name, host in (("SPX_dc1_1", "127.0.1.121"), ("SPX_dc1_2", "127.0.1.122")):
        topo.proxies[name] = ("dc1", host, pair_port(host))
    for name, host in (("SIPS_dc1_1", "127.0.1.111"), ("SIPS_dc1_2", "127.0.1.112")):
        topo.nodes[name] = ("dc1", host, pair_port(host))
    if dc2:
        topo.proxies["SPX_dc2_1"] = ("dc2", "127.0.2.121", pair_port("127.0.2.121"))
        topo.nodes["SIPS_dc2_1"] = ("dc2", "127.0.2.111", pair_port("127.0.2.111"))
    if fs:
        topo.feature_server = ("127.0.1.131", pair_port("127.0.1.131"))
    return topo
