"""REGISTER and digest authentication of the Session Controller (guide: "SIP
Server in Cluster Mode"; docs/node.md).

REGISTER (RFC 3261 §10.3): digest authentication against the DN's password in
the switch realm (RFC 7616 / 8760), the same 401 for an unknown DN and a wrong
password, ``sip-enable-strict-auth`` refusing empty passwords and passwords
equal to the DN; bindings in :class:`Registrar` (Path, RFC 3327 §5.3); the
DN's service state goes to the paired t-controller. The same digest check
answers INVITEs from phones with 407.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.runtime.tlib_server import TLibConnection
from daemons.sip_server.registrar import RegisterError
from daemons.sip_server.session import AGENT_TYPES, SessionBase
from protocols.sip.headers import parse_name_addr
from protocols.sip.message import Request, Response

__all__ = ["Registration"]


class Registration(SessionBase):
    """Bindings and digest authentication of the node's phones."""

    def is_registered(self, dn: str) -> bool:
        return bool(self.registrar.bindings(dn, self._now()))

    def _password(self, dn: str) -> str | None:
        entry = self.config.dns.get(dn)
        if entry is None or entry.type not in AGENT_TYPES:
            return None
        password = entry.password
        if self.config.strict_auth(dn, self.server.app_name) and (
                not password or password == dn):
            return None  # sip-enable-strict-auth: such a password never matches
        return password

    def _needs_auth(self, dn: str) -> bool:
        entry = self.config.dns.get(dn)
        if entry is None or entry.type not in AGENT_TYPES:
            return True  # unknown: challenge like any DN, never accept
        return bool(entry.password) or self.config.strict_auth(dn, self.server.app_name)

    def _authenticate(self, inc: IncomingRequest, dn: str, header: str) -> bool | None:
        """True when authenticated, None when challenged/refused (response already chosen)."""
        value = inc.request.headers.get(header)
        if value is None:
            return None
        result = self.auth.verify(inc.method, value, now=time.time(),
                                  password_lookup=lambda user: self._password(dn)
                                  if user == dn else None,
                                  algorithms=self._accepted_algorithms(dn))
        if not result.ok:
            reason = result.reason.value if result.reason is not None else "unknown"
            self.m_auth_failures.labels(inc.method, reason).inc()
            self.log.info("sip_auth_failed", method=inc.method, dn=dn, reason=reason,
                          peer=f"{inc.flow.remote[0]}:{inc.flow.remote[1]}")
            inc.request.headers.set("X-Stale", "true" if result.stale else "false")
            return None
        return True

    def _accepted_algorithms(self, dn: str) -> tuple[str, ...]:
        entry = self.config.dns.get(dn)
        narrowed = entry.digest_algorithms if entry is not None else None
        return narrowed or self.auth.algorithms

    def _challenge(self, inc: IncomingRequest, status: int, dn: str) -> Response:
        stale = inc.request.headers.get("X-Stale") == "true"
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        self.m_refused.labels(inc.method, str(status)).inc()
        offer = self.auth_policy.offer(inc.request.headers.get("User-Agent"),
                                       self._accepted_algorithms(dn))
        return inc.response(status, headers=[
            (name, v) for v in self.auth.challenge(time.time(), stale, offer)])

    def _register(self, inc: IncomingRequest) -> Response:
        req = inc.request
        dn = req.to.sip_uri.user or ""
        if self._needs_auth(dn):
            ok = dn in self.config.dns and self._authenticate(inc, dn, "Authorization")
            if not ok:
                self.m_registrations.labels("challenged").inc()
                return self._challenge(inc, 401, dn)
        entry = self.config.dns[dn]
        now = self._now()
        try:
            result = self.registrar.apply(
                dn, req.contacts, req.expires, now, call_id=req.call_id, cseq=req.cseq.number,
                path=[p.uri for p in _path(req)])
        except RegisterError as exc:
            self.m_registrations.labels("refused").inc()
            headers = [("Min-Expires", str(exc.min_expires))] if exc.min_expires else []
            return self._refuse(inc, exc.status, exc.reason, headers)
        self.m_registrations.labels("ok").inc()
        self.m_registered.set(len(self.registrar.table))
        self.log.info("sip_registered", dn=dn, bindings=len(result.bindings),
                      peer=f"{inc.flow.remote[0]}:{inc.flow.remote[1]}")
        if entry.contact == "*":
            if result.came_in_service:
                b = result.bindings[0]
                self.server.dn_event("EventDNBackInService", dn, {
                    "contact": b.contact, "expires": b.expires_in(now), "ownership": "sip"})
            elif result.went_out_of_service:
                self.server.dn_event("EventDNOutOfService", dn, {"ownership": "sip"})
        headers = [("Contact", f"<{b.contact}>;expires={b.expires_in(now)}")
                   for b in result.bindings]
        headers.append(("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())))
        return inc.response(200, headers=headers)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for dn in self.registrar.expire(self._now()):
                self.log.info("sip_registration_expired", dn=dn)
                entry = self.config.dns.get(dn)
                if entry is not None and entry.contact == "*":
                    self.server.dn_event("EventDNOutOfService", dn, {"ownership": "sip"})
            self.m_registered.set(len(self.registrar.table))

    def announce_registrations(self, conn: TLibConnection) -> None:
        """Right after the t-controller link comes up: one EventDNBackInService per DN."""
        now = self._now()
        for dn in self.registrar.registered(now):
            entry = self.config.dns.get(dn)
            if entry is None or entry.contact != "*":
                continue
            b = self.registrar.bindings(dn, now)[0]
            self.server.send_dn_event_to(conn, "EventDNBackInService", dn, {
                "contact": b.contact, "expires": b.expires_in(now), "ownership": "sip"})

    def status_registrations(self) -> dict[str, Any]:
        now = self._now()
        return {dn: [{"contact": b.contact, "expires": b.expires_in(now)}
                     for b in self.registrar.bindings(dn, now)]
                for dn in self.registrar.registered(now)}


def _path(request: Request) -> list[Any]:
    """Path header values (RFC 3327 §5.3): the route back to the registering phone."""
    out = []
    for value in request.headers.get_all("Path"):
        out.append(parse_name_addr(value))
    return out
