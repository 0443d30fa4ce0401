"""The registrar front of the sip-proxy (guide: "SIP Registration"; RFC 3261 §10.3).

A cluster node is the registrar: it authenticates the REGISTER and answers
it. The proxy passes the REGISTER on and keeps what it will need to reach
the phone: :func:`planned_bindings` reads the Contacts of the request as it
arrived (with the flow it came in on), :func:`granted_bindings` turns the
node's 2xx into the bindings to store (the expiry the node granted per
Contact, removals for Contacts it no longer lists, ``*`` removing every
binding of the AoR). :class:`RegistrarFront` is the proxy core's part that
uses them: choose a local node, add Path, store what the node granted. The
store and its replication are :mod:`daemons.sip_proxy.registrar` and
:mod:`daemons.sip_proxy.replication`.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from daemons.sip_proxy.flows import phone_side
from daemons.sip_proxy.forwarding import Forward, ProxySettings
from daemons.sip_proxy.registrar import Binding, BindingStore, aor_of
from daemons.sip_proxy.routing import Router
from daemons.sip_proxy.traits import trait
from protocols.sip.errors import ParseError
from protocols.sip.headers import unquote_param
from protocols.sip.message import Request, Response
from protocols.sip.transaction import TransactionKey
from protocols.sip.uri import format_host, parse_uri

__all__ = ["RegistrarFront", "granted_bindings", "normalised_uri", "planned_bindings"]


def planned_bindings(request: Request, aor: str, *, now: float, origin: str, transport: str,
                     received: str | None, default_expires: int,
                     proxy_name: str | None = None) -> list[Binding]:
    """The bindings ``request`` (a REGISTER) asks for, as this proxy would store them.

    ``received`` is the phone's flow (``host:port``) when it is behind NAT or
    not on UDP; ``proxy_name`` the data centre's proxy name the phone reached
    us by (:func:`~daemons.sip_proxy.flows.phone_side`); ``default_expires``
    applies without Expires (§10.3 step 7). A ``*`` Contact gives one ``*``
    entry (remove all).
    """
    header_expires = request.expires
    ua = request.headers.get("User-Agent")
    planned: list[Binding] = []
    for c in request.contacts:
        if c.is_star:
            return [Binding(aor, "*", now, now, origin)]
        raw = c.params.get("expires")
        expires = int(raw) if raw is not None and raw.isdigit() else (
            header_expires if header_expires is not None else default_expires)
        reg_id = c.params.get("reg-id")
        q = c.params.get("q")
        try:
            qv = float(q) if q is not None else None
        except ValueError:
            qv = None
        planned.append(Binding(
            aor, c.uri, now + expires, now, origin, transport, received, (),
            unquote_param(c.params.get("+sip.instance")),
            int(reg_id) if reg_id is not None and reg_id.isdigit() else None, ua, qv,
            proxy_name))
    return planned


def normalised_uri(text: str) -> str:
    """A Contact URI reduced to what identifies it (scheme, user, host, port)."""
    try:
        u = parse_uri(text.strip("<>"))
    except ParseError:
        return text
    return f"{u.scheme}:{u.user or ''}@{u.host.lower()}:{u.port or 5060}"


def granted_bindings(planned: list[Binding], response: Response, existing: Iterable[Binding],
                     *, now: float, stamp: float, origin: str) -> list[Binding]:
    """The bindings to store after the node's 2xx to the REGISTER of ``planned``.

    Each planned Contact gets the expiry the node granted (its Contact's
    ``expires``, else the response's Expires, else the planned one); one the
    node no longer lists, and every live binding of ``existing`` (the AoR's
    bindings) for a ``*``, becomes a removal stamped ``stamp``.
    """
    answered: dict[str, int | None] = {}
    try:
        for c in response.contacts:
            raw = c.params.get("expires")
            # the node usually echoes the contact as sent: compare the text
            # first, normalised URIs only when that fails
            answered[c.uri] = int(raw) if raw is not None and raw.isdigit() else None
        resp_expires = response.expires
    except ParseError:
        answered, resp_expires = {}, None
    normalise = bool(answered) and any(p.contact not in answered for p in planned
                                       if p.contact != "*")
    if normalise:
        answered = {normalised_uri(k): v for k, v in answered.items()}
    out: list[Binding] = []
    for p in planned:
        if p.contact == "*":
            out.extend(Binding(old.aor, old.contact, stamp, stamp, origin, old.transport,
                               old.received, old.path, old.instance, old.reg_id)
                       for old in existing if not old.removed)
            continue
        norm = normalised_uri(p.contact) if normalise else p.contact
        if answered and norm not in answered:
            expires_at = stamp  # the node no longer lists it: removed
        else:
            given = answered.get(norm)
            if given is None and resp_expires is not None:
                given = resp_expires
            expires_at = (now + given) if given is not None else p.expires_at
            expires_at = max(expires_at, stamp) if expires_at > now else stamp
        out.append(Binding(p.aor, p.contact, expires_at, stamp, origin, p.transport, p.received,
                           p.path, p.instance, p.reg_id, p.user_agent, p.q, p.proxy_name))
    return out


@trait
class RegistrarFront:
    """The registrar front of :class:`~daemons.sip_proxy.proxy.ProxyCore`: REGISTER
    from a phone goes to a node of the proxy's geo-location with a Path to the
    phone's flow (RFC 3327); the node's 2xx is stored and replicated."""

    settings: ProxySettings
    router: Router
    store: BindingStore
    on_binding: Callable[[Binding], None]
    requests: Any
    registrations: Any

    # provided by ProxyCore
    @abstractmethod
    def _respond(self, key: TransactionKey, request: Request, status: int,
                 reason: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        ...

    @abstractmethod
    def _forward(self, fwd: Forward, action: str, *, rr: dict[str, str] | None,
                 strip_node: bool = False, rr_name: str = "") -> None:
        ...

    @abstractmethod
    def _stamp(self) -> float:
        ...

    def _register(self, fwd: Forward, request: Request, transport: str,
                  reached_by: str = "") -> None:
        """Registrar front (guide: "SIP Registration"): pass REGISTER to a local node,
        remember what to store when it answers 2xx. ``reached_by``: the data
        centre's proxy name the phone's top Route named, if any."""
        to = request.to.sip_uri
        aor = aor_of(to.user, to.host if to.host.lower() != self.settings.host
                     else self.settings.domain)
        flow, proxy_name = phone_side(request, fwd.source, transport, reached_by)
        received = f"{format_host(fwd.source[0])}:{fwd.source[1]}" if flow else None
        planned = planned_bindings(request, aor, now=time.time(), origin=self.settings.name,
                                   transport=transport, received=received,
                                   default_expires=self.settings.registrar_default_timeout,
                                   proxy_name=proxy_name or None)
        fwd.register = planned
        fwd.path_supported = "Supported" in request.headers and "path" in [
            s.strip().lower() for s in request.headers.get_all("Supported")]
        nodes = self.router.candidates(request.call_id)
        nodes = [n for n in nodes if n.geo_location == self.settings.geo_location] or nodes
        if not nodes:
            self.requests.labels("REGISTER", "no_node").inc()
            self._respond(fwd.server_key, request, 503, "No Node In Service",
                          (("Retry-After", "5"),))
            return
        fwd.targets = [((n.host, n.port), n.transport, n) for n in nodes]
        # RFC 3327: the node learns the way back to the phone's flow
        ft = f";ft={flow}" if flow else ""
        fwd.prepend.append(
            ("Path", f"<sip:{format_host(self.settings.host)}:{self.settings.port};lr{ft}>"))
        self._forward(fwd, "register", rr=None)

    def _store_registration(self, fwd: Forward, response: Response) -> None:
        planned = fwd.register
        assert planned is not None
        existing = self.store.bindings_of(planned[0].aor) \
            if any(p.contact == "*" for p in planned) else []
        for b in granted_bindings(planned, response, existing, now=time.time(),
                                  stamp=self._stamp(), origin=self.settings.name):
            self._apply(b)

    def _apply(self, b: Binding) -> None:
        if self.store.apply(b):
            self.registrations.labels("removed" if b.removed else "stored").inc()
            self.on_binding(b)
