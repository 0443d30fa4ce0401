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
    spread = "agent"                # or "site": the site with most available agents first,
                                    # or "monitored-sites": to the monitored server
                                    # that reports most available agents (sites.py)
    reservation-priority = 8        # this queue's agent_reservation ([__ROUTER__] of a VQ)
    treatment = "Music"             # what a call hears while no agent is available
    treatment-parms = { MUSIC = "music/on_hold" }   # its AttributeTreatmentParms
    priority-key = "priority"       # UserData key with the call's priority
    default-priority = 0

    [applications.NAME.options.monitored-servers.Paris]   # a Monitored Server
    address = "10.1.0.80:7300"      # its director-port
    route-to = "9001"               # the DN a call for that site is routed to

A strategy that names nothing that exists (a routing point or virtual queue
that is not a DN of that type, a skill no agent has) is refused when the file
is read, with the reason; the same check refuses a strategy changed through
the HTTP API (:func:`read_strategy`, docs/director.md, "Director store").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from daemons.cluster.config import Application, ClusterConfig, DnType
from daemons.runtime.config import ConfigError, Section
from protocols.tlib.catalogue import TREATMENT_TYPES

__all__ = ["ORDERS", "DirectorConfig", "MonitoredServer", "Strategy", "read_director_config",
           "read_skills", "read_strategy", "strategy_table"]

#: How a queue picks among the agents that qualify.
ORDERS = ("longest-idle", "least-occupied")
#: Across sites: the best agent wherever it is, the site with the most
#: available agents first, or a monitored server's site (Interaction Director:
#: calls spread by the availability each site reports).
SPREADS = ("agent", "site", "monitored-sites")
_STRATEGY_KEYS = {"routing-points", "skill", "min-level", "order", "site-preference",
                  "overflow-after", "priority-key", "default-priority", "spread",
                  "reservation-priority", "treatment", "treatment-parms"}
_OPTION_KEYS = {"reservation-priority", "skills", "strategies", "store", "site",
                "monitored-servers", "report-interval", "site-stale-after",
                "service-level-target"}
_MONITORED_KEYS = {"address", "route-to"}


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
    #: RequestApplyTreatment for a call that waits with no agent available ("": none)
    treatment: str = ""
    treatment_parms: Mapping[str, str] = field(default_factory=dict)

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
class MonitoredServer:
    """A site's director this one monitors (Interaction Director's Monitored
    Server): where to ask for its report, where to send a call for that site."""

    name: str
    host: str
    port: int
    route_to: str  # a DN of this switch that reaches the site


@dataclass(frozen=True, slots=True)
class DirectorConfig:
    """Everything the director reads of its application entry."""

    name: str
    reservation_priority: int
    skills: Mapping[str, Mapping[str, int]]  # AgentID -> skill -> level
    strategies: Mapping[str, Strategy]  # by virtual queue
    by_routing_point: Mapping[str, Strategy]
    store: str = "none"  # sqlite:PATH, postgresql://..., or none
    site: str | None = None  # the geo-location it reports for as a monitored server
    monitored_servers: Mapping[str, MonitoredServer] = field(default_factory=dict)
    report_interval: float = 1.0
    site_stale_after: float = 3.0
    service_level_target: float = 20.0

    def with_strategies(self, strategies: Mapping[str, Strategy],
                        skills: Mapping[str, Mapping[str, int]] | None = None
                        ) -> DirectorConfig:
        """The same director with other strategies (and skills): the store's."""
        by_rp = {rp: s for s in strategies.values() for rp in s.routing_points}
        return DirectorConfig(
            self.name, self.reservation_priority,
            MappingProxyType(dict(self.skills if skills is None else skills)),
            MappingProxyType(dict(strategies)), MappingProxyType(by_rp), self.store,
            self.site, self.monitored_servers, self.report_interval, self.site_stale_after,
            self.service_level_target)


def read_director_config(config: ClusterConfig, app: Application) -> DirectorConfig:
    """The director's options, checked against the DNs of the switch."""
    section = Section(app.options, file=config.file, path=f"applications.{app.name}.options")
    section.check_unknown(_OPTION_KEYS)
    priority = section.get_int("reservation-priority", 0, min=0)
    skills = read_skills(section.section("skills"))
    monitored = _monitored_servers(config, section.section("monitored-servers"))
    strategies: dict[str, Strategy] = {}
    by_rp: dict[str, Strategy] = {}
    tables = section.section("strategies")
    for queue in tables.keys():
        strategy = read_strategy(config, tables.section(queue, required=True), queue, skills,
                                 by_rp, app_name=app.name, monitored=bool(monitored))
        strategies[queue] = strategy
        for rp in strategy.routing_points:
            by_rp[rp] = strategy
    store = _store(section, app.name)
    if not strategies and store == "none":
        # with a store, strategies may come from it (the HTTP API) instead
        raise section.error("strategies", "the director has no strategy (no virtual queue)")
    interval = section.get_float("report-interval", 1.0, min=0.05)
    return DirectorConfig(
        app.name, priority, MappingProxyType(skills), MappingProxyType(strategies),
        MappingProxyType(by_rp), store=store,
        site=section.get_optional_str("site") or app.geo_location,
        monitored_servers=MappingProxyType(monitored), report_interval=interval,
        site_stale_after=section.get_float("site-stale-after", 3 * interval, min=interval),
        service_level_target=section.get_float("service-level-target", 20.0, min=0))


