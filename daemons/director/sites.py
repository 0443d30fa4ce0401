"""Monitored sites (docs/director.md, "Monitored servers"; guide: Interaction
Director Monitored Server — a Director Server monitors the availability of
agent resources on one or more Monitored Servers and spreads calls across
the sites; each site stays autonomous without it). Sans-I/O: time comes in
as ``now``.

A **Monitored Server** is a site's own director. :func:`site_report` is what
it reports: available agents per skill and, per virtual queue, the calls
waiting, the oldest wait and the service level (the share of calls answered
within ``service-level-target`` seconds, abandoned calls counting against
it). The Director Server asks for it with T-Library ``RequestQueryAddress``
every ``report-interval`` and gets ``EventAddressInfo``, the report in
``AttributeExtensions`` (:func:`parse_report` checks it).

:class:`SiteBoard` is the Director Server's view: the last report of each
monitored server; a site whose report is older than ``site-stale-after``
is left out of routing until it reports again. :meth:`SiteBoard.pick`
sends a call to the fresh site with the most agents of the skill available,
less the calls already sent there since its report (so a burst does not all
land on one site before the next report shows those agents busy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemons.director.queue import AgentPool, VirtualQueue

__all__ = ["BadSiteReport", "MonitoredSite", "QueueFigures", "SiteBoard", "SiteReport",
           "parse_report", "site_report"]

#: the key of the count of every available agent, whatever its skills
ANY_SKILL = "*"
#: the most skills and queues a report may carry (bad input is refused, not kept)
MAX_ENTRIES = 1000


class BadSiteReport(ValueError):
    """A monitored server's report is not one (the reason says why)."""


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """One virtual queue of a site, as its wallboard shows it."""

    waiting: int
    oldest_wait: float
    service_level: float | None  # 0..1, None before any call was answered or abandoned


@dataclass(frozen=True, slots=True)
class SiteReport:
    """What a monitored server reports."""

    site: str
    available: Mapping[str, int]  # skill (ANY_SKILL: any) -> agents available
    logged_in: int
    queues: Mapping[str, QueueFigures]

    def to_map(self) -> dict[str, Any]:
        return {"site": self.site, "available": dict(self.available),
                "logged-in": self.logged_in,
                "queues": {q: {"waiting": f.waiting, "oldest-wait": f.oldest_wait,
                               "service-level": f.service_level}
                           for q, f in self.queues.items()}}


def site_report(site: str, pool: AgentPool, queues: Iterable[VirtualQueue],
                now: float) -> SiteReport:
    """This director's report as a monitored server of ``site`` (its agents of
    that site only, when agents of several sites are in its view)."""
    available: dict[str, int] = {ANY_SKILL: 0}
    logged_in = 0
    for record in pool.agents.values():
        if record.site and site and record.site != site:
            continue
        logged_in += 1
        if record.available:
            available[ANY_SKILL] += 1
            for skill, level in record.skills.items():
                if level > 0:
                    available[skill] = available.get(skill, 0) + 1
    figures = {}
    for queue in queues:
        oldest = min((c.arrived for c in queue.calls.values()), default=None)
        figures[queue.strategy.queue] = QueueFigures(
            len(queue.calls), round(now - oldest, 3) if oldest is not None else 0.0,
            queue.service_level())
    return SiteReport(site, available, logged_in, figures)


def parse_report(data: Any) -> SiteReport:
    """A report from ``AttributeExtensions``; :class:`BadSiteReport` if it is not one."""
    if not isinstance(data, Mapping):
        raise BadSiteReport("no report (AttributeExtensions is not a map)")
    site = data.get("site")
    available = data.get("available")
    queues = data.get("queues", {})
    logged_in = data.get("logged-in", 0)
    if not isinstance(site, str) or not site:
        raise BadSiteReport("the report names no site")
    if not isinstance(available, Mapping) or len(available) > MAX_ENTRIES or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in available.items()):
        raise BadSiteReport("available: expected a map of skill -> count (>= 0)")
    if not isinstance(logged_in, int) or isinstance(logged_in, bool) or logged_in < 0:
        raise BadSiteReport("logged-in: expected a count")
    if not isinstance(queues, Mapping) or len(queues) > MAX_ENTRIES:
        raise BadSiteReport("queues: expected a map of virtual queue -> figures")
    figures: dict[str, QueueFigures] = {}
    for name, q in queues.items():
        if not isinstance(name, str) or not isinstance(q, Mapping):
            raise BadSiteReport(f"queues.{name}: expected a map")
        waiting, oldest, level = q.get("waiting"), q.get("oldest-wait"), q.get("service-level")
        if not isinstance(waiting, int) or isinstance(waiting, bool) or waiting < 0 \
                or not isinstance(oldest, int | float) or isinstance(oldest, bool) \
                or not (level is None or (isinstance(level, int | float)
                                          and not isinstance(level, bool)
                                          and 0 <= level <= 1)):
            raise BadSiteReport(f"queues.{name}: waiting, oldest-wait and service-level "
                                "(0..1 or null) expected")
        figures[name] = QueueFigures(waiting, float(oldest),
                                     float(level) if level is not None else None)
    return SiteReport(site, dict(available), logged_in, figures)


