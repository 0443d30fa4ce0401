"""The binding store of the SIP Proxy registrar (RFC 3261 §10.3; guide: "SIP Registration").

The proxy is a registrar *front*: a cluster node authenticates the REGISTER,
and on its 2xx the proxy stores what it needs to reach the phone later:

* AoR (``user@domain``, lower-cased) and the Contact URI;
* absolute expiry (wall-clock seconds, so it means the same on every proxy);
* ``received`` / ``rport`` (RFC 3581) when the phone is behind NAT, and the
  transport the REGISTER came over, so requests reuse the phone's flow;
* Path (RFC 3327), ``+sip.instance`` and ``reg-id`` (RFC 5626), User-Agent;
* the proxy that took the registration (``origin``) and a version stamp;
* ``proxy_name``: the data centre's proxy name (the SIP Outbound Proxy DN's
  SRV FQDN) the REGISTER reached the proxy by, for a UDP phone not behind NAT:
  its side of a dialog is record-routed by that name, so its in-dialog
  requests outlive the proxy that delivered the call (docs/sip-proxy.md).

Every change is a :class:`Binding` value; :meth:`BindingStore.apply` merges
one idempotently, last writer wins by ``(stamp, origin)``, so replicas that
see the same updates in any order end in the same state
(:mod:`daemons.sip_proxy.replication`). A removal is a tombstone (expiry ≤
stamp) kept for ``tombstone_ttl`` seconds so that an older update arriving
late cannot bring the binding back.

Time is passed in as ``now`` (wall-clock seconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["LEGACY_WIRE_FIELDS", "WIRE_FIELDS", "Binding", "BindingStore", "aor_of",
           "binding_key"]

#: Fields of a binding on the replication wire (:meth:`Binding.to_wire`): the
#: twelve every proxy reads, then ``proxy_name``. A proxy that reads only the
#: twelve refuses a longer record, so a publisher sends the longer form only to
#: a subscriber that says it reads it (daemons.sip_proxy.replication, "hello").
WIRE_FIELDS = 13
LEGACY_WIRE_FIELDS = 12


@dataclass(slots=True)
class Binding:
    """One contact of an address-of-record (RFC 3261 §10.3 step 7).

    ``stamp`` is the wall-clock time the origin proxy accepted the change; it
    orders updates (last writer wins, ties broken by ``origin``). ``expires_at
    <= stamp`` marks a removal (tombstone).
    """

    aor: str
    contact: str
    expires_at: float
    stamp: float
    origin: str
    transport: str = "UDP"
    received: str | None = None  # "ip:port" the REGISTER came from when behind NAT / TCP
    path: tuple[str, ...] = ()
    instance: str | None = None
    reg_id: int | None = None
    user_agent: str | None = None
    q: float | None = None
    #: the data centre's proxy name the phone registered by (UDP, not behind NAT)
    proxy_name: str | None = None

    # Written out rather than left to @dataclass: compiled, the generated one
    # would run interpreted for every binding made (two per REGISTER).
    def __init__(self, aor: str, contact: str, expires_at: float, stamp: float, origin: str,
                 transport: str = "UDP", received: str | None = None,
                 path: tuple[str, ...] = (), instance: str | None = None,
                 reg_id: int | None = None, user_agent: str | None = None,
                 q: float | None = None, proxy_name: str | None = None) -> None:
        self.aor = aor
        self.contact = contact
        self.expires_at = expires_at
        self.stamp = stamp
        self.origin = origin
        self.transport = transport
        self.received = received
        self.path = path
        self.instance = instance
        self.reg_id = reg_id
        self.user_agent = user_agent
        self.q = q
        self.proxy_name = proxy_name

    @property
    def removed(self) -> bool:
        return self.expires_at <= self.stamp

    @property
    def key(self) -> str:
        return binding_key(self.contact, self.instance, self.reg_id)

    @property
    def version(self) -> tuple[float, str]:
        return (self.stamp, self.origin)

    def to_wire(self, fields: int = WIRE_FIELDS) -> list[Any]:
        """Compact msgpack form (a list, to keep snapshots small); ``fields``
        (:data:`LEGACY_WIRE_FIELDS`) leaves out what an older reader refuses."""
        wire = [self.aor, self.contact, self.expires_at, self.stamp, self.origin,
                self.transport, self.received, list(self.path), self.instance, self.reg_id,
                self.user_agent, self.q, self.proxy_name]
        return wire if fields >= WIRE_FIELDS else wire[:fields]

    @classmethod
    def from_wire(cls, item: list[Any]) -> Binding:
        """Inverse of :meth:`to_wire`, of either form (a record of an older proxy
        has no ``proxy_name``; fields after those known here, a newer proxy's, are
        ignored); ``ValueError`` on anything malformed."""
        if not isinstance(item, list) or len(item) < LEGACY_WIRE_FIELDS:
            raise ValueError(f"a binding is a list of at least {LEGACY_WIRE_FIELDS} fields")
        aor, contact, expires_at, stamp, origin, transport, received, path, instance, \
            reg_id, user_agent, q = item[:LEGACY_WIRE_FIELDS]
        proxy_name = item[LEGACY_WIRE_FIELDS] if len(item) > LEGACY_WIRE_FIELDS else None
        if not (isinstance(aor, str) and isinstance(contact, str) and isinstance(origin, str)
                and isinstance(transport, str)):
            raise ValueError("binding text fields must be strings")
        if not isinstance(expires_at, int | float) or not isinstance(stamp, int | float):
            raise ValueError("binding times must be numbers")
        if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
            raise ValueError("binding path must be a list of strings")
        for opt in (received, instance, user_agent, proxy_name):
            if opt is not None and not isinstance(opt, str):
                raise ValueError("optional binding fields must be strings")
        if reg_id is not None and not isinstance(reg_id, int):
            raise ValueError("reg-id must be an integer")
        if q is not None and not isinstance(q, int | float):
            raise ValueError("q must be a number")
        return cls(aor, contact, float(expires_at), float(stamp), origin, transport,
                   received, tuple(path), instance, reg_id, user_agent,
                   float(q) if q is not None else None, proxy_name or None)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"aor": self.aor, "contact": self.contact,
                "expires": max(0, int(self.expires_at - now)), "origin": self.origin,
                "transport": self.transport, "received": self.received,
                "path": list(self.path), "instance": self.instance, "reg_id": self.reg_id,
                "user_agent": self.user_agent, "proxy_name": self.proxy_name}


def binding_key(contact: str, instance: str | None, reg_id: int | None) -> str:
    """What identifies a binding within an AoR: the instance (+reg-id) if given
    (RFC 5626 §6), else the Contact URI (§10.3 step 7 compares URIs)."""
    if instance:
        return f"{instance}#{reg_id}" if reg_id is not None else instance
    return contact


def aor_of(user: str | None, host: str) -> str:
    """The canonical AoR key ``user@host`` (§10.3 step 5: case-insensitive host)."""
    return f"{user or ''}@{host.lower()}"


class BindingStore:
    """Every binding of the cluster, as this proxy knows it (RFC 3261 §10.3).

    ``apply`` is the only way in; it returns True when the store changed, so
    the caller knows whether to count / propagate.
    """

    def __init__(self, *, tombstone_ttl: float = 300.0) -> None:
        self.tombstone_ttl = tombstone_ttl
        self._aors: dict[str, dict[str, Binding]] = {}
        self._live = 0

    def __len__(self) -> int:
        """Number of live (non-removed) bindings, expired ones included until purged."""
        return self._live

    def aor_count(self) -> int:
        return len(self._aors)

    def apply(self, binding: Binding) -> bool:
        """Merge one update (idempotent, last writer wins by ``(stamp, origin)``)."""
        table = self._aors.get(binding.aor)
        if table is None:
            if binding.removed:
                # Nothing to remove: still keep the tombstone, an older add may follow.
                table = self._aors[binding.aor] = {}
            else:
                self._aors[binding.aor] = {binding.key: binding}
                self._live += 1
                return True
        key = binding.key
        old = table.get(key)
        if old is not None and old.version >= binding.version:
            return False
        table[key] = binding
        self._live += (0 if binding.removed else 1) - (1 if old is not None and not old.removed
                                                       else 0)
        return True

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of ``aor``, most preferred first (highest q, then newest)."""
        table = self._aors.get(aor)
        if not table:
            return []
        live = [b for b in table.values() if not b.removed and b.expires_at > now]
        live.sort(key=lambda b: (-(b.q if b.q is not None else 1.0), -b.stamp))
        return live

    def get(self, aor: str, key: str) -> Binding | None:
        table = self._aors.get(aor)
        return table.get(key) if table else None

    def bindings_of(self, aor: str) -> list[Binding]:
        """Every entry of ``aor``, tombstones included."""
        return list(self._aors.get(aor, {}).values())

    def all(self) -> Iterator[Binding]:
        """Every entry, tombstones included (what a snapshot carries)."""
        for table in self._aors.values():
            yield from table.values()

    def from_origin(self, origin: str) -> Iterator[Binding]:
        return (b for b in self.all() if b.origin == origin)

    def purge(self, now: float) -> int:
        """Drop expired bindings and old tombstones (§10.3: bindings expire)."""
        dropped = 0
        for aor in list(self._aors):
            table = self._aors[aor]
            for key in [k for k, b in table.items()
                        if (b.removed and b.stamp + self.tombstone_ttl <= now)
                        or (not b.removed and b.expires_at + self.tombstone_ttl <= now)]:
                b = table.pop(key)
                if not b.removed:
                    self._live -= 1
                dropped += 1
            if not table:
                del self._aors[aor]
        return dropped

    def expired(self, now: float) -> Iterable[Binding]:
        return (b for b in self.all() if not b.removed and b.expires_at <= now)
