"""Mutual TLS on the status port: a foreign CA, no client certificate, an
expired certificate, an unknown name, the wrong role and plaintext are
refused, logged and counted; the aggregator keeps serving."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import aiohttp

from daemons.runtime import certs
from protocols.status.framing import encode
from protocols.status.messages import Hello, Role
from protocols.status.session import Closed, Opened, StatusSession
from tests.daemons.status_aggregator.conftest import CLIENT_HOST, SA_HOSTS, Lab


async def metric(lab: Lab, name: str, sample: str) -> float:
    service = lab.services[name]
    url = f"http://{service.management_host}:{service.management.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        text = await answer.text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def hello(lab: Lab, context: ssl.SSLContext, name: str, role: Role) -> str:
    """Connect to SA_1, say Hello; 'open' or why not."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection(
            SA_HOSTS["SA_1"], lab.ports["SA_1"], ssl=context, server_hostname="SA_1",
            local_addr=(CLIENT_HOST, 0))
    except (ssl.SSLError, OSError) as exc:
        return f"handshake: {exc}"
    session = StatusSession(client=True, now=loop.time())
    session.send_hello(Hello(role=role, application=name), loop.time())
    writer.write(session.data_to_send())
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                return "closed"
            session.receive_data(data, loop.time())
            while (event := session.next_event()) is not None:
                if isinstance(event, Opened):
                    return "open"
                if isinstance(event, Closed):
                    return event.reason
    except (ssl.SSLError, ConnectionError) as exc:
        return f"tls: {exc}"
    finally:
        writer.close()


async def test_application_certificate_in_its_role_is_accepted(lab: Lab) -> None:
    await lab.start("SA_1")
    assert await hello(lab, certs.client_context(lab.certs, "TC_1"), "TC_1",
                       Role.PUBLISHER) == "open"
    assert await hello(lab, certs.client_context(lab.certs, "desk"), "desk",
                       Role.CONSUMER) == "open"


async def test_foreign_ca_is_refused(lab: Lab, tmp_path: Path) -> None:
    await lab.start("SA_1")
    foreign = tmp_path / "foreign"
    certs.init_ca(foreign)
    certs.issue(foreign, "TC_1")
    context = certs.client_context(foreign, "TC_1")
    context.load_verify_locations(lab.certs / "ca.pem")  # it trusts us; we do not trust it
    assert await hello(lab, context, "TC_1", Role.PUBLISHER) != "open"
    assert await metric(lab, "SA_1", 'sipcluster_status_tls_refused_total{reason="unknown_ca"}') \
        + await metric(lab, "SA_1", 'sipcluster_status_tls_refused_total{reason='
                                    '"certificate_verify_failed"}') == 1


async def test_no_client_certificate_is_refused(lab: Lab) -> None:
    await lab.start("SA_1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(lab.certs / "ca.pem")
    assert await hello(lab, context, "desk", Role.CONSUMER) != "open"
    assert await metric(lab, "SA_1",
                        'sipcluster_status_tls_refused_total{reason="no_certificate"}') == 1


async def test_expired_certificate_is_refused(lab: Lab) -> None:
    await lab.start("SA_1")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    certs.issue(lab.certs, "TC_2", days=1, not_before=long_ago)
    assert await hello(lab, certs.client_context(lab.certs, "TC_2"), "TC_2",
                       Role.PUBLISHER) != "open"
    assert await metric(lab, "SA_1",
                        'sipcluster_status_tls_refused_total{reason="certificate_expired"}') == 1


async def test_unknown_name_and_wrong_role_are_refused(lab: Lab) -> None:
    await lab.start("SA_1")
    certs.issue(lab.certs, "stranger")
    assert "not an application" in await hello(
        lab, certs.client_context(lab.certs, "stranger"), "stranger", Role.CONSUMER)
    assert "role publisher" in await hello(
        lab, certs.client_context(lab.certs, "desk"), "desk", Role.PUBLISHER)
    assert "role mirror" in await hello(
        lab, certs.client_context(lab.certs, "SIPS_1"), "SIPS_1", Role.MIRROR)
    # a Hello naming another application than the certificate
    assert "the certificate" in await hello(
        lab, certs.client_context(lab.certs, "desk"), "TC_1", Role.CONSUMER)
    assert await metric(lab, "SA_1",
                        'sipcluster_status_refused_total{reason="role_not_allowed"}') == 4
    # still serving
    assert await hello(lab, certs.client_context(lab.certs, "TC_1"), "TC_1",
                       Role.PUBLISHER) == "open"


async def test_plaintext_is_refused(lab: Lab) -> None:
    await lab.start("SA_1")
    reader, writer = await asyncio.open_connection(SA_HOSTS["SA_1"], lab.ports["SA_1"],
                                                   local_addr=(CLIENT_HOST, 0))
    writer.write(encode(Hello(role=Role.CONSUMER, application="desk").to_wire()))
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert b"Welcome" not in data
    assert await metric(lab, "SA_1", 'sipcluster_status_tls_refused_total{reason="not_tls"}') == 1