def read_skills(section: Section) -> dict[str, Mapping[str, int]]:
    """``AgentID = { skill = level, ... }`` tables."""
    skills: dict[str, Mapping[str, int]] = {}
    for agent_id in section.keys():
        levels = section.section(agent_id, required=True)
        skills[agent_id] = MappingProxyType(
            {skill: levels.get_int(skill, min=0) for skill in levels.keys()})
    return skills


def read_strategy(config: ClusterConfig, s: Section, queue: str,
                  skills: Mapping[str, Mapping[str, int]], taken: Mapping[str, Strategy],
                  *, app_name: str, monitored: bool) -> Strategy:
    """One strategy table, checked: its queue a VirtualQueue DN, its routing
    points RoutingPoint DNs served by no other queue (``taken``), its skill one
    some agent has, ``spread = "monitored-sites"`` only with monitored servers.
    A :class:`ConfigError` names the key and the reason."""
    s.check_unknown(_STRATEGY_KEYS)
    _require_dn(config, s, None, queue, DnType.VIRTUAL_QUEUE)
    rps = tuple(s.get_str_list("routing-points"))
    if not rps:
        raise s.error("routing-points", "names no routing point")
    for rp in rps:
        _require_dn(config, s, "routing-points", rp, DnType.ROUTING_POINT)
        other = taken.get(rp)
        if other is not None and other.queue != queue:
            raise s.error("routing-points", f"routing point {rp} is already served by "
                                            f"virtual queue {other.queue}")
    known_skills = {skill for levels in skills.values() for skill in levels}
    skill = s.get_str("skill", "")
    spread = s.get_choice("spread", SPREADS, "agent")
    if skill and skill not in known_skills and spread != "monitored-sites":
        raise s.error("skill", f"no agent has skill {skill!r} (skills of "
                               f"applications.{app_name}.options.skills: "
                               f"{', '.join(sorted(known_skills)) or 'none'})")
    if spread == "monitored-sites" and not monitored:
        raise s.error("spread", "monitored-sites needs monitored-servers (none configured)")
    return Strategy(
        queue=queue, routing_points=rps, skill=skill,
        min_level=s.get_int("min-level", 1, min=0),
        order=s.get_choice("order", ORDERS, "longest-idle"),
        site_preference=s.get_bool("site-preference", True),
        overflow_after=s.get_float("overflow-after", 10.0, min=0),
        priority_key=s.get_str("priority-key", "priority"),
        default_priority=s.get_int("default-priority", 0),
        spread=spread,
        reservation_priority=(s.get_int("reservation-priority", min=0)
                              if "reservation-priority" in s else None),
        treatment=s.get_choice("treatment", ("", *TREATMENT_TYPES), ""),
        treatment_parms=MappingProxyType(_treatment_parms(s)),
    )


def _treatment_parms(s: Section) -> dict[str, str]:
    parms = s.section("treatment-parms")
    values = {key: parms.get_str(key) for key in parms.keys()}
    if values and not s.get_str("treatment", ""):
        raise s.error("treatment-parms", "given without a treatment")
    return values


def strategy_table(strategy: Strategy) -> dict[str, Any]:
    """A strategy as the table it is read from (the store's and the API's form)."""
    table: dict[str, Any] = {
        "routing-points": list(strategy.routing_points), "skill": strategy.skill,
        "min-level": strategy.min_level, "order": strategy.order,
        "site-preference": strategy.site_preference,
        "overflow-after": strategy.overflow_after, "priority-key": strategy.priority_key,
        "default-priority": strategy.default_priority, "spread": strategy.spread}
    if strategy.reservation_priority is not None:
        table["reservation-priority"] = strategy.reservation_priority
    if strategy.treatment:
        table["treatment"] = strategy.treatment
        table["treatment-parms"] = dict(strategy.treatment_parms)
    return table


def _monitored_servers(config: ClusterConfig, section: Section) -> dict[str, MonitoredServer]:
    servers: dict[str, MonitoredServer] = {}
    for name in section.keys():
        s = section.section(name, required=True)
        s.check_unknown(_MONITORED_KEYS)
        address = s.get_str("address")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise s.error("address", f"expected HOST:PORT (the site director's "
                                     f"director-port), got {address!r}")
        route_to = s.get_str("route-to")
        if route_to not in config.dns:
            raise s.error("route-to", f"{route_to} is not a DN of the switch (the DN that "
                                      "reaches the site)")
        servers[name] = MonitoredServer(name, host.strip("[]"), int(port), route_to)
    return servers


def _store(s: Section, name: str) -> str:
    from daemons.director.store import default_store

    value = s.get_str("store", default_store(name))
    if value != "none" and not value.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise s.error("store", f"expected sqlite:PATH, postgresql://... or none, got {value!r}")
    return value


def _require_dn(config: ClusterConfig, s: Section, key: str | None, dn: str,
                kind: DnType) -> None:
    entry = config.dns.get(dn)
    if entry is None:
        raise ConfigError(s.file, s.key(key) if key else s.path,
                          f"{dn} is not a DN of the switch (a {kind.value} DN is needed)")
    if entry.type is not kind:
        raise ConfigError(s.file, s.key(key) if key else s.path,
                          f"DN {dn} is a {entry.type.value}, not a {kind.value}")
