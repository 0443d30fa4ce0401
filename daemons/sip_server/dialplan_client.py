"""The node's dial-plan client (guide: "Configuring dial-plan DNs", "Configuring
SIP Servers", option ``dial-plan``; docs/feature-server.md, "The nodes' query").

For a dialled number that is not a DN of the switch, for a DN before it
rings (its ``forward-all``) and for a DN that is busy or does not answer, the
node asks its data centre's feature-server:
``GET URL?digits=D&caller=C&geo-location=G[&reason=all|busy|no-answer]``. The
Dial Plan DN is the node's ``dial-plan`` option, else the feature-server DN of
the node's geo-location (then those of the other data centres, last); its
``url``, ``url-1`` ... ``url-N`` are tried in turn. A URL that failed
(connection refused, timeout, 5xx, an answer that is not a decision) is
skipped for :data:`RETRY_AFTER` seconds unless every URL failed. When none
answers the look-up fails: a log line, a count in
``sipcluster_dialplan_queries_total{result="failed"}``, and the caller gets
503; a DN whose forward-all look-up failed rings as if it had no profile, so
extension-to-extension calls go on as before.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from daemons.cluster.config import Application, ClusterConfig, DnType
from daemons.runtime.config import ConfigError
from daemons.runtime.management import Metrics

__all__ = ["DialPlanAnswer", "DialPlanClient", "dial_plan_urls", "is_dialable"]

#: seconds a feature-server that failed is passed over
RETRY_AFTER = 5.0
#: seconds one query may take before the next URL is tried
QUERY_TIMEOUT = 1.0
ACTIONS = ("route", "voicemail", "reject", "none")


@dataclass(frozen=True)
class DialPlanAnswer:
    """A feature-server's decision (docs/feature-server.md, "The nodes' query")."""

    action: str
    number: str | None = None
    via: str | None = None
    code: int | None = None
    sip: str | None = None  # HOST:PORT of the feature-server's voicemail
    rule: str | None = None
    url: str | None = None  # which feature-server answered


#: a number a router may send a call to when it is no DN of the switch: the dial
#: plan routes it like a dialled external number (E.164 or digits, * and #)
_DIALABLE = re.compile(r"\+?[0-9*#]{1,32}")


def is_dialable(number: str) -> bool:
    """Whether ``number`` looks like a number the dial plan may route (not a DN name)."""
    return _DIALABLE.fullmatch(number) is not None


def dial_plan_urls(config: ClusterConfig, app: Application) -> list[str]:
    """The feature-server URLs a node queries, in fail-over order (may be empty)."""
    name = config.tserver_for(app.name).dial_plan
    if name is not None:
        dn = config.dns.get(name)
        if dn is None or dn.type is not DnType.VOIP_SERVICE or dn.service_type != \
                "feature-server":
            raise ConfigError(config.file, f"applications.{app.name}.tserver.dial-plan",
                              f"{name!r} is not a VoIPService DN with service-type "
                              "feature-server")
        candidates = [dn]
    else:
        # the node's data centre first; the others' last, so that external calls still
        # find a dial plan while every feature-server of the data centre is down
        services = [d for d in config.dns.values()
                    if d.type is DnType.VOIP_SERVICE and d.service_type == "feature-server"]
        candidates = sorted(services, key=lambda d: d.geo_location != app.geo_location)
    urls: list[str] = []
    for dn in candidates:
        for key in ("url", *(f"url-{n}" for n in range(1, 10))):
            value = dn.options.get(key)
            if isinstance(value, str) and value:
                if not value.startswith(("http://", "https://")):
                    raise ConfigError(config.file, f"dns.{dn.number}.{key}",
                                      f"expected an http:// URL, got {value!r}")
                urls.append(value)
    return urls


