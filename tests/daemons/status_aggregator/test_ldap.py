"""The LDAP directory source against a real slapd: users are joined by their
mail attribute, unknown ones refused, a poll brings new ones; the polling
schedule (next-polling-time, polling-interval) with a fake clock."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemons.status_aggregator.directory import LdapDirectory, next_poll
from protocols.status.errors import ErrorCode
from protocols.status.messages import Role, StatusRecord
from tests.daemons.status_aggregator.conftest import Lab
from tests.daemons.status_aggregator.slapd import BASE, Slapd, slapd_binary


@pytest.fixture
async def slapd(tmp_path: Path) -> AsyncIterator[Slapd]:
    binary = slapd_binary()
    if binary is None:
        pytest.skip("slapd is not installed (Makefile DEB_TOOLS: make test installs it)")
    server = Slapd(tmp_path / "slapd")
    await server.start(binary)
    yield server
    await server.stop()


def test_polling_schedule() -> None:
    first = datetime.datetime(2026, 12, 6, 0, 0, tzinfo=datetime.UTC).timestamp()
    day = 86400.0
    assert next_poll(first - 10, first, day) == first          # not yet: that time
    assert next_poll(first, first, day) == first
    assert next_poll(first + 1, first, day) == first + day      # then every interval
    assert next_poll(first + 3 * day + 5, first, day) == first + 4 * day
    assert next_poll(1000.0, None, 60.0) == 1060.0


async def test_users_are_joined_by_their_ldap_mail(lab: Lab, slapd: Slapd) -> None:
    await asyncio.to_thread(slapd.add_user, "ann", "Ann Example", "ann@cluster.lab")
    lab.write(f'directory = "{slapd.url}"\nldap-base = "{BASE}"\npolling-interval = 3600')
    service = await lab.start("SA_1")
    directory = service.aggregator.directory
    assert isinstance(directory, LdapDirectory) and "ann@cluster.lab" in directory
    tc = lab.client("TC_1", Role.PUBLISHER)
    desk = lab.client("desk", Role.CONSUMER)
    await tc.wait_open()
    await desk.wait_open()
    tc.publish([StatusRecord(user="ann@cluster.lab", status="Available", server="SIPS_1"),
                StatusRecord(user="bob@cluster.lab", status="Available", server="SIPS_1")])
    for _ in range(100):
        if tc.refused:
            break
        await asyncio.sleep(0.05)
    assert tc.refused == {"bob@cluster.lab": ErrorCode.UNKNOWN_USER}
    found = await desk.search("ann example")
    assert found.entries[0]["email"] == "ann@cluster.lab"
    assert found.entries[0]["status"] == "Available"
    # bob is added to the directory; the next poll knows him
    await asyncio.to_thread(slapd.add_user, "bob", "Bob Builder", "Bob@Cluster.lab")
    assert await service.poll_directory()
    answer = await desk.query(["bob@cluster.lab"])
    assert answer.refused == {}
    # the server goes away: the entries read last stay
    await slapd.stop()
    assert not await service.poll_directory()
    assert "bob@cluster.lab" in directory
