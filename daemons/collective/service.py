"""``sipcluster collective --config F --name NAME``: one site of a multi-site
collective (docs/collective.md; guide: CIC Multi-Site, "Connected CIC Servers
Form a Collective").

Wiring only: the site's options (:mod:`daemons.collective.options`), its
user store (:mod:`daemons.collective.store`), its directory
(:mod:`daemons.collective.directory`), the hub link
(:class:`~daemons.runtime.rtm_client.RtmClient`, durable outbox and handler
journal), the site's status-aggregator (watching every user; publishing a
status set from another site) and the HTTP listener (``http-port``):

* ``GET /healthz``, ``/metrics``, ``/status`` (site, hub link, peers' Check
  Site, users, duplicate extensions, syncs);
* ``GET /users``, ``PUT /users/ID`` (``name``, ``extension``,
  ``workgroups``), ``DELETE /users/ID``: this site's users; a member of a
  spanning workgroup replicates to every site;
* ``GET /directory``, ``GET /directory/SITE/ID``: the company-wide
  directory with status; ``POST /directory/SITE/ID/status`` (``status``,
  ``detail``, ``persistent``): change a user's status, at its home site, or
  for an agent logged on through a t-controller at the site it is logged on
  at, over T-Library (:mod:`daemons.collective.agents`), when this site's
  trusted access there includes manage handlers;
* ``POST /sync``: full sync with every peer site;
* ``GET /locate/EXTENSION``: the site a call to the extension goes to (the
  one the user is logged on at, else the home site) and its phone number.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.collective.agents import AgentStateError, change_agent_state, t_controllers_of
from daemons.collective.directory import Directory, Duplicate
from daemons.collective.messages import (
    OBJECT,
    SpanningUser,
    UserStatus,
    decode_deleted,
    decode_statuses,
    decode_users,
    encode_deleted,
    encode_statuses,
    encode_users,
)
from daemons.collective.options import CollectiveOptions, read_options
from daemons.collective.store import StoreError, open_store, redacted
from daemons.runtime.certs import CertError, certs_dir_for, client_context
from daemons.runtime.rtm_client import (
    Delivery,
    HandlerTable,
    RequestTimeout,
    RtmClient,
    RtmRefused,
    check_site,
)
from daemons.runtime.service import Service, add_daemon_arguments, cancel_and_wait, run_daemon
from daemons.runtime.status_client import StatusClient, aggregator_addresses
from protocols.rtm.elements import Element, MessageBuilder, MessageReader
from protocols.rtm.errors import ElementTypeError
from protocols.status.messages import Role, StatusRecord

__all__ = ["CollectiveService", "add_parser", "run"]

#: ms a status change waits for the user's home site
SET_STATUS_TIMEOUT_MS = 5000
#: seconds between two Check Site rounds over the peers
CHECK_INTERVAL = 60.0
#: longest user id, name, extension, workgroup name taken from the API
_MAX_FIELD = 256


class BadRequest(Exception):
    """Input the API refuses with 400."""


class CollectiveService(Service):
    """One site of the collective (see the module docstring)."""

    kind = "collective"

    def __init__(self, config: ClusterConfig, name: str) -> None:
        super().__init__(name)
        self.config = config
        self.app = config.application(name, AppKind.COLLECTIVE)
        self.options: CollectiveOptions = read_options(config, self.app)
        self.management.max_body = 64 * 1024
        self.management.add_routes(self._routes)
        self.management_host = self.app.host
        self.management_port = self.app.ports["http-port"]
        self.site = self.options.home.site_id
        self.directory = Directory(self.site)
        self.store = open_store(self.options.store)
        handlers = HandlerTable(default=self._unknown_message)
        for event, handler in self._handlers().items():
            handlers.on(OBJECT, event)(handler)
        self.rtm = RtmClient(site=self.site, password=self.options.password,
                             hubs=self.options.hubs, state=self.options.rtm_state,
                             handler=self._guarded(handlers))
        self.status_client = self._status_client()
        self._outgoing: asyncio.Queue[tuple[str, str, tuple[Element, ...]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._resync = asyncio.Event()
        self.peer_checks: dict[int, dict[str, Any]] = {}
        self.syncs: dict[int, dict[str, Any]] = {}
        self.sync_generation = 0
        self.store_ok = False
        m = self.metrics
        self.m_users = m.gauge("collective_users", "Users in this site's directory", ("home",))
        self.m_users.labels("local").set_function(
            lambda: sum(1 for h, _ in self.directory.users if h == self.site))
        self.m_users.labels("replicated").set_function(
            lambda: sum(1 for h, _ in self.directory.users if h != self.site))
        self.m_duplicates = m.counter(
            "collective_duplicate_extensions",
            "Extensions found shared by spanning users of different sites")
        self.m_duplicate_now = m.gauge(
            "collective_duplicate_extensions_current",
            "Extensions shared by spanning users of different sites now")
        self.m_duplicate_now.set_function(lambda: len(self.directory.duplicates()))
        self.m_received = m.counter("collective_messages_received",
                                    "Collective messages handled, by event", ("event",))
        self.m_refused = m.counter("collective_messages_refused",
                                   "Collective messages refused, by reason", ("reason",))
        self.m_sent = m.counter("collective_messages_sent",
                                "Collective messages queued for the hub, by event", ("event",))
        self.m_syncs = m.counter("collective_syncs", "Full syncs, by direction", ("direction",))
        self.m_api_refused = m.counter("collective_api_refused",
                                       "API requests refused, by reason", ("reason",))
        self.m_locates = m.counter("collective_locates",
                                   "GET /locate answers, by result (found, unknown, duplicate)",
                                   ("result",))
        self.m_agent_changes = m.counter(
            "collective_agent_state_changes",
            "Agent states asked of this site's t-controllers, by result", ("result",))
        self.m_hub_up = m.gauge("collective_hub_connected", "1 while the hub link is open")
        self.m_hub_up.set_function(lambda: 1 if self.rtm.connected.is_set() else 0)
        self.management.add_health_check("collective", self._health)
        self.management.add_status_page("/status", self.status)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.store.open()
            rows = await self.store.load()
        except StoreError as exc:
            raise OSError(f"store: {exc}") from exc
        for user, spanning in rows:
            self.directory.put(user, spanning)
        self.store_ok = True
        self.sync_generation = await self.store.meta("sync_generation")
        self.log.info("collective_loaded", site=self.site, site_name=self.options.home.name,
                      users=len(rows), peers=sorted(self.options.peers))
        await self.rtm.start()
        self._tasks = [asyncio.create_task(self._sender()),
                       asyncio.create_task(self._check_peers()),
                       asyncio.create_task(self._resync_after_store_failure())]
        if self.status_client is not None:
            self.status_client.start()
            self._tasks.append(asyncio.create_task(self._watch_statuses()))
        if not await self.store.meta("joined"):
            # a site that joins the collective: a full sync with every peer
            await self.start_sync(reason="joined")
            await self.store.set_meta("joined", 1)
        self._report_duplicates(None)

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self.status_client is not None:
            await self.status_client.stop()
        await self.rtm.close()
        await self.store.close()

    # -- the hub -------------------------------------------------------------------
    def send(self, to: int | str, event: str, elements: Sequence[Element]) -> None:
        """Queue a message; the sender task puts it in the durable outbox in order."""
        self._outgoing.put_nowait((str(to), event, tuple(elements)))

    async def _sender(self) -> None:
        while True:
            to, event, elements = await self._outgoing.get()
            try:
                await self.rtm.send_event(to, OBJECT, event, elements)
                self.m_sent.labels(event).inc()
            except (ConnectionError, ValueError) as exc:
                self.log.error("collective_send_failed", to=to, event_id=event, error=str(exc))

    def _handlers(self) -> dict[str, Callable[[Delivery], Any]]:
        return {
            "UserChanged": self._on_user_changed,
            "UserDeleted": self._on_user_deleted,
            "SyncRequest": self._on_sync_request,
            "SyncUsers": self._on_sync_users,
            "SyncDone": self._on_sync_done,
            "UserStatus": self._on_user_status,
            "SetStatus": self._on_set_status,
            "SetAgentState": self._on_set_agent_state,
        }

    def _guarded(self, handlers: HandlerTable) -> Callable[[Delivery], Awaitable[Any]]:
        """Only peer sites are heard; elements of the wrong form are refused with a
        log line and a count, and the site goes on."""
        async def handle(delivery: Delivery) -> Any:
            if delivery.origin not in self.options.peers:
                self._refuse(delivery, "unknown-site",
                             f"site {delivery.origin} is not a peer site of this site")
                return None
            try:
                result = handlers(delivery)
                if asyncio.iscoroutine(result):
                    result = await result
            except (ElementTypeError, ValueError) as exc:
                self._refuse(delivery, "bad-elements", str(exc))
                return None
            except StoreError as exc:
                # the hub will not deliver it again (it is journaled as handled):
                # a full sync brings what was missed once the store works again
                self.m_refused.labels("store-failed").inc()
                self.log.error("collective_store_failed", error=str(exc),
                               origin=delivery.origin, event_id=delivery.event)
                self._resync.set()
                return None
            return result
        return handle

    def _refuse(self, delivery: Delivery, reason: str, detail: str) -> None:
        self.m_refused.labels(reason).inc()
        self.log.warning("collective_message_refused", reason=reason, detail=detail,
                         origin=delivery.origin, object_id=delivery.object,
                         event_id=delivery.event, id=delivery.id)

    def _unknown_message(self, delivery: Delivery) -> None:
        self._refuse(delivery, "unknown-message",
                     f"{delivery.object}/{delivery.event} is not a collective message")

    async def _on_user_changed(self, delivery: Delivery) -> None:
        _, users = decode_users(delivery.elements, delivery.origin)
        await self._take_users(users)
        self.m_received.labels("UserChanged").inc()

    async def _take_users(self, users: list[SpanningUser], sync_gen: int = 0) -> None:
        await self.store.put([(u, True) for u in users], sync_gen=sync_gen)
        for user in users:
            self.directory.put(user, True)
            self.log.info("collective_user_replicated", home_site=user.home_site,
                          user=user.id, extension=user.extension, version=user.version)
        self._report_duplicates({u.extension for u in users})

    async def _on_user_deleted(self, delivery: Delivery) -> None:
        gone = decode_deleted(delivery.elements)
        await self._drop(delivery.origin, [i for i, _ in gone])
        self.m_received.labels("UserDeleted").inc()

    async def _drop(self, home_site: int, ids: list[str]) -> None:
        await self.store.delete(home_site, ids)
        for user_id in ids:
            if self.directory.remove(home_site, user_id) is not None:
                self.log.info("collective_user_removed", home_site=home_site, user=user_id)

    def _on_sync_request(self, delivery: Delivery) -> None:
        self.m_received.labels("SyncRequest").inc()
        self.log.info("collective_sync_requested", peer=delivery.origin)
        self._send_full_set(delivery.origin)

    def _send_full_set(self, to: int | str, generation: int | None = None) -> int:
        """This site's spanning users to ``to`` (a peer, or ``*``), in batches,
        then ``SyncDone``; the generation, for the status page."""
        generation = generation or time.time_ns() // 1_000_000
        users = self.directory.home_spanning()
        batch = self.options.sync_batch
        for start in range(0, len(users), batch):
            self.send(to, "SyncUsers", encode_users(users[start:start + batch],
                                                    generation=generation))
        self.send(to, "SyncDone",
                  MessageBuilder().put_integer(generation).put_integer(len(users)).elements)
        self.m_syncs.labels("sent").inc()
        return generation

    async def _on_sync_users(self, delivery: Delivery) -> None:
        generation, users = decode_users(delivery.elements, delivery.origin,
                                         with_generation=True)
        await self.store.put([(u, True) for u in users], sync_gen=generation)
        for user in users:
            self.directory.put(user, True)
        self._report_duplicates({u.extension for u in users})
        self.m_received.labels("SyncUsers").inc()

    async def _on_sync_done(self, delivery: Delivery) -> None:
        reader = delivery.reader()
        generation, total = reader.get_integer(), reader.get_integer()
        stale = await self.store.stale(delivery.origin, generation)
        await self._drop(delivery.origin, stale)
        self.syncs[delivery.origin] = {"generation": generation, "users": total,
                                       "removed": len(stale), "at": time.time()}
        self.m_syncs.labels("received").inc()
        self.m_received.labels("SyncDone").inc()
        self.log.info("collective_sync_received", peer=delivery.origin, users=total,
                      removed=len(stale))

    def _on_user_status(self, delivery: Delivery) -> None:
        for status in decode_statuses(delivery.elements, delivery.origin):
            self.directory.apply_status(status)
        self.m_received.labels("UserStatus").inc()

    async def _on_set_status(self, delivery: Delivery) -> tuple[Element, ...]:
        reader = delivery.reader()
        home, user_id = reader.get_integer(), reader.get_string()
        status, detail, persistent = reader.get_string(), reader.get_string(), reader.get_integer()
        self.m_received.labels("SetStatus").inc()
        if home != self.site:
            ok, reason = False, f"site {self.site} is not the home site of {home}/{user_id}"
        else:
            ok, reason = await self.set_local_status(user_id, status, detail, bool(persistent),
                                                     by=delivery.origin)
        return MessageBuilder().put_integer(int(ok)).put_string(reason).elements

    async def _on_set_agent_state(self, delivery: Delivery) -> tuple[Element, ...]:
        reader = delivery.reader()
        home, user_id = reader.get_integer(), reader.get_string()
        status, detail = reader.get_string(), reader.get_string()
        self.m_received.labels("SetAgentState").inc()
        ok, reason = await self.set_agent_state(home, user_id, status, detail,
                                                by=delivery.origin)
        return MessageBuilder().put_integer(int(ok)).put_string(reason).elements

    # -- full sync -----------------------------------------------------------------
    async def start_sync(self, *, reason: str) -> int:
        """Ask every peer for its spanning users and send them ours (guide:
        "Synchronize"); the generation of our set."""
        self.sync_generation = time.time_ns() // 1_000_000
        await self.store.set_meta("sync_generation", self.sync_generation)
        self.send("*", "SyncRequest", MessageBuilder().put_integer(self.sync_generation).elements)
        self._send_full_set("*", self.sync_generation)
        self.log.info("collective_sync_started", reason=reason,
                      users=len(self.directory.home_spanning()))
        return self.sync_generation

    async def _resync_after_store_failure(self) -> None:
        while True:
            await self._resync.wait()
            try:
                await self.start_sync(reason="store-failure")
            except StoreError as exc:
                self.log.warning("collective_resync_waiting", error=str(exc))
                await asyncio.sleep(5.0)
                continue
            self._resync.clear()

    # -- home users ----------------------------------------------------------------
    def _spanning(self, workgroups: tuple[str, ...]) -> bool:
        return any(w in self.options.spanning_workgroups for w in workgroups)

    async def put_user(self, user_id: str, name: str, extension: str,
                       workgroups: tuple[str, ...]) -> tuple[SpanningUser, bool]:
        """Add or change a home user; a spanning one replicates, one that left every
        spanning workgroup is removed from the other sites."""
        old = self.directory.get(self.site, user_id)
        was_spanning = (self.site, user_id) in self.directory.spanning
        user = SpanningUser(id=user_id, name=name, extension=extension, workgroups=workgroups,
                            home_site=self.site, version=(old.version + 1) if old else 1)
        spanning = self._spanning(workgroups)
        await self.store.put([(user, spanning)])
        self.directory.put(user, spanning)
        if spanning:
            self.send("*", "UserChanged", encode_users([user]))
        elif was_spanning:
            self.send("*", "UserDeleted", encode_deleted([(user.id, user.version)]))
        self.log.info("collective_user_saved", user=user_id, extension=extension,
                      spanning=spanning, version=user.version)
        self._report_duplicates({extension})
        return user, spanning

    async def delete_user(self, user_id: str) -> bool:
        old = self.directory.get(self.site, user_id)
        if old is None:
            return False
        was_spanning = (self.site, user_id) in self.directory.spanning
        await self._drop(self.site, [user_id])
        if was_spanning:
            self.send("*", "UserDeleted", encode_deleted([(user_id, old.version + 1)]))
        return True

    def _report_duplicates(self, extensions: set[str] | None) -> None:
        for duplicate in self.directory.duplicates(extensions):
            self.m_duplicates.inc()
            self.log.warning("collective_duplicate_extension", extension=duplicate.extension,
                             users=[f"{h}/{i}" for h, i in duplicate.users])

    # -- statuses ------------------------------------------------------------------
    def _status_client(self) -> StatusClient | None:
        addresses = aggregator_addresses(self.config)
        if not addresses:
            self.log.info("collective_no_status_aggregator")
            return None
        try:
            context = client_context(certs_dir_for(self.config.file), self.app_name)
        except CertError as exc:
            self.log.warning("collective_status_disabled", reason=str(exc))
            return None
        return StatusClient(name=self.app_name, role=Role.PUBLISHER, aggregators=addresses,
                            context=context, on_records=self._on_records, snapshot=False)

    async def _watch_statuses(self) -> None:
        client = self.status_client
        assert client is not None
        while True:
            try:
                await client.wait_open(timeout=30.0)
                await client.watch(["*"])
                return  # the client watches again by itself after a reconnection
            except (ConnectionError, TimeoutError, RuntimeError) as exc:
                self.log.warning("collective_status_watch_failed", error=str(exc))
                await asyncio.sleep(1.0)

    def _user_of(self, identity: str) -> SpanningUser | None:
        local, _, domain = identity.partition("@")
        if domain and domain != self.options.domain.lower():
            user = self.directory.find(identity)  # an id that is an e-mail address
            return user
        return self.directory.find(local) or self.directory.find(identity)

    def _on_records(self, records: list[StatusRecord]) -> None:
        """The site's aggregator says how its users are: the spanning ones go to
        every site, every known one is in this site's directory."""
        out = []
        now = time.time()
        for record in records:
            user = self._user_of(record.user)
            if user is None:
                continue
            status = UserStatus(home_site=user.home_site, id=user.id, status=record.status or "",
                                detail=record.detail, on_phone=record.on_phone,
                                logged_on=record.logged_on, server=record.server,
                                site=self.site, at=now)
            if self.directory.apply_status(status) and \
                    (user.home_site, user.id) in self.directory.spanning:
                out.append(status)
        for start in range(0, len(out), 500):
            self.send("*", "UserStatus", encode_statuses(out[start:start + 500]))

    async def set_local_status(self, user_id: str, status: str, detail: str,
                               persistent: bool, *, by: int) -> tuple[bool, str]:
        """Publish a status for a home user at this site's aggregator."""
        if self.directory.get(self.site, user_id) is None:
            return False, f"no user {user_id!r} at site {self.site}"
        client = self.status_client
        if client is None or client.connected_to is None:
            return False, "no status-aggregator connected at the home site"
        identity = user_id if "@" in user_id else f"{user_id}@{self.options.domain}".lower()
        try:
            result = await client.publish_now([StatusRecord(
                user=identity, status=status, persistent=persistent, detail=detail)])
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            return False, f"status-aggregator: {exc}"
        if result.refused:
            code = next(iter(result.refused.values()))
            reason = ("the user is logged on through another publisher (its t-controller): "
                      "the agent state is changed from the desktop" if code == 10
                      else f"refused by the status-aggregator (code {code})")
            self.log.info("collective_status_refused", user=user_id, by=by, code=code)
            return False, reason
        self.log.info("collective_status_set", user=user_id, status=status, by=by)
        return True, "accepted"

    async def set_agent_state(self, home_site: int, user_id: str, status: str, detail: str,
                              *, by: int) -> tuple[bool, str]:
        """Change the state of an agent logged on through a t-controller of this
        site, asked by site ``by``: only with the trusted-access right manage
        handlers of that site (this site itself may)."""
        current = self.directory.statuses.get((home_site, user_id))
        if current is None or not current.logged_on or current.site != self.site:
            self.m_agent_changes.labels("not-logged-on").inc()
            return False, f"{home_site}/{user_id} is not logged on at site {self.site}"
        if by != self.site:
            peer = self.options.peers.get(by)
            if peer is None or not peer.trusted_access.manage_handlers:
                self.m_agent_changes.labels("no-permission").inc()
                self.log.warning("collective_agent_state_refused", user=user_id,
                                 home_site=home_site, by=by, reason="no-permission")
                return False, (f"site {self.options.site_name(by)} ({by}) lacks the "
                               f"trusted-access right manage-handlers at site "
                               f"{self.options.home.name} ({self.site}), where the "
                               "agent state is its t-controller's")
        controllers = t_controllers_of(self.config, current.server)
        try:
            done = await change_agent_state(self.config, controllers, user_id=user_id,
                                            status=status, detail=detail,
                                            client_name=self.app_name)
        except AgentStateError as exc:
            self.m_agent_changes.labels("failed").inc()
            self.log.warning("collective_agent_state_failed", user=user_id,
                             home_site=home_site, by=by, error=str(exc))
            return False, str(exc)
        self.m_agent_changes.labels("changed").inc()
        self.log.info("collective_agent_state_set", user=user_id, home_site=home_site,
                      status=status, detail=detail, by=by, **done)
        return True, "accepted"

    async def _ask(self, site: int, event: str, elements: Sequence[Element]
                   ) -> tuple[bool, str]:
        try:
            answer = await self.rtm.send_request(site, OBJECT, event, elements,
                                                 timeout_ms=SET_STATUS_TIMEOUT_MS)
        except RequestTimeout:
            return False, f"site {site} did not answer within {SET_STATUS_TIMEOUT_MS} ms"
        reader = MessageReader(answer.elements)
        return bool(reader.get_integer()), reader.get_string()

    async def change_status(self, home_site: int, user_id: str, status: str, detail: str,
                            persistent: bool) -> tuple[bool, str]:
        """A status asked at this site: for an agent logged on through a
        t-controller, its state at the site it is logged on at; otherwise a
        status published at the home site."""
        current = self.directory.statuses.get((home_site, user_id))
        if current is not None and current.logged_on and current.server:
            if current.site == self.site:
                return await self.set_agent_state(home_site, user_id, status, detail,
                                                  by=self.site)
            if current.site in self.options.peers:
                return await self._ask(current.site, "SetAgentState", MessageBuilder()
                                       .put_integer(home_site).put_string(user_id)
                                       .put_string(status).put_string(detail).elements)
        if home_site == self.site:
            return await self.set_local_status(user_id, status, detail, persistent, by=self.site)
        if home_site not in self.options.peers:
            return False, f"site {home_site} is not a peer site"
        elements = (MessageBuilder().put_integer(home_site).put_string(user_id)
                    .put_string(status).put_string(detail).put_integer(int(persistent)).elements)
        return await self._ask(home_site, "SetStatus", elements)

    # -- peers ---------------------------------------------------------------------
    async def _check_peers(self) -> None:
        """The guide's Check Site for each peer: its id and password at the hub."""
        while True:
            for peer in self.options.peers.values():
                result: dict[str, Any] = {"checked_at": time.time()}
                for host, port in self.options.hubs:
                    try:
                        report = await check_site(host, port, peer.site_id, peer.password)
                    except RtmRefused as exc:
                        result.update(ok=False, result="refused", reason=exc.reason)
                        break
                    except (OSError, TimeoutError) as exc:
                        result.update(ok=False, result="unreachable", reason=str(exc))
                        continue
                    result.update(ok=True, result="ok", connected=report.get("connected"),
                                  queued=report.get("queued"))
                    break
                if self.peer_checks.get(peer.site_id, {}).get("result") != result.get("result"):
                    log = self.log.info if result.get("ok") else self.log.warning
                    log("collective_check_site", peer=peer.site_id, peer_name=peer.name,
                        result=result.get("result"), reason=result.get("reason"))
                self.peer_checks[peer.site_id] = result
            await asyncio.sleep(CHECK_INTERVAL)

    # -- pages -----------------------------------------------------------------------
    def _health(self) -> tuple[bool, dict[str, Any]]:
        refusal = self.rtm.refusal
        return self.store_ok and refusal is None, {
            "site": self.site, "hub_connected": self.rtm.connected.is_set(),
            "hub_refused": f"{refusal.code}: {refusal.reason}" if refusal else None}

    def _user_map(self, key: tuple[int, str]) -> dict[str, Any]:
        user = self.directory.users[key]
        out = user.to_map()
        out["home_site_name"] = self.options.site_name(user.home_site)
        out["spanning"] = key in self.directory.spanning
        peer = self.options.peers.get(user.home_site)
        if peer is not None:
            out["trusted_access"] = peer.trusted_access.to_map()
        return out

    def _entry(self, key: tuple[int, str]) -> dict[str, Any]:
        out = self._user_map(key)
        status = self.directory.statuses.get(key)
        out["status"] = status.to_map() if status is not None else None
        if status is not None and status.logged_on:
            out["status"]["logged_on_site_name"] = self.options.site_name(status.site)
        return out

    def status(self) -> dict[str, Any]:
        o = self.options
        refusal = self.rtm.refusal
        duplicates: list[Duplicate] = self.directory.duplicates()
        return {
            "site": {"site-identifier": o.home.site_id, "site-name": o.home.name,
                     "phone-number": o.home.phone_number,
                     "note-id-dial-string-digits": o.note_id_dial_string_digits},
            "hub": {"connected": self.rtm.connected.is_set(), "hub": self.rtm.hub_name,
                    "refused": f"{refusal.code}: {refusal.reason}" if refusal else None,
                    "outbox": self.rtm.outbox_size},
            "peer_sites": [{"site-identifier": p.site_id, "site-name": p.name,
                            "phone-number": p.phone_number,
                            "use-note-id-dial-string": p.use_note_id_dial_string,
                            "trusted-access": p.trusted_access.to_map(),
                            "check": self.peer_checks.get(p.site_id),
                            "users": len(self.directory.of_site(p.site_id)),
                            "last_sync": self.syncs.get(p.site_id)}
                           for p in o.peers.values()],
            "users": {"local": len(self.directory.of_site(self.site)),
                      "local_spanning": len(self.directory.home_spanning()),
                      "replicated": sum(1 for h, _ in self.directory.users if h != self.site)},
            "spanning_workgroups": sorted(o.spanning_workgroups),
            "duplicate_extensions": [d.to_map() for d in duplicates],
            "status_aggregator": (self.status_client.connected_to
                                  if self.status_client is not None else None),
            "sync_generation": self.sync_generation,
            "store": redacted(o.store),
        }

    # -- HTTP API --------------------------------------------------------------------
    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/users", self._api_users)
        app.router.add_put("/users/{id}", self._api_put_user)
        app.router.add_delete("/users/{id}", self._api_delete_user)
        app.router.add_get("/directory", self._api_directory)
        app.router.add_get("/directory/{site}/{id}", self._api_entry)
        app.router.add_post("/directory/{site}/{id}/status", self._api_set_status)
        app.router.add_post("/sync", self._api_sync)
        app.router.add_get("/locate/{extension}", self._api_locate)

    def _bad(self, reason: str, text: str, status: int = 400) -> web.Response:
        self.m_api_refused.labels(reason).inc()
        self.log.warning("collective_api_refused", reason=reason, detail=text)
        return web.json_response({"error": text}, status=status)

    @staticmethod
    def _field(body: dict[str, Any], name: str, *, required: bool = True) -> str:
        value = body.get(name, None if required else "")
        if not isinstance(value, str) or (required and not value.strip()) \
                or len(value) > _MAX_FIELD or "\n" in value:
            raise BadRequest(f"{name}: expected a non-empty string of at most "
                             f"{_MAX_FIELD} characters")
        return value

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    async def _api_users(self, request: web.Request) -> web.Response:
        return web.json_response([self._user_map(k) for k in sorted(self.directory.users)])

    async def _api_put_user(self, request: web.Request) -> web.Response:
        user_id = request.match_info["id"]
        try:
            if not user_id or len(user_id) > _MAX_FIELD or any(c.isspace() for c in user_id):
                raise BadRequest("a user id is non-empty, without spaces")
            body = await self._json(request)
            name = self._field(body, "name")
            extension = self._field(body, "extension")
            groups = body.get("workgroups", [])
            if not isinstance(groups, list) or not all(
                    isinstance(g, str) and g.strip() and "\n" not in g for g in groups):
                raise BadRequest("workgroups: expected a list of workgroup names")
        except BadRequest as exc:
            return self._bad("bad-user", str(exc))
        try:
            user, spanning = await self.put_user(user_id, name, extension, tuple(groups))
        except StoreError as exc:
            return self._bad("store", str(exc), 503)
        return web.json_response({**user.to_map(), "spanning": spanning})

    async def _api_delete_user(self, request: web.Request) -> web.Response:
        try:
            found = await self.delete_user(request.match_info["id"])
        except StoreError as exc:
            return self._bad("store", str(exc), 503)
        if not found:
            return self._bad("unknown-user", f"no user {request.match_info['id']!r} here", 404)
        return web.json_response({"deleted": request.match_info["id"]})

    async def _api_directory(self, request: web.Request) -> web.Response:
        return web.json_response([self._entry(k) for k in sorted(self.directory.users)])

    def _key(self, request: web.Request) -> tuple[int, str]:
        site = request.match_info["site"]
        if not site.isdigit():
            raise BadRequest(f"a site identifier is a number, got {site!r}")
        return int(site), request.match_info["id"]

    async def _api_entry(self, request: web.Request) -> web.Response:
        try:
            key = self._key(request)
        except BadRequest as exc:
            return self._bad("bad-site", str(exc))
        if key not in self.directory.users:
            return self._bad("unknown-user", f"no user {key[0]}/{key[1]} in the directory", 404)
        return web.json_response(self._entry(key))

    async def _api_set_status(self, request: web.Request) -> web.Response:
        try:
            home, user_id = self._key(request)
            body = await self._json(request)
            status = self._field(body, "status")
            detail = self._field(body, "detail", required=False)
            persistent = body.get("persistent", True)
            if not isinstance(persistent, bool):
                raise BadRequest("persistent: expected true or false")
        except BadRequest as exc:
            return self._bad("bad-status", str(exc))
        if (home, user_id) not in self.directory.users:
            return self._bad("unknown-user", f"no user {home}/{user_id} in the directory", 404)
        ok, reason = await self.change_status(home, user_id, status, detail, persistent)
        if not ok:
            return self._bad("status-refused", reason, 409)
        return web.json_response({"home_site": home, "id": user_id, "status": status,
                                  "result": reason})

    async def _api_locate(self, request: web.Request) -> web.Response:
        """Where a call to an extension goes: the site the user is logged on at,
        else its home site; the phone number the dial plan reaches that site by."""
        extension = request.match_info["extension"]
        found = self.directory.locate(extension)
        if not found:
            # a routine answer (the dial plan asks for every number it does not know,
            # PSTN numbers included), not a refused request
            self.m_locates.labels("unknown").inc()
            self.log.debug("collective_locate_unknown", extension=extension[:64])
            return web.json_response({"error": f"no user on extension {extension!r}"},
                                     status=404)
        if len(found) > 1:
            self.m_locates.labels("duplicate").inc()
            self.log.warning("collective_locate_duplicate", extension=extension,
                             users=[f"{f.user.home_site}/{f.user.id}" for f in found])
            return web.json_response(
                {"error": f"extension {extension} is shared by spanning users of several "
                          "sites", "users": [f"{f.user.home_site}/{f.user.id}" for f in found]},
                status=409)
        self.m_locates.labels("found").inc()
        where = found[0]
        peer = self.options.peers.get(where.site)
        local = where.site == self.site
        return web.json_response({
            "extension": extension, "user": where.user.id, "home_site": where.user.home_site,
            "site": where.site, "site_name": self.options.site_name(where.site),
            "source": where.source, "local": local,
            "phone_number": self.options.home.phone_number if local or peer is None
            else peer.phone_number,
            "note_id_dial_string": (self.options.note_id_dial_string_digits
                                    if peer is not None and peer.use_note_id_dial_string
                                    else None),
            "hub_connected": self.rtm.connected.is_set()})

    async def _api_sync(self, request: web.Request) -> web.Response:
        try:
            generation = await self.start_sync(reason="requested")
        except StoreError as exc:
            return self._bad("store", str(exc), 503)
        return web.json_response({"generation": generation,
                                  "users_sent": len(self.directory.home_spanning()),
                                  "peers": sorted(self.options.peers)})


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "collective",
        help="run one site of a multi-site collective, or sync / show it",
        description=(
            "One site of a collective linked through the rtm-server hub: spanning users "
            "replicate to every site, a company-wide directory shows every user's status. "
            "Stops on SIGTERM. 'collective sync' and 'collective status' talk to a "
            "running site."),
    )
    add_daemon_arguments(parser, name_help="this site's collective application in the "
                         "cluster file")
    parser.add_argument("action", nargs="?", choices=("run", "sync", "status"), default="run",
                        help="run (default) the site; sync: full sync with every peer; "
                        "status: print the site's status as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action != "run":
        from daemons.collective.cli import run_action
        return run_action(args)
    return run_daemon(args, "collective", lambda config: CollectiveService(config, args.name))

