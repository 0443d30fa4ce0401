"""HA pair (guide: "Configuring SIP Servers", hot standby): the backup answers
OPTIONS with 503 while its primary answers, 200 once the primary is silent for
``oos-force`` seconds (docs/node.md, "HA pairs"). Real sip-servers on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from daemons.cluster.config import load_cluster
from daemons.sip_server.service import SipServer

CLUSTER = """
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
siproxy-applications = ["SPX_1"]

[dns.SIPProxy_DN]
type = "VoIPService"
service-type = "sip-outbound-proxy"
contact = "sip:{proxy};transport=tcp"
oos-check = 1
oos-force = 1

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.0.1"
geo-location = "dc1"
backup = "SIPS_1_B"
sip-port = {primary}
default-port = 0

[applications.SIPS_1_B]
kind = "sip-server"
host = "127.0.0.1"
geo-location = "dc1"
sip-port = {backup}
default-port = 0

[applications.TC_1]
kind = "t-controller"
host = "127.0.0.1"
sip-server = "SIPS_1"
tc-port = 0

[applications.SPX_1]
kind = "sip-proxy"
host = "127.0.0.1"
geo-location = "dc1"
sip-port = {proxy_port}
"""


async def options_status(port: int) -> int:
    """One OPTIONS over UDP to 127.0.0.1:port; the status code of the answer."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        me = sock.getsockname()[1]
        msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKha{me};rport\r\n"
               f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\n"
               f"Call-ID: ha-{me}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n")
        await loop.sock_sendto(sock, msg.encode(), ("127.0.0.1", port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
    return int(data.split(b" ", 2)[1])


async def wait_status(port: int, wanted: int, timeout: float = 10.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    status = await options_status(port)
    while status != wanted and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        status = await options_status(port)
    return status


async def test_backup_stands_by_while_the_primary_answers(
        tmp_path: Path, free_port: Callable[..., int]) -> None:
    primary_port, backup_port, proxy_port = (free_port("127.0.0.1") for _ in range(3))
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER.format(primary=primary_port, backup=backup_port,
                                   proxy=f"127.0.0.1:{proxy_port}", proxy_port=proxy_port))
    cfg = load_cluster(path)
    primary = SipServer(cfg, "SIPS_1")
    backup = SipServer(cfg, "SIPS_1_B")
    assert backup.primary_name == "SIPS_1" and primary.primary_name is None
    await primary.start()
    await backup.start()
    try:
        assert await options_status(primary_port) == 200
        watch = backup.controller.ha_watch
        assert watch is not None
        for _ in range(50):  # the backup's first check of its primary is answered
            if all(h.answers for h in watch.monitor.nodes.values()):
                break
            await asyncio.sleep(0.1)
        assert [h.state.value for h in watch.monitor.nodes.values()] == ["in-service"]
        assert await options_status(backup_port) == 503  # standby: proxies skip it
        await primary.stop()
        # the primary is gone: after oos-force the backup takes the traffic
        assert await wait_status(backup_port, 200) == 200
        assert backup.controller.standby is False
    finally:
        await backup.stop()
