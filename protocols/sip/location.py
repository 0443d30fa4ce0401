"""Locating SIP servers: RFC 3263 target selection over RFC 2782 SRV ordering, sans-I/O.

The :class:`Locator` is a planner: it is told the target (host, port,
transport parameter, sip or sips), says which DNS query it needs next
(:meth:`Locator.next_query`), is fed the answers (:meth:`Locator.feed`), and
ends with an ordered list of :class:`Target` (transport, IP address, port) to
try, with fail-over to the next one (:meth:`Locator.fail`, RFC 3263 §4.3).
It does no I/O: ``daemons/runtime/dns.py`` runs the queries.

Two local sources answer before DNS: a :class:`StaticRecords` table from
configuration (for hosts that have no DNS) and a :class:`DnsCache` keyed by
(name, rdtype) that holds answers until their TTL runs out, with negative
caching of NXDOMAIN / NODATA (RFC 2308 §5).
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from protocols.sip.errors import SipError

__all__ = [
    "DEFAULT_PORTS",
    "AddressRecord",
    "DnsCache",
    "DnsFailure",
    "LocationError",
    "Locator",
    "NaptrRecord",
    "Query",
    "RdType",
    "Record",
    "SrvRecord",
    "StaticRecords",
    "Target",
    "Transport",
    "order_srv",
]


class LocationError(SipError, ValueError):
    """A target that cannot be located as asked (bad transport, bad static entry ...)."""


class RdType(enum.StrEnum):
    """DNS record types the locator asks for."""

    NAPTR = "NAPTR"
    SRV = "SRV"
    A = "A"
    AAAA = "AAAA"


class Transport(enum.StrEnum):
    """SIP transports as written in a Via (RFC 3261 §18, §20.42)."""

    UDP = "UDP"
    TCP = "TCP"
    TLS = "TLS"


#: Default ports when DNS gives none (RFC 3261 §19.1.2, RFC 3263 §4.2).
DEFAULT_PORTS: Mapping[Transport, int] = {
    Transport.UDP: 5060,
    Transport.TCP: 5060,
    Transport.TLS: 5061,
}

# NAPTR service field -> transport (RFC 3263 §4.1, RFC 3263 §10).
_NAPTR_SERVICES: Mapping[str, Transport] = {
    "SIP+D2U": Transport.UDP,
    "SIP+D2T": Transport.TCP,
    "SIPS+D2T": Transport.TLS,
}

# SRV owner-name prefixes (RFC 3263 §4.1 last paragraphs, RFC 2782).
_SRV_PREFIX: Mapping[Transport, str] = {
    Transport.UDP: "_sip._udp",
    Transport.TCP: "_sip._tcp",
    Transport.TLS: "_sips._tcp",
}


@dataclass(frozen=True)
class NaptrRecord:
    """A NAPTR answer (RFC 3403 §4.1); ``ttl`` in seconds."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str
    ttl: float = 0.0


@dataclass(frozen=True)
class SrvRecord:
    """An SRV answer (RFC 2782); ``target`` is a host name, ``"."`` for "no service"."""

    priority: int
    weight: int
    port: int
    target: str
    ttl: float = 0.0


@dataclass(frozen=True)
class AddressRecord:
    """An A or AAAA answer: one IP address in text form."""

    address: str
    ttl: float = 0.0


Record: TypeAlias = NaptrRecord | SrvRecord | AddressRecord


class DnsFailure(enum.Enum):
    """Outcomes of a query other than records. An empty list means NODATA."""

    NXDOMAIN = "nxdomain"
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"


Answer: TypeAlias = Sequence[Record] | DnsFailure


def normalise_name(name: str) -> str:
    """DNS names compare case-insensitively and without the root dot (RFC 4343)."""
    return name.rstrip(".").lower()


@dataclass(frozen=True)
class Query:
    """A DNS question the planner needs answered."""

    name: str
    rdtype: RdType

    @property
    def key(self) -> tuple[str, RdType]:
        return (normalise_name(self.name), self.rdtype)


@dataclass(frozen=True)
class Target:
    """One place to send to (RFC 3263 §4): transport, IP address, port.

    ``server_name`` is the SIP domain of the URI that was resolved (its host,
    before NAPTR and SRV), which a TLS server there must prove (RFC 5922 §4.1);
    for a numeric URI host it is the IP.
    """

    transport: Transport
    host_ip: str
    port: int
    server_name: str = ""


# ---------------------------------------------------------------------------
# RFC 2782 ordering
# ---------------------------------------------------------------------------


