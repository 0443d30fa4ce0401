"""Agent login passwords (``[agent-logins.ID] password``): RequestAgentLogin
must carry the configured AttributePassword; a wrong or missing one gets
EventError 56 (Invalid password), a log line and a counter, the agent stays
logged out, and the desktop is served on. Agents without a configured
password log in without one."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from protocols.tlib.errors import ErrorCode

pytestmark = pytest.mark.timeout(60)

LOGINS = """
[agent-logins.a1001]
password = "Secret-1001"

[agent-logins.a1002]
"""


async def test_agent_login_checks_the_configured_password(tmp_path: Path, free_port: Any,
                                                          kit: Any) -> None:
    node = kit.FakeNode()
    node.registered.update({"1001": "sip:1001@127.0.0.1:5099",
                            "1002": "sip:1002@127.0.0.1:5098"})
    await node.start()
    path = tmp_path / "cluster.toml"
    path.write_text(kit.cluster_text(node.port, free_port("127.0.0.1")) + LOGINS)
    service, task = await kit.start_service(path)
    try:
        assert service.node_link is not None and service.controller is not None
        await service.node_link.wait_up()
        ownership = service.controller.ownership
        await kit.wait_until(lambda: ownership.owner("1001") and ownership.owner("1002"))
        desk = await kit.Desktop.connect(service.tc_address, "wwe")
        for dn in ("1001", "1002"):
            await desk.request("RequestRegisterAddress", AttributeThisDN=dn)
        for attrs in ({}, {"AttributePassword": "secret-1001"}):  # missing; wrong case
            refused = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                                         AttributeAgentID="a1001", **attrs)
            assert refused["message"] == "EventError", refused
            assert refused["AttributeErrorCode"] == ErrorCode.INVALID_PASSWORD
        assert service.controller.agents.agent("1001") is None
        login = await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                                   AttributeAgentID="a1001", AttributePassword="Secret-1001")
        assert login["message"] == "EventAgentLogin", login
        # no password configured for a1002: it logs in without one
        other = await desk.request("RequestAgentLogin", AttributeThisDN="1002",
                                   AttributeAgentID="a1002")
        assert other["message"] == "EventAgentLogin", other
        port = service.management.port
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
            .read().decode())
        assert 'sipcluster_tlib_errors_total{code="56",port="tc-port"} 2.0' in metrics
        await desk.close()
    finally:
        await kit.stop_service(service, task)
        await node.close()


def test_an_empty_password_is_refused_at_load(tmp_path: Path, kit: Any) -> None:
    from daemons.cluster.config import load_cluster
    from daemons.runtime.config import ConfigError

    path = tmp_path / "cluster.toml"
    path.write_text(kit.cluster_text(7000, 5070) + '[agent-logins.a9]\npassword = ""\n')
    with pytest.raises(ConfigError, match=r"agent-logins\.a9\.password"):
        load_cluster(path)
