"""Virtual queues and the agents they route to (sans-I/O; docs/director.md,
"Routing"; guides: "Agent Availability for Routing", "Location-Based
Routing"; Interaction Director: calls spread across sites).

:class:`AgentPool` is the director's view of every agent, built from the
events the t-controllers send (login, ready, not ready, logout, the calls on
the agent's DN): an agent is *available* when it is Ready, on no call and
not held for a call of this director. Available agents are indexed by skill
and site in the order they became available, so the longest-idle agent of a
skill at a site is the first of its index: a routing decision costs a few
dictionary look-ups, not a scan of every agent.

:class:`VirtualQueue` holds the calls of a strategy's routing points until
an agent is found: highest priority first, then the oldest. Time comes in as
``now``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemons.director.strategy import Strategy

__all__ = ["AgentPool", "AgentRecord", "QueuedCall", "VirtualQueue"]

_ANY = ""  # the index of every agent, whatever its skills
_NO_SITE = ""


@dataclass(slots=True)
class AgentRecord:
    """One logged-in agent as the director sees it."""

    dn: str
    agent_id: str
    site: str = _NO_SITE
    ready: bool = False
    calls: set[str] = field(default_factory=set)
    held: bool = False  # picked for a call of this director: reserving, routing, ringing
    idle_since: float = 0.0  # when it last became available
    handled: int = 0  # calls that reached it since login (occupancy)
    skills: Mapping[str, int] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.ready and not self.calls and not self.held

    def state(self) -> str:
        if self.held:
            return "reserved"
        if self.calls:
            return "busy"
        return "ready" if self.ready else "not-ready"


class AgentPool:
    """Every agent the t-controllers report, and an index of the available ones."""

    def __init__(self, skills: Mapping[str, Mapping[str, int]]) -> None:
        self.skills = dict(skills)
        self.agents: dict[str, AgentRecord] = {}  # by DN
        #: skill -> site -> DNs in the order they became available (dict as ordered set)
        self._idle: dict[str, dict[str, dict[str, None]]] = {}

    def set_skills(self, skills: Mapping[str, Mapping[str, int]]) -> None:
        """New skill levels (the director store): agents logged in take theirs now."""
        self.skills = dict(skills)
        for record in self.agents.values():
            levels = self.skills.get(record.agent_id, {})
            if dict(levels) != dict(record.skills):
                was = record.available
                if was:
                    self._unindex(record)
                record.skills = levels
                if was:
                    self._index(record)

    # -- what the t-controllers report ------------------------------------------------
    def login(self, dn: str, agent_id: str, now: float) -> AgentRecord:
        record = self.agents.get(dn)
        if record is not None and record.agent_id == agent_id:
            return record
        if record is not None:
            self.logout(dn)
        record = AgentRecord(dn, agent_id, skills=self.skills.get(agent_id, {}), idle_since=now)
        self.agents[dn] = record
        return record

    def ready(self, dn: str, agent_id: str | None, ready: bool, now: float,
              site: str | None = None) -> None:
        record = self.agents.get(dn)
        if record is None:
            if agent_id is None:
                return
            record = self.login(dn, agent_id, now)
        if site and site != record.site:
            if record.available:
                self._unindex(record)
                record.site = site
                self._index(record)
            else:
                record.site = site
        was = record.available
        record.ready = ready
        self._settle(record, was, now)

    def logout(self, dn: str) -> None:
        record = self.agents.pop(dn, None)
        if record is not None:
            self._unindex(record)

    def call_started(self, dn: str, conn_id: str, now: float) -> None:
        record = self.agents.get(dn)
        if record is None or conn_id in record.calls:
            return
        was = record.available
        record.handled += 1
        record.calls.add(conn_id)
        record.held = False  # the routed call (or any call) reached the agent
        self._settle(record, was, now)

    def call_ended(self, dn: str, conn_id: str, now: float) -> None:
        record = self.agents.get(dn)
        if record is None or conn_id not in record.calls:
            return
        was = record.available
        record.calls.discard(conn_id)
        self._settle(record, was, now)

    # -- the director's own holds -----------------------------------------------------
    def hold(self, dn: str, now: float) -> None:
        record = self.agents.get(dn)
        if record is not None:
            was = record.available
            record.held = True
            self._settle(record, was, now)

    def release(self, dn: str, now: float) -> None:
        record = self.agents.get(dn)
        if record is not None and record.held:
            record.held = False
            self._settle(record, False, now)

    # -- routing decisions --------------------------------------------------------------
    def pick(self, strategy: Strategy, site: str | None, *, overflow: bool,
             exclude: Iterable[str] = ()) -> AgentRecord | None:
        """The agent a call of ``strategy`` goes to: among the available agents
        with the skill (at ``min-level`` or more), those of ``site`` first
        unless ``overflow`` (site preference off, or the call waited
        ``overflow-after``); longest idle or least occupied, across every site
        or (``spread = "site"``) in the site with most available agents first."""
        by_site = self._idle.get(strategy.skill or _ANY)
        if not by_site:
            return None
        excluded = exclude if isinstance(exclude, set | frozenset) else set(exclude)
        if strategy.site_preference and site and not overflow:
            sites: Iterable[dict[str, None]] = (by_site.get(site) or {},)
        elif strategy.spread == "site":
            # the site with the most available agents of the skill first
            ranked = sorted(by_site.values(), key=len, reverse=True)
            for dns in ranked:
                picked = self._best((dns,), strategy, excluded)
                if picked is not None:
                    return picked
            return None
        else:
            sites = by_site.values()
        return self._best(sites, strategy, excluded)

    def _best(self, sites: Iterable[dict[str, None]], strategy: Strategy,
              excluded: set[str] | frozenset[str]) -> AgentRecord | None:
        best: AgentRecord | None = None
        if strategy.order == "longest-idle":
            for dns in sites:
                first = next(self._qualified(dns, strategy, excluded), None)
                if first is not None and (best is None or first.idle_since < best.idle_since):
                    best = first
            return best
        for dns in sites:  # least-occupied: fewest calls handled, then longest idle
            for record in self._qualified(dns, strategy, excluded):
                if best is None or (record.handled, record.idle_since) < (best.handled,
                                                                          best.idle_since):
                    best = record
        return best

    def _qualified(self, dns: dict[str, None], strategy: Strategy,
                   excluded: set[str] | frozenset[str]) -> Iterator[AgentRecord]:
        agents = self.agents
        skill, level = strategy.skill, strategy.min_level
        for dn in dns:
            if dn in excluded:
                continue
            record = agents[dn]
            if skill and record.skills.get(skill, 0) < level:
                continue
            yield record

    def by_site(self) -> dict[str, dict[str, int]]:
        """Agent counts per site and state, for the wallboard."""
        counts: dict[str, dict[str, int]] = {}
        for record in self.agents.values():
            site = counts.setdefault(record.site or "unknown", {
                "ready": 0, "busy": 0, "not-ready": 0, "reserved": 0})
            site[record.state()] += 1
        return counts

    # -- internals --------------------------------------------------------------------
    def _settle(self, record: AgentRecord, was: bool, now: float) -> None:
        """Keep the index in step after a change (``was``: available before it)."""
        now_available = record.available
        if was and not now_available:
            self._unindex(record)
        elif now_available and not was:
            record.idle_since = now
            self._index(record)

    def _index(self, record: AgentRecord) -> None:
        for skill in (_ANY, *record.skills):
            self._idle.setdefault(skill, {}).setdefault(record.site, {})[record.dn] = None

    def _unindex(self, record: AgentRecord) -> None:
        for skill in (_ANY, *record.skills):
            sites = self._idle.get(skill)
            if sites is not None:
                dns = sites.get(record.site)
                if dns is not None:
                    dns.pop(record.dn, None)


@dataclass(slots=True, eq=False)
class QueuedCall:
    """A call waiting in a virtual queue for an agent."""

    conn_id: str
    routing_point: str
    node: str  # the sip-server that holds the call
    priority: int
    arrived: float
    order: int
    geo_location: str | None = None
    user_data: Mapping[str, Any] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)  # agents that refused this call
    busy: bool = False  # a reservation or route is in flight

    def waited(self, now: float) -> float:
        return now - self.arrived


class VirtualQueue:
    """The calls of one strategy, highest priority then oldest first."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.calls: dict[str, QueuedCall] = {}
        self._order = itertools.count()
        self.stats: dict[str, int] = dict.fromkeys(
            ("entered", "routed", "abandoned", "default-routed", "routed-elsewhere",
             "conflicts", "routed-in-target"), 0)

    def service_level(self) -> float | None:
        """The share of calls routed within ``service-level-target`` seconds (the
        router counts ``routed-in-target``), abandoned calls counting against
        it; None before the first."""
        done = self.stats["routed"] + self.stats["abandoned"]
        return round(self.stats["routed-in-target"] / done, 4) if done else None

    def add(self, conn_id: str, routing_point: str, node: str, now: float, *,
            user_data: Mapping[str, Any] | None = None,
            geo_location: str | None = None) -> QueuedCall:
        call = QueuedCall(conn_id, routing_point, node,
                          self.strategy.call_priority(user_data), now, next(self._order),
                          geo_location, dict(user_data or {}))
        self.calls[conn_id] = call
        self.stats["entered"] += 1
        return call

    def remove(self, conn_id: str, outcome: str) -> QueuedCall | None:
        call = self.calls.pop(conn_id, None)
        if call is not None and outcome in self.stats:
            self.stats[outcome] += 1
        return call

    def waiting(self) -> list[QueuedCall]:
        """Calls with no reservation in flight, in service order."""
        return sorted((c for c in self.calls.values() if not c.busy),
                      key=lambda c: (-c.priority, c.order))

    def overflow(self, call: QueuedCall, now: float) -> bool:
        """Whether the call may go to an agent of any site now."""
        return not self.strategy.site_preference or not call.geo_location \
            or call.waited(now) >= self.strategy.overflow_after

    def status(self, now: float) -> dict[str, Any]:
        oldest = min((c.arrived for c in self.calls.values()), default=None)
        return {"routing-points": list(self.strategy.routing_points),
                "skill": self.strategy.skill or None, "order": self.strategy.order,
                "waiting": len(self.calls),
                "oldest-wait": round(now - oldest, 3) if oldest is not None else 0.0,
                **self.stats}
