"""A whole dial plan: partitions, calling profiles and their assignments,
compiled for look-ups (docs/feature-server.md; guide: "Configuring dial-plan
in Feature Server", "Calling profiles and its associations").

* A **partition** is a named list of rules with ``active``, ``block``, a time
  zone, start/end dates, days of the week and hours. Only an active partition
  inside its window takes part; a match in a partition with ``block`` refuses
  the call (403).
* A **calling profile** lists partitions, first preferred when two partitions
  have the same pattern, and says where busy, no-answer and all calls of a DN
  go (``forward-busy``, ``forward-no-answer``, ``forward-all``: targets in the
  rule notation).
* **Assignments** attach a profile to the switch (``internal``, ``external``),
  a user, an extension, a trunk, a trunk group, a softswitch or a routing
  point; the most specific one given in a query applies (:data:`PRECEDENCE`).

:func:`compile_plan` checks everything and builds one :class:`DialPlan`, an
immutable object: a server swaps the reference in one assignment, so a
look-up sees the old plan or the new one, never half of each. Time comes in as
``now`` (seconds since the epoch); nothing here reads a clock.
"""

from __future__ import annotations

import datetime as dt
import gc
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocols.dialplan.errors import DialPlanError
from protocols.dialplan.pattern import PatternTrie
from protocols.dialplan.rules import (
    Action,
    Decision,
    Rule,
    Target,
    parse_rule,
    parse_target,
    split_rules,
)

__all__ = [
    "ASSIGNMENT_KINDS",
    "PRECEDENCE",
    "CallingProfile",
    "DialPlan",
    "Partition",
    "check_assignments",
    "check_name",
    "compile_plan",
    "parse_partition",
    "parse_profile",
]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: object kinds a calling profile attaches to, most specific first; the switch's
#: ``internal`` profile applies to callers inside the switch, ``external`` to others
PRECEDENCE = ("user", "extension", "softswitch", "trunk", "trunk-group", "routing-point")
ASSIGNMENT_KINDS = (*PRECEDENCE, "switch")
FORWARD_REASONS = ("busy", "no-answer", "all")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")
_PARTITION_KEYS = {"rules", "active", "block", "time-zone", "start-date", "end-date", "days",
                   "time-start", "time-end", "description"}
