"""The dial plan a feature-server serves: where it comes from, how it is
reloaded, how a query is answered (docs/feature-server.md; guide:
"Configuring dial-plan in Feature Server").

Sources, later ones replacing earlier ones by name:

1. the cluster file, ``[applications.FS.options]``: ``partitions.NAME``,
   ``calling-profiles.NAME``, ``assignments.KIND.NAME = PROFILE``;
2. the store (provisioned through the API): partitions, calling profiles,
   assignments, and the ``calling-profile`` of users and DNs.

:meth:`DialPlanHolder.install` compiles a complete candidate in a worker
thread and swaps one reference: a look-up running meanwhile uses the old plan
to the end. A candidate that does not compile is refused with its reason and
the plan in force stays.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols.dialplan import Action, Decision, DialPlan, DialPlanError, compile_plan

__all__ = ["DialPlanHolder", "PlanSources", "Query"]

#: the options of ``[applications.FS.options]`` that hold the dial plan
PLAN_OPTIONS = ("partitions", "calling-profiles", "assignments")
REASONS = ("busy", "no-answer", "all")


@dataclass
class PlanSources:
    """The plain (JSON / TOML) form of a dial plan, before compiling."""

    partitions: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    assignments: dict[str, dict[str, str]] = field(default_factory=dict)
    #: DN -> user name, from the provisioned users
    users_by_dn: dict[str, str] = field(default_factory=dict)

    def copy(self) -> PlanSources:
        return PlanSources(dict(self.partitions), dict(self.profiles),
                           {k: dict(v) for k, v in self.assignments.items()},
                           dict(self.users_by_dn))

    @classmethod
    def merge(cls, options: Mapping[str, Any], stored: Mapping[str, Mapping[str, Any]]
              ) -> PlanSources:
        """The cluster file's options, then the store's objects over them."""
        src = cls()
        for key, target in (("partitions", src.partitions), ("calling-profiles", src.profiles)):
            table = options.get(key) or {}
            if not isinstance(table, Mapping):
                raise DialPlanError(f"{key} must be a table of NAME = {{...}}", "options")
            target.update(table)
        table = options.get("assignments") or {}
        if not isinstance(table, Mapping):
            raise DialPlanError("assignments must be a table of KIND.NAME = PROFILE", "options")
        for kind, names in table.items():
            if not isinstance(names, Mapping):
                raise DialPlanError(f"assignments.{kind} must be a table of NAME = PROFILE",
                                    "options")
            src.assignments.setdefault(kind, {}).update(names)
        src.partitions.update(stored.get("partition", {}))
        src.profiles.update(stored.get("calling-profile", {}))
        for key, body in stored.get("assignment", {}).items():
            kind, _, name = key.partition("/")
            src.assignments.setdefault(kind, {})[name] = body["calling-profile"]
        for name, user in stored.get("user", {}).items():
            for dn in user.get("dns", []):
                src.users_by_dn[dn] = name
            if user.get("calling-profile"):
                src.assignments.setdefault("user", {})[name] = user["calling-profile"]
        for number, dn in stored.get("dn", {}).items():
            if dn.get("user"):
                src.users_by_dn.setdefault(number, dn["user"])
            if dn.get("calling-profile"):
                kind = {"Trunk": "trunk", "TrunkGroup": "trunk-group",
                        "RoutingPoint": "routing-point"}.get(dn.get("type", ""), "extension")
                src.assignments.setdefault(kind, {})[number] = dn["calling-profile"]
        return src

    def compile(self, previous: DialPlan | None = None) -> DialPlan:
        return compile_plan(self.partitions, self.profiles, self.assignments,
                            previous=previous)


@dataclass(frozen=True)
class Query:
    """One question from a node: ``digits`` dialled by ``caller``; with ``reason``,
    where a call to the DN ``digits`` goes on busy / no-answer / all."""

    digits: str
    caller: str | None = None
    reason: str | None = None
    trunk: str | None = None
    trunk_group: str | None = None
    routing_point: str | None = None
    geo_location: str | None = None


class DialPlanHolder:
    """The plan in force and its sources (see module doc)."""

    def __init__(self, *, is_internal: Callable[[str], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self.is_internal = is_internal
        self.clock = clock
        self.sources = PlanSources()
        self.plan: DialPlan = self.sources.compile()
        self.loaded_at: float | None = None
        self.compile_cpu_seconds = 0.0
        self._lock = asyncio.Lock()

    async def install(self, candidate: PlanSources) -> DialPlan:
        """Compile ``candidate`` off the event loop and put it in force, or raise
        DialPlanError and keep the plan in force."""
        async with self._lock:
            plan, self.compile_cpu_seconds = await asyncio.to_thread(
                _timed_compile, candidate, self.plan)
            self.plan, self.sources = plan, candidate  # one swap: never half a plan
            self.loaded_at = self.clock()
            return plan

    async def check(self, candidate: PlanSources) -> DialPlan:
        """Compile ``candidate`` without putting it in force (DialPlanError if broken)."""
        return await asyncio.to_thread(candidate.compile, self.plan)

    def answer(self, query: Query) -> Decision:
        """The decision for one query against the plan in force."""
        plan, users = self.plan, self.sources.users_by_dn
        subject: dict[str, str] = {}
        if query.caller:
            subject["extension"] = query.caller
            user = users.get(query.caller)
            if user is not None:
                subject["user"] = user
        if query.trunk:
            subject["trunk"] = query.trunk
        if query.trunk_group:
            subject["trunk-group"] = query.trunk_group
        if query.routing_point:
            subject["routing-point"] = query.routing_point
        if query.reason is not None:
            # forwarding follows the called DN's own profile
            called: dict[str, str] = {"extension": query.digits}
            if query.digits in users:
                called["user"] = users[query.digits]
            return plan.forward(query.digits, query.reason, plan.profile_for(called))
        external = query.caller is None or not self.is_internal(query.caller)
        profile = plan.profile_for(subject, external=external)
        return plan.lookup(query.digits, profile, self.clock())

    def status(self) -> dict[str, Any]:
        return {**self.plan.summary(), "loaded_at": self.loaded_at,
                "partition_names": list(self.plan.partitions),
                "profile_names": list(self.plan.profiles)}


def _timed_compile(candidate: PlanSources, previous: DialPlan) -> tuple[DialPlan, float]:
    """Compile in a worker thread; the CPU seconds it took (wall time depends on
    how busy the event loop and the machine are, CPU time does not)."""
    started = time.thread_time()
    enabled = gc.isenabled()
    gc.disable()
    try:
        plan = candidate.compile(previous)
        # The plan is long-lived and acyclic: it leaves the cyclic collector's view,
        # so no later collection walks its objects (one pass over a 100,000-rule plan
        # holds the event loop about 0.6 s); an old plan is still freed by reference
        # counting. What else is alive at this moment is frozen with it: a reference
        # cycle among those objects that dies later is not reclaimed.
        gc.freeze()
    finally:
        if enabled:
            gc.enable()
    return plan, time.thread_time() - started


def decision_json(decision: Decision, *, voicemail_sip: str | None) -> dict[str, Any]:
    out = decision.as_dict()
    if decision.action is Action.VOICEMAIL and voicemail_sip is not None:
        out["sip"] = voicemail_sip
    return out
