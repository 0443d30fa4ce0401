"""The node's registrar: bindings per DN (RFC 3261 §10.3), with no I/O.

Time comes in as ``now``. A REGISTER that passed authentication is applied
with :meth:`Registrar.apply`; the result says whether the DN went from no
binding to some (``EventDNBackInService`` for the t-controller, docs/node.md
"DN service state") or from some to none (``EventDNOutOfService``).
:meth:`Registrar.expire` removes bindings whose time has come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from protocols.sip.headers import NameAddr

__all__ = ["Binding", "RegisterError", "RegisterResult", "Registrar"]


class RegisterError(ValueError):
    """A REGISTER the registrar refuses: ``status`` (400, 423) and ``reason``."""

    def __init__(self, status: int, reason: str, *, min_expires: int | None = None) -> None:
        self.status = status
        self.reason = reason
        self.min_expires = min_expires
        super().__init__(f"{status} {reason}")


@dataclass(slots=True)
class Binding:
    """One contact of a DN (§10.3 step 7): URI, expiry, Path (RFC 3327), q."""

    contact: str
    expires_at: float
    registered_at: float
    call_id: str = ""
    cseq: int = 0
    path: tuple[str, ...] = ()
    q: float = 1.0

    def expires_in(self, now: float) -> int:
        return max(0, round(self.expires_at - now))


@dataclass(slots=True)
class RegisterResult:
    """What a REGISTER changed for one DN."""

    dn: str
    bindings: list[Binding]
    came_in_service: bool = False
    went_out_of_service: bool = False


@dataclass
class Registrar:
    """Bindings per DN (§10.3): add, refresh, remove, ``*`` + ``Expires: 0``."""

    min_expires: int = 30
    max_expires: int = 3600
    default_expires: int = 3600
    table: dict[str, dict[str, Binding]] = field(default_factory=dict)

    def bindings(self, dn: str, now: float) -> list[Binding]:
        """Current bindings of ``dn``, most recently registered first."""
        current = [b for b in self.table.get(dn, {}).values() if b.expires_at > now]
        current.sort(key=lambda b: (-b.q, -b.registered_at))
        return current

    def registered(self, now: float) -> list[str]:
        """DNs with at least one live binding."""
        return [dn for dn in self.table if self.bindings(dn, now)]

    def apply(
        self,
        dn: str,
        contacts: Sequence[NameAddr],
        header_expires: int | None,
        now: float,
        *,
        call_id: str = "",
        cseq: int = 0,
        path: Sequence[str] = (),
    ) -> RegisterResult:
        """Apply one REGISTER's Contact list (§10.3 steps 6-8).

        An empty list is a query. Raises :class:`RegisterError` for ``*``
        with other contacts or a non-zero Expires (400), a bad ``expires``
        parameter (400) and an interval below ``min_expires`` (423).
        """
        before = bool(self.bindings(dn, now))
        table = self.table.setdefault(dn, {})
        default = header_expires if header_expires is not None else self.default_expires
        if any(c.is_star for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                raise RegisterError(400, "Invalid Contact *")
            table.clear()
        else:
            updates: list[tuple[str, int, float]] = []
            for contact in contacts:
                raw = contact.params.get("expires")
                try:
                    expires = int(raw) if raw is not None else default
                    q = float(contact.params.get("q") or 1.0)
                except ValueError as exc:
                    raise RegisterError(400, "Invalid Contact parameter") from exc
                if expires < 0:
                    raise RegisterError(400, "Invalid Contact expires")
                if 0 < expires < self.min_expires:
                    raise RegisterError(423, "Interval Too Brief", min_expires=self.min_expires)
                updates.append((contact.uri, min(expires, self.max_expires), q))
            for uri, expires, q in updates:
                old = table.get(uri)
                if old is not None and old.call_id == call_id and cseq <= old.cseq:
                    continue  # §10.3 step 7: an older or repeated REGISTER
                if expires == 0:
                    table.pop(uri, None)
                else:
                    table[uri] = Binding(uri, now + expires, now, call_id, cseq,
                                         tuple(path), q)
        current = self.bindings(dn, now)
        if not table:
            self.table.pop(dn, None)
        return RegisterResult(dn, current, came_in_service=not before and bool(current),
                              went_out_of_service=before and not current)

    def expire(self, now: float) -> list[str]:
        """Drop expired bindings; returns the DNs that lost their last one."""
        gone: list[str] = []
        for dn in list(self.table):
            table = self.table[dn]
            for uri in [u for u, b in table.items() if b.expires_at <= now]:
                del table[uri]
            if not table:
                del self.table[dn]
                gone.append(dn)
        return gone

    def next_expiry(self) -> float | None:
        times = [b.expires_at for t in self.table.values() for b in t.values()]
        return min(times) if times else None