_PROFILE_KEYS = {"partitions", "forward-busy", "forward-no-answer", "forward-all",
                 "description"}


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DialPlanError(f"{what} name must be 1-64 of A-Z a-z 0-9 _ . -, got {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    rules: tuple[Rule, ...]
    active: bool = True
    block: bool = False
    time_zone: str | None = None
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    days: frozenset[int] = frozenset()  # 0 = Monday; empty: every day
    time_start: int = 0  # minutes after midnight
    time_end: int = 1440
    source: Mapping[str, Any] = field(default_factory=dict)

    def in_force(self, now: float) -> bool:
        """Active and inside its window at ``now`` (seconds since the epoch)."""
        if not self.active:
            return False
        zone = ZoneInfo(self.time_zone) if self.time_zone else dt.UTC
        local = dt.datetime.fromtimestamp(now, zone)
        if self.start_date is not None and local.date() < self.start_date:
            return False
        if self.end_date is not None and local.date() > self.end_date:
            return False
        if self.days and local.weekday() not in self.days:
            return False
        minute = local.hour * 60 + local.minute
        if self.time_start <= self.time_end:
            return self.time_start <= minute < self.time_end
        return minute >= self.time_start or minute < self.time_end  # across midnight


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise DialPlanError(f"{key} must be true or false, got {value!r}")
    return value


def _date(data: Mapping[str, Any], key: str) -> dt.date | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise DialPlanError(f"{key} must be YYYY-MM-DD, got {value!r}") from None


def _minutes(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key)
    if value is None or value == "":
        return default
    if value == "24:00":
        return 1440
    m = _HHMM.match(str(value))
    if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise DialPlanError(f"{key} must be HH:MM (00:00-24:00), got {value!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_partition(name: str, data: Mapping[str, Any]) -> Partition:
    """A partition from its JSON / TOML form (keys: docs/feature-server.md)."""
    where = f"partition {name}"
    try:
        check_name(name, "partition")
        if not isinstance(data, Mapping):
            raise DialPlanError("must be a table of options")
        unknown = set(data) - _PARTITION_KEYS
        if unknown:
            raise DialPlanError(f"unknown option(s) {', '.join(sorted(unknown))}")
        if "rules" not in data:
            raise DialPlanError("rules are required")
        raw = data["rules"]
        if not isinstance(raw, (str, list, tuple)):
            raise DialPlanError("rules must be a list of PATTERN=>TARGET or one text")
        rules: list[Rule] = []
        for i, text in enumerate(split_rules(raw), 1):
            try:
                rules.append(parse_rule(text))
            except DialPlanError as exc:
                raise exc.within(f"rule {i} {text[:80]!r}") from None
        zone = data.get("time-zone") or None
        if zone is not None:
            try:
                ZoneInfo(str(zone))
            except (ZoneInfoNotFoundError, ValueError):
                raise DialPlanError(f"unknown time-zone {zone!r}") from None
        days_raw = data.get("days") or []
        if isinstance(days_raw, str):
            days_raw = [d for d in re.split(r"[,\s]+", days_raw) if d]
        if not isinstance(days_raw, (list, tuple)):
            raise DialPlanError("days must be a list of mon..sun")
        days: set[int] = set()
        for day in days_raw:
            key = str(day).lower()[:3]
            if key not in DAYS:
                raise DialPlanError(f"days: expected mon..sun, got {day!r}")
            days.add(DAYS.index(key))
        start, end = _date(data, "start-date"), _date(data, "end-date")
        if start is not None and end is not None and end < start:
            raise DialPlanError("end-date is before start-date")
        return Partition(
            name=name, rules=tuple(rules), active=_bool(data, "active", True),
            block=_bool(data, "block", False), time_zone=str(zone) if zone else None,
            start_date=start, end_date=end, days=frozenset(days),
            time_start=_minutes(data, "time-start", 0), time_end=_minutes(data, "time-end", 1440),
            source=dict(data))
    except DialPlanError as exc:
        raise exc.within(where) from None


@dataclass(frozen=True, slots=True)
class CallingProfile:
    name: str
    partitions: tuple[str, ...]
    forward: Mapping[str, Target]  # reason ("busy", "no-answer", "all") -> target
    source: Mapping[str, Any] = field(default_factory=dict)


def parse_profile(name: str, data: Mapping[str, Any]) -> CallingProfile:
    where = f"calling profile {name}"
    try:
        check_name(name, "calling profile")
        if not isinstance(data, Mapping):
            raise DialPlanError("must be a table of options")
        unknown = set(data) - _PROFILE_KEYS
        if unknown:
            raise DialPlanError(f"unknown option(s) {', '.join(sorted(unknown))}")
        parts = data.get("partitions", [])
        if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) for p in parts):
            raise DialPlanError("partitions must be a list of partition names")
        if len(set(parts)) != len(parts):
            raise DialPlanError("partitions names a partition twice")
        forward: dict[str, Target] = {}
        for reason in FORWARD_REASONS:
            text = data.get(f"forward-{reason}")
            if text in (None, ""):
                continue
            if not isinstance(text, str):
                raise DialPlanError(f"forward-{reason} must be a target, got {text!r}")
            try:
                forward[reason] = parse_target(text)
            except DialPlanError as exc:
                raise exc.within(f"forward-{reason}") from None
        return CallingProfile(name, tuple(parts), forward, dict(data))
    except DialPlanError as exc:
        raise exc.within(where) from None


