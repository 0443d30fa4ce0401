"""``sipcluster status-aggregator --config F --name SA_1``: one view of every
user's status across all sites (docs/status-aggregator.md; guide: Status
Aggregator Technical Reference).

Listeners, from the application's entry in the cluster file:

* ``status-port``: the status protocol over mutual TLS, for publishers
  (t-controllers), consumers (desktops, wallboards, ``sipcluster status``)
  and the mirrors of ``status-aggregators``;
* ``http-port``: ``/healthz``, ``/metrics``, ``/status/publishers``,
  ``/status/mirrors`` and the web status page (:mod:`.web`).

Options in ``[applications.NAME.options]`` (:mod:`.options`); certificates
in ``certs/`` beside the cluster file (``sipcluster certs``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from ldap3.core.exceptions import LDAPException  # type: ignore[import-untyped]

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.runtime.certs import CertError, client_context, server_context
from daemons.runtime.config import ConfigError
from daemons.runtime.service import Service, add_daemon_arguments, cancel_and_wait, run_daemon
from daemons.status_aggregator.aggregator import Aggregator
from daemons.status_aggregator.directory import LdapDirectory, next_poll
from daemons.status_aggregator.mirror import MirrorDialer
from daemons.status_aggregator.options import read_options
from daemons.status_aggregator.store import Store, open_store, split
from daemons.status_aggregator.web import StatusWeb
from protocols.status.messages import Role, StatusRecord

#: seconds between two writes of changed persistent statuses
SAVE_INTERVAL = 0.5

__all__ = ["StatusAggregatorService", "add_parser", "run"]


class StatusAggregatorService(Service):
    """One status-aggregator process."""

    kind = "status-aggregator"

    def __init__(self, config: ClusterConfig, name: str) -> None:
        super().__init__(name)
        self.config = config
        self.app = config.application(name, AppKind.STATUS_AGGREGATOR)
        self.options = read_options(config, name)
        try:
            self.server_context = server_context(self.options.certs, name)
            self.client_context = client_context(self.options.certs, name)
        except CertError as exc:
            raise ConfigError(config.file, f"applications.{name}.options.certs",
                              f"{exc} (run: sipcluster certs issue {name})") from exc
        self.aggregator = Aggregator(config, name, self.options, self.metrics, self.log)
        self.web = StatusWeb(self.metrics, app_name=name, aggregator=lambda: self.aggregator,
                             log=self.log)
        self.web.serve_on(self.management)
        self.management_host = self.app.host
        self.management_port = self.app.port("http-port") or 0
        self.management.add_health_check("status-port", self._health)
        self.management.add_status_page("/status/publishers", self._publishers)
        self.management.add_status_page("/status/mirrors", self._mirrors)
        self.mirrors = MirrorDialer(self.aggregator, config, self.client_context, self.log)
        self.server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None
        self._keep_alive: asyncio.Task[None] | None = None
        self.store: Store | None = (open_store(self.options.store)
                                    if self.options.store != "none" else None)
        self._saver: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        #: users the store holds a row for
        self._stored: set[str] = set()

    async def start(self) -> None:
        if self.store is not None:
            await self.store.open()
            kept = await self.store.load()
            self.aggregator.table.merge(kept)
            self._stored.update(r.user for r in kept)
            self.log.info("store_loaded", engine=self.store.engine, persistent=len(kept))
            self._saver = asyncio.get_running_loop().create_task(self._save_loop())
        self.aggregator.start()
        if isinstance(self.aggregator.directory, LdapDirectory):
            await self.poll_directory()
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_loop(self.aggregator.directory))
        self.server = await self.aggregator.listen(
            self.app.host, self.app.ports["status-port"], self.server_context)
        self.address = self.server.sockets[0].getsockname()[:2]
        self.log.info("status_port_listening", address=f"{self.address[0]}:{self.address[1]}",
                      mirrors=list(self.options.status_aggregators),
                      directory=str(self.options.directory) if self.options.directory else None)
        self.mirrors.start()
        self._keep_alive = asyncio.get_running_loop().create_task(self._mirror_keep_alive())

    async def stop(self) -> None:
        await cancel_and_wait(self._keep_alive, self._saver, self._poller)
        await self.mirrors.stop()
        if self.server is not None:
            self.server.close()
        self.aggregator.close_all()
        if self.server is not None:
            await self.server.wait_closed()
        if self.store is not None:
            await self.save()
            await self.store.close()

    async def save(self) -> int:
        """Write the changed users' persistent statuses; how many rows changed."""
        if self.store is None or not self.aggregator.dirty:
            return 0
        users, self.aggregator.dirty = self.aggregator.dirty, {}
        raw = self.aggregator.table.raw
        kept, dropped = split(raw.get(u) or StatusRecord(user=u) for u in users)
        stored = self._stored
        dropped = [u for u in dropped if u in stored]  # only what the store holds
        if not kept and not dropped:
            return 0
        await self.store.save(kept, dropped)
        stored.difference_update(dropped)
        stored.update(r.user for r in kept)
        return len(kept) + len(dropped)

    async def poll_directory(self) -> bool:
        """Read the LDAP directory source now (in a thread); False (logged) if it
        cannot be read: the entries read last stay."""
        directory = self.aggregator.directory
        assert isinstance(directory, LdapDirectory)
        try:
            entries = await asyncio.to_thread(directory.fetch)
        except (LDAPException, OSError) as exc:
            self.log.error("directory_poll_failed", source=directory.source.url,
                           error=str(exc)[:200])
            return False
        directory.replace(entries)
        self.log.info("directory_polled", source=directory.source.url, users=len(entries))
        return True

    async def _poll_loop(self, directory: LdapDirectory) -> None:
        source = directory.source
        while True:
            if directory.loaded:
                delay = next_poll(time.time(), source.next_polling_time,
                                  source.polling_interval) - time.time()
            else:  # never read yet: try again soon
                delay = min(30.0, source.polling_interval)
            await asyncio.sleep(max(delay, 0.0))
            await self.poll_directory()

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            try:
                await self.save()
            except Exception as exc:  # a store error must not stop the daemon
                self.log.error("store_save_failed", error=str(exc)[:200])

    async def _mirror_keep_alive(self) -> None:
        period = min(self.options.keep_alive_interval, self.options.publisher_timeout / 3)
        while True:
            await asyncio.sleep(period)
            self.aggregator.mirror_keep_alive()

    def _health(self) -> tuple[bool, dict[str, Any]]:
        listening = self.server is not None and self.server.is_serving()
        return listening, {"users": len(self.aggregator.table),
                           "mirror-links": [c.name for c in self.aggregator.mirror_links()]}

    def _publishers(self) -> list[dict[str, Any]]:
        here = self.aggregator.publishers_here()
        return [{"publisher": p.name, "online": p.online, "connected-here": p.name in here,
                 "incarnation": p.incarnation, "users": len(p.users)}
                for p in self.aggregator.table.publishers.values()]

    def _mirrors(self) -> dict[str, Any]:
        open_links = {c.name for c in self.aggregator.connections.values()
                      if c.role is Role.MIRROR and c.session.is_open}
        return {"status-aggregators": list(self.options.status_aggregators),
                "open": sorted(n for n in open_links if n)}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status-aggregator",
        help="consolidated user status across sites (publish, query, watch; mirrors)",
        description="Caches the status every publisher (t-controller) publishes for its users, "
                    "answers queries and watches over mutual TLS, mirrors the other "
                    "aggregators of status-aggregators.")
    add_daemon_arguments(parser, name_help="the status-aggregator application to run (SA_1)")


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, "status-aggregator",
                      lambda cfg: StatusAggregatorService(cfg, args.name))
