"""Roaming calls: a call for a user who is logged on at another site of the
collective goes straight there (docs/collective.md, "Roaming calls"; guide:
CIC Multi-Site, "Roaming users").

When a node gets a call for an extension it cannot reach here -- not a DN of
this switch, or an agent DN with no registration on this node -- it asks its
site's collective application (``GET /locate/EXTENSION``). The answer:

* logged on at another site (or, with the hub down, last heard of there; or
  at home while logged off): the call leaves through the Trunk DN whose
  ``collective-site`` is that site's name, with the dialled extension and the
  original caller, without the IVR (no routing point, no dial plan);
* logged on at this site: the node rings the DN where the user's agent is
  logged in (read from the t-controllers' ``/status/dns``, ``agent-id``);
* no such user, a duplicate extension, no answer from the collective: the
  call goes on as before (the DN, the dial plan).

A call that came in over a trunk from another site is never sent to a site
again (no ping-pong while the sites' views differ for a moment).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import aiohttp

from daemons.cluster.config import AppKind, ClusterConfig, DnType
from daemons.runtime.management import Metrics

__all__ = ["Roaming", "RoamingTarget", "roam"]

#: seconds a lookup at the collective (or a t-controller) may take
LOOKUP_TIMEOUT = 1.0
#: seconds a collective that did not answer is not asked again (calls go on as
#: if there were none: no call waits for a collective cut off by a partition)
RETRY_AFTER = 10.0


@dataclass(frozen=True)
class RoamingTarget:
    """Where a roaming user's call goes: a DN of this switch, or a trunk to a site."""

    user: str
    site: str
    dn: str | None = None
    trunk: str | None = None


