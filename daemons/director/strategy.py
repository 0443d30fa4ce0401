"""The director's routing strategies, read from the cluster file
(docs/director.md, "Configuration"; guides: "Routing Principles", "Agent
Reservation", "Location-Based Routing"; Interaction Director: calls spread
across sites by the agents each site has).

``[applications.NAME.options]`` of a ``kind = "director"`` application::

    reservation-priority = 5        # AttributePriority of its RequestReserveAgent
    [applications.NAME.options.skills]       # AgentID -> skill levels
    a1001 = { sales = 5, english = 3 }
    [applications.NAME.options.strategies.8000]   # a VirtualQueue DN
    routing-points = ["5000"]       # their calls wait in this virtual queue
    skill = "sales"                 # agents with this skill ...
    min-level = 1                   # ... at this level or more ("" skill: any agent)
    order = "longest-idle"          # or "least-occupied"
    site-preference = true          # agents of the call's geo-location first ...
    overflow-after = 10             # ... for this many seconds, then every site
    spread = "agent"                # or "site": the site with most available agents first
    reservation-priority = 8        # this queue's agent_reservation ([__ROUTER__] of a VQ)
    priority-key = "priority"       # UserData key with the call's priority
    default-priority = 0

A strategy that names nothing that exists (a routing point or virtual queue
that is not a DN of that type, a skill no agent has) is refused when the file
is read, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from daemons.cluster.config import Application, ClusterConfig, DnType
from daemons.runtime.config import ConfigError, Section

__all__ = ["ORDERS", "DirectorConfig", "Strategy", "read_director_config"]

#: How a queue picks among the agents that qualify.
ORDERS = ("longest-idle", "least-occupied")
#: Across sites: the best agent wherever it is, or the site with the most
#: available agents first (Interaction Director: calls spread by the
#: availability each site reports).
SPREADS = ("agent", "site")
_STRATEGY_KEYS = {"routing-points", "skill", "min-level", "order", "site-preference",
                  "overflow-after", "priority-key", "default-priority", "spread",
                  "reservation-priority"}
_OPTION_KEYS = {"reservation-priority", "skills", "strategies"}


@dataclass(frozen=True, slots=True)
class Strategy:
    """How the calls of some routing points are distributed: one virtual queue."""

    queue: str  # the VirtualQueue DN
    routing_points: tuple[str, ...]
    skill: str = ""
    min_level: int = 1
    order: str = "longest-idle"
    site_preference: bool = True
    overflow_after: float = 10.0
    priority_key: str = "priority"
    default_priority: int = 0
    spread: str = "agent"
    #: the queue's own agent_reservation priority (None: the director's)
    reservation_priority: int | None = None

    def call_priority(self, user_data: Mapping[str, Any] | None) -> int:
        """The call's priority from its attached data (``priority-key``)."""
        value = (user_data or {}).get(self.priority_key)
        if isinstance(value, bool):
            return self.default_priority
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return self.default_priority


@dataclass(frozen=True, slots=True)
class DirectorConfig:
    """Everything the director reads of its application entry."""

    name: str
    reservation_priority: int
    skills: Mapping[str, Mapping[str, int]]  # AgentID -> skill -> level
    strategies: Mapping[str, Strategy]  # by virtual queue
    by_routing_point: Mapping[str, Strategy]


def read_director_config(config: ClusterConfig, app: Application) -> DirectorConfig:
    """The director's options, checked against the DNs of the switch."""
    section = Section(app.options, file=config.file, path=f"applications.{app.name}.options")
    section.check_unknown(_OPTION_KEYS)
    priority = section.get_int("reservation-priority", 0, min=0)
    skills_section = section.section("skills")
    skills: dict[str, Mapping[str, int]] = {}
    for agent_id in skills_section.keys():
        levels = skills_section.section(agent_id, required=True)
        skills[agent_id] = MappingProxyType(
            {skill: levels.get_int(skill, min=0) for skill in levels.keys()})
    known_skills = {skill for levels in skills.values() for skill in levels}
    strategies: dict[str, Strategy] = {}
    by_rp: dict[str, Strategy] = {}
    tables = section.section("strategies")
    for queue in tables.keys():
        s = tables.section(queue, required=True)
        s.check_unknown(_STRATEGY_KEYS)
        _require_dn(config, s, None, queue, DnType.VIRTUAL_QUEUE)
        rps = tuple(s.get_str_list("routing-points"))
        if not rps:
            raise s.error("routing-points", "names no routing point")
        for rp in rps:
            _require_dn(config, s, "routing-points", rp, DnType.ROUTING_POINT)
            if rp in by_rp:
                raise s.error("routing-points", f"routing point {rp} is already served by "
                                                f"virtual queue {by_rp[rp].queue}")
        skill = s.get_str("skill", "")
        if skill and skill not in known_skills:
            raise s.error("skill", f"no agent has skill {skill!r} (skills of "
                                   f"applications.{app.name}.options.skills: "
                                   f"{', '.join(sorted(known_skills)) or 'none'})")
        strategy = Strategy(
            queue=queue, routing_points=rps, skill=skill,
            min_level=s.get_int("min-level", 1, min=0),
            order=s.get_choice("order", ORDERS, "longest-idle"),
            site_preference=s.get_bool("site-preference", True),
            overflow_after=s.get_float("overflow-after", 10.0, min=0),
            priority_key=s.get_str("priority-key", "priority"),
            default_priority=s.get_int("default-priority", 0),
            spread=s.get_choice("spread", SPREADS, "agent"),
            reservation_priority=(s.get_int("reservation-priority", min=0)
                                  if "reservation-priority" in s else None),
        )
        strategies[queue] = strategy
        for rp in rps:
            by_rp[rp] = strategy
    if not strategies:
        raise section.error("strategies", "the director has no strategy (no virtual queue)")
    return DirectorConfig(app.name, priority, MappingProxyType(skills),
                          MappingProxyType(strategies), MappingProxyType(by_rp))


def _require_dn(config: ClusterConfig, s: Section, key: str | None, dn: str,
                kind: DnType) -> None:
    entry = config.dns.get(dn)
    if entry is None:
        raise ConfigError(s.file, s.key(key) if key else s.path,
                          f"{dn} is not a DN of the switch (a {kind.value} DN is needed)")
    if entry.type is not kind:
        raise ConfigError(s.file, s.key(key) if key else s.path,
                          f"DN {dn} is a {entry.type.value}, not a {kind.value}")