class DialPlan:
    """A compiled dial plan (immutable once built; see module doc)."""

    def __init__(self, partitions: Mapping[str, Partition],
                 profiles: Mapping[str, CallingProfile],
                 assignments: Mapping[str, Mapping[str, str]]) -> None:
        self.partitions = dict(partitions)
        self.profiles = dict(profiles)
        self.assignments = {k: dict(v) for k, v in assignments.items()}
        order = list(self.partitions)
        self._index = {name: i for i, name in enumerate(order)}
        self._order = tuple(self.partitions[n] for n in order)
        #: partition indexes per profile, in the profile's order; None = every partition
        self._profile_parts = {
            p.name: tuple(self._index[n] for n in p.partitions) for p in self.profiles.values()}
        self._all = tuple(range(len(order)))
        self.trie: PatternTrie[tuple[int, Rule]] = PatternTrie()
        self._regex: list[tuple[int, Rule]] = []
        self.rule_count = 0
        for i, part in enumerate(self._order):
            for rule in part.rules:
                if rule.pattern is not None:
                    self.trie.insert(rule.pattern, (i, rule))
                else:
                    self._regex.append((i, rule))
                self.rule_count += 1
        self._window_minute = -1
        self._in_force: tuple[bool, ...] = ()

    # ------------------------------------------------------------------ profiles

    def profile_for(self, subject: Mapping[str, str], *, external: bool = False) -> str | None:
        """The calling profile of a query: the most specific assignment among the
        objects named in ``subject`` (kind -> name), else the switch's."""
        for kind in PRECEDENCE:
            name = subject.get(kind)
            if name is not None:
                profile = self.assignments.get(kind, {}).get(name)
                if profile is not None:
                    return profile
        switch = self.assignments.get("switch", {})
        return switch.get("external" if external else "internal") or switch.get("internal")

    # ------------------------------------------------------------------ look-ups

    def _windows(self, now: float) -> tuple[bool, ...]:
        minute = int(now // 60)
        if minute != self._window_minute:
            # windows have minute resolution: evaluated once per minute, then shared
            self._in_force = tuple(p.in_force(now) for p in self._order)
            self._window_minute = minute
        return self._in_force

    def lookup(self, digits: str, profile: str | None, now: float) -> Decision:
        """What ``digits`` dialled under ``profile`` (None: every partition) means."""
        parts = self._profile_parts.get(profile, self._all) if profile else self._all
        in_force = self._windows(now)
        live = [i for i in parts if in_force[i]]
        if not live:
            return Decision(Action.NONE)
        rank = {i: r for r, i in enumerate(live)}

        def accept(values: list[tuple[int, Rule]]) -> tuple[int, Rule] | None:
            best: tuple[int, Rule] | None = None
            for value in values:
                r = rank.get(value[0])
                if r is not None and (best is None or r < rank[best[0]]):
                    best = value
            return best

        found = self.trie.first(digits, accept)
        if found is not None:
            return self._decide(found[0], found[1], digits, ())
        for r_index in live:
            for index, rule in self._regex:
                if index != r_index:
                    continue
                assert rule.regex is not None
                m = rule.regex.fullmatch(digits)
                if m is not None:
                    groups = tuple(g or "" for g in m.groups())
                    return self._decide(index, rule, digits, groups)
        return Decision(Action.NONE)

    def _decide(self, index: int, rule: Rule, digits: str, groups: tuple[str, ...]) -> Decision:
        part = self._order[index]
        if part.block:
            return Decision(Action.REJECT, code=403, partition=part.name, rule=rule.text)
        return rule.decide(digits, part.name, groups)

    def forward(self, dn: str, reason: str, profile: str | None) -> Decision:
        """Where a call to ``dn`` goes on ``reason`` (busy, no-answer, all) under
        ``profile``: NONE when the profile says nothing."""
        p = self.profiles.get(profile or "")
        target = p.forward.get(reason) if p is not None else None
        if target is None:
            return Decision(Action.NONE)
        if target.action is Action.ROUTE:
            return Decision(Action.ROUTE, target.number(dn), target.via, None, None,
                            f"forward-{reason}")
        return Decision(target.action, None, None, target.code, None, f"forward-{reason}")

    def summary(self) -> dict[str, Any]:
        return {"partitions": len(self.partitions), "profiles": len(self.profiles),
                "rules": self.rule_count, "regex_rules": len(self._regex)}


def compile_plan(partitions: Mapping[str, Mapping[str, Any]],
                 profiles: Mapping[str, Mapping[str, Any]],
                 assignments: Mapping[str, Any], *,
                 previous: DialPlan | None = None) -> DialPlan:
    """Check and compile a plan from its JSON / TOML form; DialPlanError names the
    first problem. A partition whose source equals its source in ``previous`` is
    not read again (a reload where one partition changed reads that one)."""
    # Building makes hundreds of thousands of small containers and frees none: the
    # cyclic collector would walk the growing tree again and again (twice the time)
    paused = gc.isenabled()
    gc.disable()
    try:
        return _compile(partitions, profiles, assignments, previous)
    finally:
        if paused:
            gc.enable()


def _compile(partitions: Mapping[str, Mapping[str, Any]],
             profiles: Mapping[str, Mapping[str, Any]],
             assignments: Mapping[str, Any], previous: DialPlan | None) -> DialPlan:
    known = previous.partitions if previous is not None else {}
    parsed: dict[str, Partition] = {}
    for name, data in partitions.items():
        old = known.get(name)
        parsed[name] = old if old is not None and old.source == data else \
            parse_partition(name, data)
    parsed_profiles = {name: parse_profile(name, data) for name, data in profiles.items()}
    for profile in parsed_profiles.values():
        for part in profile.partitions:
            if part not in parsed:
                raise DialPlanError(f"no partition {part!r}", f"calling profile {profile.name}")
    checked = check_assignments(assignments, parsed_profiles)
    return DialPlan(parsed, parsed_profiles, checked)


def check_assignments(assignments: Mapping[str, Any],
                      profiles: Mapping[str, CallingProfile] | Sequence[str]
                      ) -> dict[str, dict[str, str]]:
    known = set(profiles)
    out: dict[str, dict[str, str]] = {}
    for kind, table in assignments.items():
        if kind not in ASSIGNMENT_KINDS:
            raise DialPlanError(f"unknown kind {kind!r} (one of {', '.join(ASSIGNMENT_KINDS)})",
                                "assignments")
        if not isinstance(table, Mapping):
            raise DialPlanError(f"{kind} must be a table of NAME = PROFILE", "assignments")
        for name, profile in table.items():
            if kind == "switch" and name not in ("internal", "external"):
                raise DialPlanError(f"switch takes internal and external, got {name!r}",
                                    "assignments")
            if profile not in known:
                raise DialPlanError(f"{kind} {name}: no calling profile {profile!r}",
                                    "assignments")
            out.setdefault(kind, {})[str(name)] = str(profile)
    return out
