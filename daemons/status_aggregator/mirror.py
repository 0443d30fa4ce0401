"""Mirror links between the aggregators of one group (``status-aggregators``;
guide: "multiple Status Aggregator servers to provide mirroring and fault
tolerance").

Each pair of aggregators shares one link, dialled by the one listed first,
over mutual TLS (the other end's certificate must name the aggregator
dialled). When a link opens, each side sends its whole table
(``MirrorSync``: raw records and publishers) and takes what is newer, so two
aggregators converge after a partition; then every record accepted from a
publisher is passed on (``MirrorUpdate``), and keep-alives name the
publishers connected to the sender, so a mirror does not time out a
publisher that is alive on the other side.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from daemons.cluster.config import ClusterConfig
from daemons.runtime.certs import peer_name
from daemons.runtime.service import cancel_and_wait
from daemons.status_aggregator.aggregator import Aggregator
from protocols.status.messages import Hello, Role

CONNECT_TIMEOUT = 5.0


class MirrorDialer:
    """Keeps the links this aggregator dials (to the peers listed after it)."""

    def __init__(self, aggregator: Aggregator, config: ClusterConfig,
                 context: ssl.SSLContext, log: Any, *, retry: float = 1.0) -> None:
        self.aggregator = aggregator
        group = aggregator.options.status_aggregators
        mine = group.index(aggregator.name)
        self.peers = [config.applications[n] for n in group[mine + 1:]]
        self.context = context
        self.log = log
        self.retry = retry
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep(peer.name, peer.host,
                                                   peer.ports["status-port"]))
                       for peer in self.peers]

    async def stop(self) -> None:
        # each is a reconnection loop, which may swallow one cancellation
        await cancel_and_wait(*self._tasks)

    async def _keep(self, name: str, host: str, port: int) -> None:
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    host, port, ssl=self.context, server_hostname=name,
                    local_addr=(self.aggregator.config.applications[self.aggregator.name].host, 0),
                    ssl_handshake_timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT + 1)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                self.log.debug("mirror_unreachable", mirror=name, error=str(exc)[:200])
                await asyncio.sleep(self.retry)
                continue
            got = peer_name(writer.get_extra_info("ssl_object"))
            address = f"{host}:{port}"
            if got != name:
                self.log.warning("mirror_wrong_name", mirror=name, certificate=got)
                writer.close()
                await asyncio.sleep(self.retry)
                continue
            await self.aggregator.serve(
                reader, writer, peer=address, name=name,
                hello=Hello(role=Role.MIRROR, application=self.aggregator.name))
            self.log.warning("mirror_link_lost", mirror=name)
            await asyncio.sleep(self.retry)
