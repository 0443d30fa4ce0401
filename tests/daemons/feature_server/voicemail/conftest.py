"""Fixtures for voicemail tests: a cluster file with one feature-server on
127.0.110.1 and phones 1001-1003, the VoicemailService in-process, and
phones (tests/daemons/feature_server/voicemail/phone.py) on 127.0.110.x."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemons.cluster.config import load_cluster
from daemons.feature_server.voicemail import VoicemailService
from daemons.runtime.management import Metrics
from daemons.runtime.sip_endpoint import Destination
from tests.daemons.feature_server.voicemail.phone import Phone

FS_HOST = "127.0.110.1"


def free_port(host: str) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def cluster_text(sip_port: int, http_port: int, *, options: str = "") -> str:
    return f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]

[dns.1001]
type = "Extension"
contact = "*"
password = "lab-1001-secret"

[dns.1002]
type = "Extension"
contact = "*"
password = "lab-1002-secret"

[dns.1003]
type = "Extension"
contact = "*"
password = "lab-1003-secret"

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.110.11"
geo-location = "dc1"
sip-port = 5060
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.110.11"
sip-server = "SIPS_1"
tc-port = 7001

[applications.FS_1]
kind = "feature-server"
host = "{FS_HOST}"
geo-location = "dc1"
http-port = {http_port}
sip-port = {sip_port}

[applications.FS_1.options]
default-pin = "1234"
rtp-ports = "21000-21199"
{options}
"""


class Harness:
    """What a test drives: the service, its address, a way to make phones."""

    def __init__(self, service: VoicemailService, destination: Destination,
                 phones: list[Phone]) -> None:
        self.service = service
        self.destination = destination
        self._phones = phones
        self._next = 20

    async def phone(self, user: str) -> Phone:
        self._next += 1
        phone = await Phone(f"127.0.110.{self._next}", user,
                            rtp_ports=f"{31000 + self._next * 100}-{31099 + self._next * 100}"
                            ).start()
        phone.password = f"lab-{user}-secret"  # the DN's, as in cluster_text
        self._phones.append(phone)
        return phone

    def uri(self, user: str, params: str = "") -> str:
        return f"sip:{user}@{self.destination.host}:{self.destination.port}{params}"


Factory = Callable[..., Any]


@pytest.fixture
async def make_voicemail(tmp_path: Path) -> AsyncIterator[Factory]:
    """``await make_voicemail(store_url=None, options="", state_dir=None)`` -> Harness."""
    services: list[VoicemailService] = []
    phones: list[Phone] = []
    ports: dict[str, int] = {}

    async def make(store_url: str | None = None, options: str = "",
                   state_dir: Path | None = None, metrics: Metrics | None = None) -> Harness:
        if not ports:
            ports["sip"] = free_port(FS_HOST)
            ports["http"] = free_port(FS_HOST)
        path = tmp_path / "cluster.toml"
        path.write_text(cluster_text(ports["sip"], ports["http"], options=options))
        cluster = load_cluster(str(path))
        state = state_dir or tmp_path / "state"
        service = VoicemailService(
            cluster=cluster, app=cluster.application("FS_1"),
            store_url=store_url or f"sqlite:///{tmp_path / 'vm.db'}", state_dir=state,
            metrics=metrics or Metrics("sipcluster"))
        await service.start()
        services.append(service)
        return Harness(service, Destination("UDP", FS_HOST, ports["sip"]), phones)

    yield make
    for phone in phones:
        await phone.close()
    for service in services:
        if service._started:
            await service.stop()