def order_srv(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """Order SRV records for contacting, as RFC 2782 "Usage rules" describes.

    Lowest priority first. Within a priority, repeatedly: put the remaining
    records in random order with weight-0 records first, draw a uniform
    integer in [0, sum of weights] and take the first record whose running
    weight sum reaches it. Weight-0 records are thus picked only rarely ahead
    of weighted ones, and uniformly among themselves when all weights are 0.
    A target of ``"."`` (service decidedly not available) is dropped.
    """
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        if normalise_name(record.target) == "":
            continue
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[SrvRecord] = []
    for priority in sorted(by_priority):
        remaining = list(by_priority[priority])
        while remaining:
            rng.shuffle(remaining)
            remaining.sort(key=lambda r: r.weight != 0)  # stable: zeros first
            total = sum(r.weight for r in remaining)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= pick:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


# ---------------------------------------------------------------------------
# Local sources: static table and TTL cache
# ---------------------------------------------------------------------------


class StaticRecords:
    """Records from configuration, consulted before DNS.

    A query is *covered* when its name, or the name under an
    ``_service._proto.`` prefix, has an entry: covered queries never reach
    DNS, and a record type the entry lacks answers as NODATA. So a host with
    only an address configured resolves without a single DNS query.
    """

    def __init__(self, entries: Mapping[str, Mapping[RdType | str, Sequence[Record]]] = {}) -> None:
        self._entries: dict[str, dict[RdType, tuple[Record, ...]]] = {}
        for name, by_type in entries.items():
            for rdtype, records in by_type.items():
                self.add(name, RdType(str(rdtype).upper()), records)

    def add(self, name: str, rdtype: RdType, records: Iterable[Record]) -> None:
        expected = {
            RdType.NAPTR: NaptrRecord,
            RdType.SRV: SrvRecord,
            RdType.A: AddressRecord,
            RdType.AAAA: AddressRecord,
        }[rdtype]
        records = tuple(records)
        for record in records:
            if not isinstance(record, expected):
                raise LocationError(f"{rdtype} entry for {name} holds {record!r}")
            if isinstance(record, AddressRecord):
                _check_address(record.address, rdtype)
        self._entries.setdefault(normalise_name(name), {})[rdtype] = records

    @classmethod
    def from_config(cls, config: Mapping[str, Mapping[str, Sequence[str]]]) -> StaticRecords:
        """Build from text as it appears in a zone file.

        ``{"_sip._udp.pbx.lab": {"SRV": ["10 60 5060 sip1.pbx.lab"]},
        "sip1.pbx.lab": {"A": ["127.0.1.10"]},
        "pbx.lab": {"NAPTR": ['10 50 "s" "SIP+D2U" "" _sip._udp.pbx.lab']}}``
        """
        table = cls()
        for name, by_type in config.items():
            for rdtype_text, values in by_type.items():
                rdtype = _parse_rdtype(rdtype_text)
                table.add(name, rdtype, [_parse_record_text(rdtype, v) for v in values])
        return table

    def lookup(self, query: Query) -> list[Record] | None:
        """Records for a covered query (possibly empty = NODATA), None when not covered."""
        name, rdtype = query.key
        entry = self._entries.get(name)
        if entry is None:
            labels = name.split(".")
            if len(labels) > 2 and labels[0].startswith("_") and labels[1].startswith("_"):
                if ".".join(labels[2:]) in self._entries:
                    return []
            return None
        return list(entry.get(rdtype, ()))

    def __len__(self) -> int:
        return len(self._entries)


def _parse_rdtype(text: str) -> RdType:
    try:
        return RdType(text.upper())
    except ValueError:
        raise LocationError(f"unsupported static record type {text!r}") from None


def _check_address(address: str, rdtype: RdType) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise LocationError(f"{address!r} is not an IP address") from None
    if (rdtype is RdType.A) != (ip.version == 4):
        raise LocationError(f"{address!r} does not fit an {rdtype} record")


def _split_quoted(text: str) -> list[str]:
    fields: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
        elif text[pos] == '"':
            end = text.find('"', pos + 1)
            if end < 0:
                raise LocationError(f"unterminated quote in {text!r}")
            fields.append(text[pos + 1 : end])
            pos = end + 1
        else:
            end = pos
            while end < len(text) and not text[end].isspace():
                if text[end] == '"':
                    raise LocationError(f"stray quote in {text!r}")
                end += 1
            fields.append(text[pos:end])
            pos = end
    return fields


def _parse_record_text(rdtype: RdType, text: str) -> Record:
    """One record's RDATA in zone-file presentation form (RFC 1035 §5.1)."""
    fields = _split_quoted(text)
    try:
        if rdtype is RdType.SRV and len(fields) == 4:
            priority, weight, port = (int(f) for f in fields[:3])
            if not all(0 <= v <= 0xFFFF for v in (priority, weight, port)):
                raise ValueError
            return SrvRecord(priority, weight, port, normalise_name(fields[3]) or ".")
        if rdtype is RdType.NAPTR and len(fields) == 6:
            return NaptrRecord(
                int(fields[0]),
                int(fields[1]),
                fields[2],
                fields[3],
                fields[4],
                normalise_name(fields[5]) or ".",
            )
        if rdtype in (RdType.A, RdType.AAAA) and len(fields) == 1:
            _check_address(fields[0], rdtype)
            return AddressRecord(fields[0])
    except ValueError:
        pass
    raise LocationError(f"bad static {rdtype} record {text!r}")


class DnsCache:
    """Answers keyed by (name, rdtype), valid until ``now + ttl`` (RFC 1035 §3.2.1).

    Negative answers (NXDOMAIN, NODATA) are kept for ``negative_ttl``
    (RFC 2308 §5); timeouts and server failures are never cached. TTLs are
    clamped to [``min_ttl``, ``max_ttl``]. At most ``max_entries`` are kept,
    the soonest to expire dropped first when full.
    """

    def __init__(
        self,
        *,
        negative_ttl: float = 30.0,
        min_ttl: float = 0.0,
        max_ttl: float = 86400.0,
        max_entries: int = 4096,
    ) -> None:
        self.negative_ttl = negative_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        self._entries: dict[tuple[str, RdType], tuple[float, list[Record] | DnsFailure]] = {}

    def get(self, query: Query, now: float) -> list[Record] | DnsFailure | None:
        """The cached answer, or None on a miss (or an expired entry, which is dropped)."""
        entry = self._entries.get(query.key)
        if entry is None:
            return None
        expires, answer = entry
        if now >= expires:
            del self._entries[query.key]
            return None
        return list(answer) if isinstance(answer, list) else answer

    def put(self, query: Query, answer: Answer, now: float) -> None:
        if isinstance(answer, DnsFailure):
            if answer is not DnsFailure.NXDOMAIN:
                return
            ttl = self.negative_ttl
            stored: list[Record] | DnsFailure = answer
        elif not answer:
            ttl = self.negative_ttl
            stored = []
        else:
            ttl = min(record.ttl for record in answer)
            stored = list(answer)
        ttl = max(self.min_ttl, min(self.max_ttl, ttl))
        if ttl <= 0:
            return
        if query.key not in self._entries and len(self._entries) >= self.max_entries:
            self.expire(now)
            if len(self._entries) >= self.max_entries:
                soonest = min(self._entries, key=lambda k: self._entries[k][0])
                del self._entries[soonest]
        self._entries[query.key] = (now + ttl, stored)

    def expire(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._entries.items() if now >= expires]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------


class SipUriLike(Protocol):
    """What :meth:`Locator.for_uri` reads from a parsed URI (RFC 3261 §19.1.1)."""

    scheme: str
    host: str
    port: int | None
    params: Mapping[str, str | None]


_Plan: TypeAlias = Generator[Query, Answer, list[Target]]


class Locator:
    """RFC 3263 §4 server location for one target, driven from outside.

    Usage::

        loc = Locator("example.com", secure=False)
        while (q := loc.next_query()) is not None:
            loc.feed(q, records_or_failure)
        for target in loc.targets: ...      # or loc.current / loc.fail(t)

    Steps (RFC 3263 §4.1-§4.2): an explicit ``transport`` wins; a numeric host
    uses the default transport; a port skips NAPTR/SRV. Otherwise NAPTR
    records for the supported services (SIP+D2U, SIP+D2T, SIPS+D2T; only
    SIPS+D2T for sips) are followed in order/preference; without usable
    NAPTR, SRV queries are made for each supported transport
    (``_sip._udp``, ``_sip._tcp``, ``_sips._tcp``); without SRV, the host's
    A/AAAA records are used with the default port. Every usable record
    contributes targets, in that order, so fail-over (§4.3) walks SRV
    targets, then further NAPTR records, without new queries.

    ``supported`` lists the transports this side can use, in preference
    order. ``families`` gives the address lookups and their order.
    """

    def __init__(
        self,
        host: str,
        *,
        port: int | None = None,
        transport: str | None = None,
        secure: bool = False,
        supported: Sequence[Transport | str] = (Transport.UDP, Transport.TCP, Transport.TLS),
        families: Sequence[RdType] = (RdType.A, RdType.AAAA),
        static: StaticRecords | None = None,
        cache: DnsCache | None = None,
        now: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise LocationError("empty host")
        if port is not None and not 0 < port <= 0xFFFF:
            raise LocationError(f"port {port} out of range")
        self.host = host
        self.port = port
        self.secure = secure
        self.supported = tuple(_parse_transport(t) for t in supported)
        if secure:
            self.supported = tuple(t for t in self.supported if t is Transport.TLS)
        if not self.supported:
            raise LocationError("no usable transport" + (" for sips" if secure else ""))
        for family in families:
            if family not in (RdType.A, RdType.AAAA):
                raise LocationError(f"{family} is not an address record type")
        self.families = tuple(families)
        self.transport = self._explicit_transport(transport)
        self._static = static
        self._cache = cache
        self._now = now
        self._rng = rng if rng is not None else random.Random()
        self._seen: dict[tuple[str, RdType], list[Record]] = {}
        self.queries_sent = 0
        self._targets: list[Target] | None = None
        self._failed: set[Target] = set()
        self._pending: Query | None = None
        self._plan = self._run()
        self._advance(None)

    @classmethod
    def for_uri(cls, uri: SipUriLike, **kwargs: object) -> Locator:
        """Locator for a parsed SIP/SIPS URI; ``maddr`` overrides the host (RFC 3263 §4)."""
        if uri.scheme not in ("sip", "sips"):
            raise LocationError(f"cannot locate a {uri.scheme}: URI")
        host = uri.params.get("maddr") or uri.host
        transport = uri.params.get("transport")
        return cls(
            host,
            port=uri.port,
            transport=transport,
            secure=uri.scheme == "sips",
            **kwargs,  # type: ignore[arg-type]
        )

    # -- public driving API -----------------------------------------------

    def next_query(self) -> Query | None:
        """The DNS question to ask next, or None when the target list is final."""
        return self._pending

    def feed(self, query: Query, answer: Answer) -> None:
        """Give the answer to :meth:`next_query`'s question: records, [] (NODATA) or a failure."""
        if self._pending is None or query.key != self._pending.key:
            raise LocationError(f"answer for {query} was not asked for")
        if not isinstance(answer, DnsFailure):
            answer = list(answer)
        if self._cache is not None:
            self._cache.put(query, answer, self._now)
        self._advance(answer)

    @property
    def done(self) -> bool:
        return self._targets is not None

    @property
    def targets(self) -> list[Target]:
        """All targets in the order to try them, failed ones excluded."""
        if self._targets is None:
            raise LocationError("resolution is not finished")
        return [t for t in self._targets if t not in self._failed]

    @property
    def current(self) -> Target | None:
        remaining = self.targets
        return remaining[0] if remaining else None

    def fail(self, target: Target) -> Target | None:
        """Mark ``target`` as failed and return the next one to try (RFC 3263 §4.3)."""
        self._failed.add(target)
        return self.current

    # -- the plan, written as a generator that yields queries --------------

    def _advance(self, answer: Answer | None) -> None:
        try:
            if answer is None:
                self._pending = next(self._plan)
            else:
                self._pending = self._plan.send(answer)
        except StopIteration as stop:
            self._pending = None
            self._targets = _dedupe(stop.value)

    def _lookup(self, name: str, rdtype: RdType) -> Generator[Query, Answer, list[Record]]:
        query = Query(normalise_name(name), rdtype)
        if query.key in self._seen:
            return list(self._seen[query.key])
        local: Sequence[Record] | DnsFailure | None = None
        if self._static is not None:
            local = self._static.lookup(query)
        if local is None and self._cache is not None:
            local = self._cache.get(query, self._now)
        answer: Answer
        if local is None:
            self.queries_sent += 1
            answer = yield query
        else:
            answer = local
        records = [] if isinstance(answer, DnsFailure) else list(answer)
        self._seen[query.key] = records
        return records

    def _run(self) -> _Plan:
        numeric = _is_ip(self.host)
        if numeric:
            transport = self.transport or self._default_transport()
            port = self.port or DEFAULT_PORTS[transport]
            return [Target(transport, _canonical_ip(self.host), port, self.host)]
        if self.port is not None:
            transport = self.transport or self._default_transport()
            return (yield from self._addresses(self.host, transport, self.port, self.host))
        if self.transport is not None:
            targets = yield from self._srv(self.transport, self.host)
            if targets is not None:
                return targets
            return (
                yield from self._addresses(
                    self.host, self.transport, DEFAULT_PORTS[self.transport], self.host
                )
            )
        targets = yield from self._naptr()
        if targets:
            return targets
        srv_found = False
        collected: list[Target] = []
        for transport in self.supported:
            found = yield from self._srv(transport, self.host)
            if found is not None:
                srv_found = True
                collected.extend(found)
        if srv_found:
            return collected
        transport = self._default_transport()
        return (
            yield from self._addresses(self.host, transport, DEFAULT_PORTS[transport], self.host)
        )

    def _naptr(self) -> Generator[Query, Answer, list[Target]]:
        """RFC 3263 §4.1 NAPTR step; [] when no usable record exists."""
        records = yield from self._lookup(self.host, RdType.NAPTR)
        usable: list[tuple[NaptrRecord, Transport]] = []
        for record in records:
            if not isinstance(record, NaptrRecord):
                continue
            transport = _NAPTR_SERVICES.get(record.service.upper())
            if transport is None or transport not in self.supported:
                continue
            if record.flags.lower() != "s" or record.regexp:
                continue
            if normalise_name(record.replacement) in ("", "."):
                continue
            usable.append((record, transport))
        usable.sort(key=lambda item: (item[0].order, item[0].preference))
        targets: list[Target] = []
        for record, transport in usable:
            found = yield from self._srv_records(transport, record.replacement)
            targets.extend(found)
        return targets

    def _srv(
        self, transport: Transport, domain: str
    ) -> Generator[Query, Answer, list[Target] | None]:
        """SRV step for one transport; None when there are no SRV records at all."""
        name = f"{_SRV_PREFIX[transport]}.{normalise_name(domain)}"
        records = yield from self._lookup(name, RdType.SRV)
        if not any(isinstance(r, SrvRecord) for r in records):
            return None
        return (yield from self._targets_from_srv(transport, records))

    def _srv_records(
        self, transport: Transport, name: str
    ) -> Generator[Query, Answer, list[Target]]:
        records = yield from self._lookup(name, RdType.SRV)
        return (yield from self._targets_from_srv(transport, records))

    def _targets_from_srv(
        self, transport: Transport, records: Sequence[Record]
    ) -> Generator[Query, Answer, list[Target]]:
        srv = [r for r in records if isinstance(r, SrvRecord)]
        targets: list[Target] = []
        for record in order_srv(srv, self._rng):
            # RFC 5922 §4.1: the server proves the URI's domain, not the SRV
            # target's name (the DNS answer is not trusted for identity)
            found = yield from self._addresses(
                record.target, transport, record.port, normalise_name(self.host)
            )
            targets.extend(found)
        return targets

    def _addresses(
        self, name: str, transport: Transport, port: int, server_name: str
    ) -> Generator[Query, Answer, list[Target]]:
        """A/AAAA step (RFC 3263 §4.2); a numeric SRV target needs no query."""
        if _is_ip(name):
            return [Target(transport, _canonical_ip(name), port, server_name)]
        targets: list[Target] = []
        for family in self.families:
            records = yield from self._lookup(name, family)
            for record in records:
                if isinstance(record, AddressRecord) and _fits(record.address, family):
                    targets.append(
                        Target(transport, _canonical_ip(record.address), port, server_name)
                    )
        return targets

    # -- transport choice ---------------------------------------------------

    def _explicit_transport(self, transport: str | None) -> Transport | None:
        """``transport=`` URI parameter (RFC 3263 §4.1 first rule)."""
        if transport is None:
            return None
        name = transport.upper()
        if self.secure:
            if name not in ("TCP", "TLS"):
                raise LocationError(f"sips cannot use transport={transport}")
            chosen = Transport.TLS
        elif name in ("UDP", "TCP", "TLS"):
            chosen = Transport(name)
        else:
            raise LocationError(f"unsupported transport {transport!r}")
        if chosen not in self.supported:
            raise LocationError(f"transport {chosen} is not supported here")
        return chosen

    def _default_transport(self) -> Transport:
        """UDP for sip, TLS for sips (RFC 3263 §4.1), or the first supported one."""
        preferred = Transport.TLS if self.secure else Transport.UDP
        return preferred if preferred in self.supported else self.supported[0]


def _parse_transport(value: Transport | str) -> Transport:
    try:
        return Transport(str(value).upper())
    except ValueError:
        raise LocationError(f"unsupported transport {value!r}") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _canonical_ip(host: str) -> str:
    return str(ipaddress.ip_address(host))


def _fits(address: str, family: RdType) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return (ip.version == 4) == (family is RdType.A)


def _dedupe(targets: Iterable[Target]) -> list[Target]:
    seen: set[tuple[Transport, str, int]] = set()
    out: list[Target] = []
    for target in targets:
        key = (target.transport, target.host_ip, target.port)
        if key not in seen:
            seen.add(key)
            out.append(target)
    return out