class DialPlanClient:
    """HTTP queries to the feature-servers of one Dial Plan DN, with fail-over."""

    def __init__(self, urls: list[str], *, geo_location: str | None, metrics: Metrics,
                 log: Any, timeout: float = QUERY_TIMEOUT) -> None:
        self.urls = urls
        self.geo_location = geo_location
        self.log = log
        self.timeout = timeout
        self._down_until: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self.m_queries = metrics.tally("dialplan_queries",
                                       "Dial-plan queries to the feature-servers, by result",
                                       ("result",))
        self.m_url_failures = metrics.tally(
            "dialplan_url_failures", "Dial-plan queries a feature-server URL did not answer",
            ("url",))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30))
        return self._session

    def _order(self) -> list[str]:
        now = time.monotonic()
        live = [u for u in self.urls if self._down_until.get(u, 0.0) <= now]
        return live + [u for u in self.urls if u not in live]

    async def query(self, digits: str, *, caller: str | None = None,
                    reason: str | None = None, trunk: str | None = None,
                    trunk_group: str | None = None, routing_point: str | None = None,
                    conn_id: str | None = None) -> DialPlanAnswer | None:
        """The decision for ``digits``, or None when no feature-server answered.
        The objects whose calling profiles may apply (guide: "Calling profiles
        and its associations"): ``trunk`` / ``trunk_group``, the Trunk or Trunk
        Group DN the call came in through; ``routing_point``, the Routing Point
        that routed the call."""
        params = {"digits": digits}
        if caller:
            params["caller"] = caller
        if reason:
            params["reason"] = reason
        if trunk:
            params["trunk"] = trunk
        if trunk_group:
            params["trunk-group"] = trunk_group
        if routing_point:
            params["routing-point"] = routing_point
        if self.geo_location:
            params["geo-location"] = self.geo_location
        for url in self._order():
            try:
                async with self._client().get(url, params=params) as resp:
                    if resp.status >= 500:
                        raise ValueError(f"HTTP {resp.status}")
                    body = await resp.json(content_type=None)
                    if resp.status >= 400:
                        # the feature-server refused the question itself: no other will differ
                        self.m_queries.labels("refused").inc()
                        self.log.warning("dial_plan_query_refused", url=url, digits=digits,
                                         status=resp.status, reason=body.get("error"),
                                         conn_id=conn_id)
                        return None
                    answer = _answer(body, url)
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
                self._down_until[url] = time.monotonic() + RETRY_AFTER
                self.m_url_failures.labels(url).inc()
                self.log.warning("dial_plan_query_failed", url=url, digits=digits,
                                 reason=str(exc) or type(exc).__name__, conn_id=conn_id)
                continue
            self._down_until.pop(url, None)
            self.m_queries.labels(answer.action).inc()
            self.log.info("dial_plan_answer", digits=digits, caller=caller, reason=reason,
                          action=answer.action, number=answer.number, via=answer.via,
                          code=answer.code, rule=answer.rule, url=url, conn_id=conn_id)
            return answer
        self.m_queries.labels("failed").inc()
        self.log.error("dial_plan_unavailable", digits=digits, caller=caller, urls=self.urls,
                       conn_id=conn_id)
        return None

    def available(self) -> bool:
        """Whether some URL has not failed within :data:`RETRY_AFTER` seconds."""
        now = time.monotonic()
        return any(self._down_until.get(u, 0.0) <= now for u in self.urls)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"urls": [{"url": u, "passed_over_for": max(0.0, self._down_until.get(u, 0) - now)}
                         for u in self.urls]}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _answer(body: Any, url: str) -> DialPlanAnswer:
    if not isinstance(body, dict) or body.get("action") not in ACTIONS:
        raise ValueError(f"not a dial-plan decision: {str(body)[:100]}")
    code = body.get("code")
    if code is not None and (not isinstance(code, int) or not 400 <= code <= 699):
        raise ValueError(f"bad reject code {code!r}")
    number = body.get("number")
    if body["action"] == "route" and not isinstance(number, str):
        raise ValueError("route without a number")
    return DialPlanAnswer(action=body["action"], number=number, via=body.get("via"),
                          code=code, sip=body.get("sip"), rule=body.get("rule"), url=url)