class Roaming:
    """The lookups of one node: its site's collective and t-controllers."""

    def __init__(self, config: ClusterConfig, app_name: str, *, metrics: Metrics,
                 log: Any) -> None:
        self.log = log
        app = config.applications[app_name]
        self.host = app.host
        collectives = config.by_kind(AppKind.COLLECTIVE)
        own = [c for c in collectives if c.geo_location == app.geo_location] or collectives
        self.collective_urls = [f"http://{c.host}:{c.port('http-port')}" for c in own
                                if c.port("http-port")]
        #: peer site name -> the Trunk DN to it
        self.site_trunks: dict[str, str] = {}
        for dn in config.dns.values():
            site = dn.options.get("collective-site")
            if dn.type is DnType.TRUNK and isinstance(site, str) and site:
                self.site_trunks[site] = dn.number
        self._down_until: dict[str, float] = {}
        self.tc_urls = [f"http://{t.host}:{t.port('http-port')}/status/dns"
                        for t in config.by_kind(AppKind.T_CONTROLLER) if t.port("http-port")]
        self.m_lookups = metrics.tally(
            "roaming_lookups", "Collective lookups for extensions not reachable here, by outcome",
            ("outcome",))

    @classmethod
    def from_config(cls, config: ClusterConfig, app_name: str, *, metrics: Metrics,
                    log: Any) -> Roaming | None:
        """None when the switch has no collective application (no roaming)."""
        if not config.by_kind(AppKind.COLLECTIVE):
            return None
        return cls(config, app_name, metrics=metrics, log=log)

    async def _get(self, session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
        async with session.get(url) as resp:
            body = await resp.json(content_type=None) if resp.status in (200, 404, 409) \
                else None
            return resp.status, body

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT),
            connector=aiohttp.TCPConnector(local_addr=(self.host, 0), force_close=True))

    async def locate(self, extension: str, *, dn_here: bool, from_site: bool,
                     conn_id: str | None = None) -> RoamingTarget | None:
        """Where a call to ``extension`` goes, or None: as if there were no collective.
        ``dn_here``: the extension is an agent DN of this switch (its user is at home
        unless the collective says otherwise); ``from_site``: the call came in over a
        trunk from another site of the collective."""
        started = time.monotonic()
        where = None
        urls = [u for u in self.collective_urls if self._down_until.get(u, 0.0) <= started]
        if not urls:
            self.m_lookups.labels("unavailable").inc()
            return None
        async with self._session() as session:
            for url in urls:
                try:
                    status, where = await self._get(session, f"{url}/locate/{extension}")
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self._down_until[url] = time.monotonic() + RETRY_AFTER
                    self.log.warning("roaming_collective_unavailable", url=url,
                                     extension=extension, error=str(exc) or type(exc).__name__,
                                     retry_after=RETRY_AFTER)
                    continue
                if status != 200:
                    self.m_lookups.labels("unknown" if status == 404 else "refused").inc()
                    return None
                break
            else:
                self.m_lookups.labels("unavailable").inc()
                return None
            if not isinstance(where, dict):
                self.m_lookups.labels("refused").inc()
                return None
            user, site = str(where.get("user") or ""), str(where.get("site_name") or "")
            if not where.get("local"):
                trunk = self.site_trunks.get(site)
                if from_site or trunk is None:
                    self.m_lookups.labels("no-trunk" if trunk is None else "loop").inc()
                    self.log.warning("roaming_not_forwarded", conn_id=conn_id,
                                     extension=extension, site=site, user=user,
                                     reason="no Trunk DN with this collective-site"
                                     if trunk is None else "came in from another site")
                    return None
                self.m_lookups.labels("other-site").inc()
                self.log.info("roaming_call", conn_id=conn_id, extension=extension, user=user,
                              site=site, trunk=trunk, source=where.get("source"),
                              hub_connected=where.get("hub_connected"),
                              ms=round((time.monotonic() - started) * 1000, 1))
                return RoamingTarget(user=user, site=site, trunk=trunk)
            if dn_here:
                self.m_lookups.labels("home").inc()
                return None
            dn = await self._agent_dn(session, user)
            if dn is None:
                self.m_lookups.labels("not-logged-in").inc()
                self.log.info("roaming_agent_not_found", conn_id=conn_id, extension=extension,
                              user=user)
                return None
            self.m_lookups.labels("this-site").inc()
            self.log.info("roaming_call", conn_id=conn_id, extension=extension, user=user,
                          site=site, dn=dn, source=where.get("source"))
            return RoamingTarget(user=user, site=site, dn=dn)

    async def _agent_dn(self, session: aiohttp.ClientSession, user: str) -> str | None:
        """The DN where agent ``user`` is logged in at one of this site's t-controllers."""
        wanted = user.lower()
        for url in self.tc_urls:
            try:
                status, page = await self._get(session, url)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if status != 200 or not isinstance(page, dict):
                continue
            for dn, entry in (page.get("dns") or {}).items():
                agent = str(entry.get("agent-id") or "").lower() if isinstance(entry, dict) \
                    else ""
                if agent and (agent == wanted or agent.partition("@")[0] == wanted):
                    return str(dn)
        return None


#: each session controller's lookups, made at its first roaming question
_ROAMING: WeakKeyDictionary[Any, Roaming | None] = WeakKeyDictionary()


async def roam(session: Any, call: Any, origin: Any, dest: str, *,
               dn_here: bool) -> RoamingTarget | None:
    """The node's hook (daemons/sip_server/dialing.py): where the call to ``dest``
    goes when its user roams, None to carry on as before."""
    if session not in _ROAMING:
        _ROAMING[session] = Roaming.from_config(
            session.config, session.server.app_name, metrics=session.server.metrics,
            log=session.log)
    roaming = _ROAMING[session]
    if roaming is None or not roaming.collective_urls:
        return None
    from_site = False
    if origin.dn is None and origin.incoming is not None and session.trunks is not None:
        trunk = session.trunks.by_address(origin.incoming.flow.remote[0])
        from_site = trunk is not None and trunk.name in roaming.site_trunks.values()
    return await roaming.locate(dest, dn_here=dn_here, from_site=from_site,
                                conn_id=call.conn_id)
