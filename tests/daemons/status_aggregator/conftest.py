"""Fixtures for status-aggregator tests: a cluster file with two mirrored
aggregators on 127.0.130.x, a private CA with certificates for every
application and for the operators' tools, the aggregators in-process, and
clients that record what they are told."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemons.cluster.config import load_cluster
from daemons.runtime import certs
from daemons.runtime.status_client import AggregatorAddress, StatusClient, aggregator_addresses
from daemons.status_aggregator.service import StatusAggregatorService
from protocols.status.messages import Role, StatusRecord

SA_HOSTS = {"SA_1": "127.0.130.1", "SA_2": "127.0.130.2"}
CLIENT_HOST = "127.0.130.9"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cluster_text(ports: dict[str, int], *, options: str = "") -> str:
    return f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1", "SIPS_2"]

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.130.11"
geo-location = "dc1"
sip-port = 5060
default-port = 7000

[applications.SIPS_2]
kind = "sip-server"
host = "127.0.130.12"
geo-location = "dc2"
sip-port = 5060
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.130.11"
sip-server = "SIPS_1"
tc-port = 7001

[applications.TC_2]
kind = "t-controller"
host = "127.0.130.12"
sip-server = "SIPS_2"
tc-port = 7001

[applications.SA_1]
kind = "status-aggregator"
host = "{SA_HOSTS['SA_1']}"
status-port = {ports['SA_1']}
http-port = {ports['SA_1_http']}

[applications.SA_1.options]
status-aggregators = ["SA_1", "SA_2"]
consumers = ["desk", "wallboard"]
publishers = ["ops"]
{options}

[applications.SA_2]
kind = "status-aggregator"
host = "{SA_HOSTS['SA_2']}"
status-port = {ports['SA_2']}
http-port = {ports['SA_2_http']}

[applications.SA_2.options]
status-aggregators = ["SA_1", "SA_2"]
consumers = ["desk", "wallboard"]
publishers = ["ops"]
{options}
"""


@dataclass
class Lab:
    """A cluster file, its CA and certificates, and aggregators started on demand."""

    root: Path
    ports: dict[str, int]
    options: str = ""
    services: dict[str, StatusAggregatorService] = field(default_factory=dict)
    clients: list[StatusClient] = field(default_factory=list)

    @property
    def config_file(self) -> Path:
        return self.root / "cluster.toml"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    def write(self, options: str = "") -> None:
        self.options = options
        self.config_file.write_text(cluster_text(self.ports, options=options))

    async def start(self, name: str) -> StatusAggregatorService:
        service = StatusAggregatorService(load_cluster(self.config_file), name)
        await service.start()
        await service.management.start(service.management_host, service.management_port)
        self.services[name] = service
        return service

    async def stop(self, name: str) -> None:
        service = self.services.pop(name)
        await service.stop()
        await service.management.stop()

    def addresses(self) -> list[AggregatorAddress]:
        return aggregator_addresses(load_cluster(self.config_file))

    def client(self, name: str, role: Role, *, on_records: Callable[[list[StatusRecord]],
               None] | None = None, cert_dir: Path | None = None) -> StatusClient:
        client = StatusClient(
            name=name, role=role, aggregators=self.addresses(),
            context=certs.client_context(cert_dir or self.certs, name),
            on_records=on_records, retry=0.2, local_address=CLIENT_HOST)
        client.start()
        self.clients.append(client)
        return client


@pytest.fixture
async def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lab]:
    monkeypatch.setenv("SIPCLUSTER_STATE_DIR", str(tmp_path / "state"))
    ports = {n: free_port(h) for n, h in SA_HOSTS.items()}
    ports.update({f"{n}_http": free_port(h) for n, h in SA_HOSTS.items()})
    lab = Lab(tmp_path, ports)
    lab.write()
    certs.init_ca(lab.certs)
    for name in ("SA_1", "SA_2", "TC_1", "TC_2", "desk", "ops", "SIPS_1"):
        certs.issue(lab.certs, name)
    yield lab
    for client in lab.clients:
        await client.stop()
    for name in list(lab.services):
        await lab.stop(name)


class Watcher:
    """Records every status a consumer is told, by user."""

    def __init__(self) -> None:
        self.seen: dict[str, list[StatusRecord]] = {}
        self.changed = asyncio.Event()

    def __call__(self, records: list[StatusRecord]) -> None:
        for record in records:
            self.seen.setdefault(record.user, []).append(record)
        self.changed.set()

    def last(self, user: str) -> StatusRecord | None:
        return self.seen.get(user, [None])[-1]  # type: ignore[list-item]

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)