@dataclass(slots=True)
class MonitoredSite:
    """The Director Server's view of one monitored server."""

    name: str
    route_to: str
    report: SiteReport | None = None
    reported_at: float | None = None
    sent_since_report: int = 0  # calls routed to the site since its last report
    routed: int = 0  # calls routed to the site (the guide's Interserver Routes)
    link: bool = False
    refused_reports: int = 0
    last_error: str | None = field(default=None)

    def fresh(self, now: float, stale_after: float) -> bool:
        return self.reported_at is not None and now - self.reported_at <= stale_after

    def free(self, skill: str) -> int:
        """Agents of ``skill`` available per the report, less the calls sent since."""
        if self.report is None:
            return 0
        return self.report.available.get(skill or ANY_SKILL, 0) - self.sent_since_report


class SiteBoard:
    """Every monitored server's last report, and where the next call goes."""

    def __init__(self, sites: Mapping[str, str], stale_after: float) -> None:
        """``sites``: monitored server name -> the DN that reaches its site."""
        self.stale_after = stale_after
        self.sites = {name: MonitoredSite(name, route_to) for name, route_to in sites.items()}

    def reported(self, name: str, report: SiteReport, now: float) -> None:
        site = self.sites[name]
        site.report, site.reported_at, site.sent_since_report = report, now, 0

    def refused(self, name: str, reason: str) -> None:
        site = self.sites[name]
        site.refused_reports += 1
        site.last_error = reason

    def fresh(self, now: float) -> list[MonitoredSite]:
        return [s for s in self.sites.values() if s.fresh(now, self.stale_after)]

    def pick(self, skill: str, now: float,
             exclude: Iterable[str] = ()) -> MonitoredSite | None:
        """The fresh site with the most free agents of ``skill`` (none free: None);
        among equals, the one sent the fewest calls. ``exclude``: ``site:NAME``
        entries of sites that refused this call."""
        best: MonitoredSite | None = None
        best_key: tuple[int, int, str] | None = None
        for site in self.sites.values():
            if not site.fresh(now, self.stale_after) or f"site:{site.name}" in exclude:
                continue
            free = site.free(skill)
            if free <= 0:
                continue
            key = (-free, site.routed, site.name)
            if best_key is None or key < best_key:
                best, best_key = site, key
        return best

    def sent(self, site: MonitoredSite) -> None:
        site.sent_since_report += 1
        site.routed += 1

    def status(self, now: float) -> dict[str, Any]:
        """Per monitored server, and the guide's Enterprise Group Details: every
        skill's available agents and every queue's figures over the fresh sites."""
        sites: dict[str, Any] = {}
        enterprise: dict[str, int] = {}
        queues: dict[str, dict[str, Any]] = {}
        for site in self.sites.values():
            fresh = site.fresh(now, self.stale_after)
            report = site.report
            sites[site.name] = {
                "site": report.site if report else None,
                "state": "fresh" if fresh else ("stale" if report else "never-reported"),
                "age": round(now - site.reported_at, 3) if site.reported_at is not None
                else None,
                "link": site.link, "route-to": site.route_to, "routed": site.routed,
                "refused-reports": site.refused_reports,
                **(report.to_map() if report else {}),
            }
            if not fresh or report is None:
                continue
            for skill, count in report.available.items():
                enterprise[skill] = enterprise.get(skill, 0) + count
            for name, fig in report.queues.items():
                q = queues.setdefault(name, {"waiting": 0, "oldest-wait": 0.0, "sites": 0})
                q["waiting"] += fig.waiting
                q["oldest-wait"] = max(q["oldest-wait"], fig.oldest_wait)
                q["sites"] += 1
        return {"sites": sites, "enterprise-group-details": {"available": enterprise,
                                                             "queues": queues}}
