"""The t-controller as a publisher of the status-aggregators: its agents'
states, as status records (docs/status-aggregator.md, "Publishers"; guide:
"Receives notifications of user status changes and caches them").

Each agent logged in on a DN this t-controller owns is a user of the
directory: its identity is the agent ID when that is an e-mail address,
else ``AGENT@DOMAIN`` (the switch's SIP domain). Its status key follows the
agent state (``Available``, ``Not Ready``, ``After Call Work``; the work mode
and reason code in the detail), ``on_phone`` is whether it has a call, and
the logged-on server is the sip-server this t-controller sits beside. An
agent that logs out, or moves to another node, is published logged off.

The agent table tells the publisher which DNs changed (``AgentTable.watch``);
the publisher wakes at once, reads those DNs and publishes what changed
(:class:`AgentStatusDiff`, sans-I/O): the changes made while one batch is sent
go out together in the next. Every :data:`RECONCILE_INTERVAL` seconds the
whole table is compared as well, a safety net that normally finds nothing. The
client
(:class:`~daemons.runtime.status_client.StatusClient`) sends the whole set as
a snapshot whenever it (re)connects, failing over in the list order of
``status-aggregators``. Certificates: ``certs/NAME.pem`` beside the cluster
file; without them, or without any status-aggregator in the cluster file,
the t-controller does not publish (one log line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from daemons.cluster.config import ClusterConfig
from daemons.runtime.certs import CertError, certs_dir_for, client_context
from daemons.runtime.status_client import StatusClient, aggregator_addresses
from daemons.t_controller.agent import AgentState, AgentView, AgentWorkMode
from protocols.status.messages import Role, StatusRecord

__all__ = ["AgentStatusDiff", "StatusPublisher", "status_of"]

#: seconds between two full comparisons of the agent table
RECONCILE_INTERVAL = 5.0

_STATUS_KEYS = {
    AgentState.READY: "Available",
    AgentState.NOT_READY: "Not Ready",
    AgentState.AFTER_CALL_WORK: "After Call Work",
}


class AgentSource(Protocol):
    """What the publisher reads of the controller's agent table."""

    def logged_in(self) -> list[str]: ...

    def agent(self, dn: str) -> AgentView | None: ...

    def watch(self, listener: Callable[[str], None]) -> None: ...


def status_of(view: AgentView, *, domain: str, server: str) -> StatusRecord:
    """One logged-in agent as a status record."""
    user = view.agent_id if "@" in view.agent_id else f"{view.agent_id}@{domain}"
    detail = []
    if view.work_mode is not AgentWorkMode.UNKNOWN:
        detail.append(view.work_mode.name.replace("_", " ").title())
    reason = view.reasons.get("ReasonCode")
    if reason is not None:
        detail.append(f"reason {reason}")
    return StatusRecord(user=user.lower(), status=_STATUS_KEYS.get(view.state, str(view.state)),
                        detail=", ".join(detail), on_phone=view.on_call, server=server)


class AgentStatusDiff:
    """What changed in the agent table since the last read, as records."""

    def __init__(self, *, domain: str, server: str) -> None:
        self.domain = domain
        self.server = server
        self.current: dict[str, StatusRecord] = {}
        #: DN -> the user last published from it
        self._user_of_dn: dict[str, str] = {}

    def read(self, views: Iterable[AgentView]) -> list[StatusRecord]:
        """The whole table: everything that differs from what was published."""
        now: dict[str, StatusRecord] = {}
        user_of_dn: dict[str, str] = {}
        for view in views:
            record = status_of(view, domain=self.domain, server=self.server)
            now[record.user] = record
            user_of_dn[view.dn] = record.user
        changed = [r for user, r in now.items() if self.current.get(user) != r]
        changed.extend(StatusRecord(user=user, status=None, server="")
                       for user in self.current if user not in now)
        self.current = now
        self._user_of_dn = user_of_dn
        return changed

    def read_changed(self, views: Mapping[str, AgentView | None]) -> list[StatusRecord]:
        """Only the DNs that changed (DN -> its agent now, None when nobody is
        logged in there): what differs from what was published for them."""
        gone: set[str] = set()
        present: list[tuple[str, StatusRecord]] = []
        for dn, view in views.items():
            old = self._user_of_dn.pop(dn, None)
            if old is not None:
                gone.add(old)
            if view is not None:
                present.append((dn, status_of(view, domain=self.domain, server=self.server)))
        changed: list[StatusRecord] = []
        for dn, record in present:
            self._user_of_dn[dn] = record.user
            gone.discard(record.user)
            if self.current.get(record.user) != record:
                self.current[record.user] = record
                changed.append(record)
        owners = set(self._user_of_dn.values()) if gone else set()
        for user in sorted(gone - owners):
            if self.current.pop(user, None) is not None:
                changed.append(StatusRecord(user=user, status=None, server=""))
        return changed


class StatusPublisher:
    """Publishes the agents of one t-controller to the status-aggregators."""

    def __init__(self, client: StatusClient, agents: AgentSource, diff: AgentStatusDiff,
                 log: Any) -> None:
        self.client = client
        self.agents = agents
        self.diff = diff
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._dirty: dict[str, None] = {}
        self._wake = asyncio.Event()
        agents.watch(self._note)

    @classmethod
    def from_config(cls, config: ClusterConfig, name: str, agents: AgentSource,
                    log: Any) -> StatusPublisher | None:
        """The publisher of t-controller ``name``; None (logged) when the cluster
        file has no status-aggregator or this t-controller has no certificate."""
        addresses = aggregator_addresses(config)
        if not addresses:
            return None
        try:
            context = client_context(certs_dir_for(config.file), name)
        except CertError as exc:
            log.warning("status_publisher_disabled", reason=str(exc))
            return None
        server = config.sip_server_for(name).name
        client = StatusClient(name=name, role=Role.PUBLISHER, aggregators=addresses,
                              context=context, local_address=config.applications[name].host)
        return cls(client, agents, AgentStatusDiff(domain=config.switch.domain, server=server),
                   log)

    def start(self) -> None:
        self.client.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.client.stop()

    def _note(self, dn: str) -> None:
        self._dirty[dn] = None
        self._wake.set()

    def publish_changes(self) -> int:
        """Publish what changed on the DNs noted since the last call."""
        dirty, self._dirty = self._dirty, {}
        self._wake.clear()
        if not dirty:
            return 0
        changed = self.diff.read_changed({dn: self.agents.agent(dn) for dn in dirty})
        if changed:
            self.client.publish(changed)
        return len(changed)

    def reconcile(self) -> int:
        """Compare the whole table with what was published; publish the difference."""
        self._dirty.clear()
        self._wake.clear()
        views = [v for v in (self.agents.agent(dn) for dn in self.agents.logged_in())
                 if v is not None]
        changed = self.diff.read(views)
        if changed:
            self.client.publish(changed)
        return len(changed)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self.reconcile()
        next_full = loop.time() + RECONCILE_INTERVAL
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_full - loop.time()))
            except TimeoutError:
                pass
            if loop.time() >= next_full:
                self.publish_changes()
                if self.reconcile():
                    self.log.warning("status_publisher_reconciled")
                next_full = loop.time() + RECONCILE_INTERVAL
            else:
                self.publish_changes()
