"""``sipcluster rtm-server --config F --name RTM1``: the hub of a multi-site
collective (docs/rtm-server.md; guide: "Multi-Site RTM Client/Server
Components").

Listeners, from the application's entry in the cluster file: ``rtm-port``
(sites; TLS when ``tls-cert``/``tls-key`` are set) and ``http-port``
(``/healthz``, ``/metrics``, ``/status/sites``).

Fail-over: the hub serves only while it holds its store (the SQLite file's
lock, or PostgreSQL's advisory lock for a pair of hubs sharing one database).
A hub that cannot get it is the standby: it does not listen on ``rtm-port``
and tries again every ``takeover-poll`` seconds; a hub that loses its store
closes every session and becomes the standby again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any, cast

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.rtm_server.hub import Hub, HubMetrics, Link
from daemons.rtm_server.options import read_options
from daemons.rtm_server.store import Store, StoreError, open_store
from daemons.runtime.driver import StreamDriver
from daemons.runtime.service import Service, add_daemon_arguments, cancel_and_wait, run_daemon
from protocols.rtm.session import HubSession

__all__ = ["HubProtocol", "RtmServerService", "add_parser", "run"]


class HubProtocol(asyncio.Protocol):
    """One site connection: bytes in and out of its :class:`HubSession`."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = asyncio.get_running_loop()
        self.link: Link | None = None
        self.driver: StreamDriver | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        options = self.hub.options
        session = HubSession(hub=self.hub.name, passwords=options.sites.get,
                             now=self.loop.time(), keepalive=options.keepalive,
                             window=options.window, max_frame_size=options.max_frame_size)
        peer = transport.get_extra_info("peername") or ("?", 0)
        driver = StreamDriver(self.loop, session, cast(asyncio.WriteTransport, transport),
                              on_timer=self._after, on_closed=self._closed)
        self.driver = driver
        self.link = Link(session, f"{peer[0]}:{peer[1]}", driver.flush)
        driver.flush()

    def _after(self, now: float) -> None:
        if self.link is not None:
            self.hub.handle(self.link)

    def _closed(self) -> None:
        if self.link is not None:
            self.link.session.connection_lost()
            self.hub.handle(self.link)

    def data_received(self, data: bytes) -> None:
        link, driver = self.link, self.driver
        assert link is not None and driver is not None
        link.session.receive_data(data, self.loop.time())
        self.hub.handle(link)
        driver.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None and self.driver is not None:
            self.link.session.connection_lost()
            self.hub.handle(self.link)
            self.driver.close()


class RtmServerService(Service):
    """One rtm-server process: active hub or standby."""

    kind = "rtm-server"

    def __init__(self, config: ClusterConfig, name: str) -> None:
        super().__init__(name)
        self.config = config
        self.app = config.application(name, AppKind.RTM_SERVER)
        self.options = read_options(config, self.app)
        self.ssl = self.options.ssl_context()
        self.management_host = self.app.host
        self.management_port = self.app.port("http-port") or 0
        self.hub_metrics = HubMetrics(self.metrics, self.options.hub.sites)
        self.role = "starting"
        self.hub: Hub | None = None
        self.address: tuple[str, int] | None = None
        self.takeovers = self.metrics.counter("rtm_takeovers",
                                              "Times this hub became the active one")
        self.metrics.gauge("rtm_active", "1 while this hub is the active one").set_function(
            lambda: 1 if self.role == "active" else 0)
        self._task: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self.management.add_health_check("hub", self._health)
        self.management.add_status_page("/status/sites", self._status)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self._deactivate()

    async def _run(self) -> None:
        store: Store | None = None
        while True:
            try:
                if store is None:
                    store = open_store(self.options.store, synchronous=self.options.store_sync)
                    await store.open()
                if not await store.acquire():
                    if self.role != "standby":
                        self.role = "standby"
                        self.log.info("rtm_standby", store=store.engine)
                    await asyncio.sleep(self.options.takeover_poll)
                    continue
                await self._activate(store)
                assert self.hub is not None
                await self.hub.failed.wait()
                self.log.error("rtm_store_lost", error=self.hub.failure)
            except StoreError as exc:
                self.log.warning("rtm_store_unavailable", error=str(exc))
                await asyncio.sleep(self.options.takeover_poll)
            await self._deactivate()
            if store is not None:
                await store.close()
                store = None
            self.role = "standby"

    async def _activate(self, store: Store) -> None:
        state = await store.load()
        hub = Hub(self.app_name, self.options.hub, store, state, metrics=self.hub_metrics,
                  log=self.log)
        self.hub = hub
        hub.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HubProtocol(hub), self.app.host, self.app.ports["rtm-port"],
            ssl=self.ssl, reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self.role = "active"
        self.takeovers.inc()
        self.log.info("rtm_active", rtm_port=self.address[1], store=store.engine,
                      tls=self.ssl is not None, sites=len(self.options.hub.sites))

    async def _deactivate(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.hub is not None:
            await self.hub.close()
            store = self.hub.store
            self.hub = None
            if self.role == "active":
                with contextlib.suppress(StoreError):
                    await store.close()
        self.address = None

    def _health(self) -> tuple[bool, dict[str, Any]]:
        return self.role in ("active", "standby"), {
            "role": self.role,
            "address": list(self.address) if self.address else None,
            "sessions": len(self.hub.links) if self.hub else 0,
        }

    def _status(self) -> dict[str, Any]:
        if self.hub is None:
            return {"hub": self.app_name, "role": self.role}
        return {"role": self.role, **self.hub.status()}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rtm-server",
        help="run the rtm-server hub that links the sites of a collective",
        description=(
            "The reliable hub of a multi-site collective: sites log on with a site id and "
            "password, send events, requests and responses; nothing is lost while a site or "
            "the hub is down. Stops on SIGTERM."),
    )
    add_daemon_arguments(parser, name_help="this hub's application name in the cluster file")


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, "rtm-server", lambda config: RtmServerService(config, args.name))
