"""Asyncio glue for SIP server location (RFC 3263) over dnspython.

:class:`SipResolver` runs the DNS queries that a
:class:`protocols.sip.location.Locator` asks for, through
``dns.asyncresolver.Resolver`` pointed at configurable name servers (any
port), and keeps one :class:`~protocols.sip.location.DnsCache` and one
:class:`~protocols.sip.location.StaticRecords` table for the process.
:func:`try_targets` is the RFC 3263 §4.3 fail-over loop: the next target on a
transport error or a timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from daemons.runtime.logs import get_logger
from protocols.sip.location import (
    AddressRecord,
    DnsCache,
    DnsFailure,
    Locator,
    NaptrRecord,
    Query,
    RdType,
    Record,
    SrvRecord,
    StaticRecords,
    Target,
    Transport,
)

__all__ = ["AllTargetsFailed", "SipResolver", "parse_nameserver", "try_targets"]

T = TypeVar("T")


def parse_nameserver(spec: str | tuple[str, int], default_port: int = 53) -> tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"``, ``"[::1]:5353"`` or ``(host, port)``."""
    if isinstance(spec, tuple):
        return spec[0], int(spec[1])
    text = spec.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


def _to_records(answer: dns.resolver.Answer) -> list[Record]:
    rrset = answer.rrset
    if rrset is None:
        return []
    ttl = float(rrset.ttl)
    records: list[Record] = []
    for rdata in rrset:
        rd: Any = rdata
        if rrset.rdtype == dns.rdatatype.SRV:
            records.append(
                SrvRecord(
                    rd.priority, rd.weight, rd.port, rd.target.to_text(omit_final_dot=True), ttl
                )
            )
        elif rrset.rdtype == dns.rdatatype.NAPTR:
            records.append(
                NaptrRecord(
                    rd.order,
                    rd.preference,
                    rd.flags.decode("ascii", "replace"),
                    rd.service.decode("ascii", "replace"),
                    rd.regexp.decode("utf-8", "replace"),
                    rd.replacement.to_text(omit_final_dot=True) or ".",
                    ttl,
                )
            )
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            records.append(AddressRecord(rd.address, ttl))
    return records


class SipResolver:
    """Locates SIP targets with DNS (RFC 3263), a TTL cache and static records.

    ``nameservers`` are ``"host"``, ``"host:port"`` or ``(host, port)``; when
    None the system's resolv.conf is used. ``timeout`` bounds each try at a
    server and ``lifetime`` a whole query (dnspython's meanings). ``clock``
    gives the time for the cache; ``rng`` drives the RFC 2782 weighted order;
    ``source`` is the local address queries are sent from.
    """

    def __init__(
        self,
        nameservers: Sequence[str | tuple[str, int]] | None = None,
        *,
        port: int = 53,
        timeout: float = 2.0,
        lifetime: float | None = None,
        static: StaticRecords | None = None,
        cache: DnsCache | None = None,
        supported: Sequence[Transport | str] = (Transport.UDP, Transport.TCP, Transport.TLS),
        families: Sequence[RdType] = (RdType.A, RdType.AAAA),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        source: str | None = None,
    ) -> None:
        # ``source``: the address queries leave from; a geo-aware DNS answers by it
        self.source = source
        if nameservers is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, ns_port)
                for host, ns_port in (parse_nameserver(s, port) for s in nameservers)
            ]
        self._resolver.timeout = timeout
        self._resolver.lifetime = lifetime if lifetime is not None else timeout * 2
        self._resolver.cache = None  # the Locator's DnsCache is the only cache
        self.static = static
        self.cache = cache if cache is not None else DnsCache()
        self.supported = tuple(supported)
        self.families = tuple(families)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.queries_sent = 0
        self.log = get_logger("sip_dns")

    async def query(self, query: Query) -> list[Record] | DnsFailure:
        """One DNS query; NODATA is ``[]``, other outcomes a :class:`DnsFailure`."""
        self.queries_sent += 1
        name = dns.name.from_text(query.name)
        try:
            answer = await self._resolver.resolve(
                name,
                query.rdtype.value,
                raise_on_no_answer=False,
                search=False,
                source=self.source,
            )
        except dns.resolver.NXDOMAIN:
            return DnsFailure.NXDOMAIN
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            self.log.warning("dns_timeout", name=query.name, rdtype=query.rdtype.value)
            return DnsFailure.TIMEOUT
        except (dns.resolver.NoNameservers, dns.resolver.NoAnswer, dns.exception.DNSException):
            self.log.warning("dns_failure", name=query.name, rdtype=query.rdtype.value)
            return DnsFailure.SERVFAIL
        return _to_records(answer)

    def locator(
        self,
        host: str,
        *,
        port: int | None = None,
        transport: str | None = None,
        secure: bool = False,
    ) -> Locator:
        """A planner for ``host`` sharing this resolver's cache, static table and settings."""
        return Locator(
            host,
            port=port,
            transport=transport,
            secure=secure,
            supported=self.supported,
            families=self.families,
            static=self.static,
            cache=self.cache,
            now=self._clock(),
            rng=self._rng,
        )

    async def run(self, locator: Locator) -> Locator:
        """Answer every query ``locator`` asks; returns it finished."""
        while (question := locator.next_query()) is not None:
            locator.feed(question, await self.query(question))
        return locator

    async def resolve(
        self,
        host: str,
        *,
        port: int | None = None,
        transport: str | None = None,
        secure: bool = False,
    ) -> list[Target]:
        """Ordered targets for a SIP/SIPS URI's host part (RFC 3263 §4)."""
        locator = await self.run(self.locator(host, port=port, transport=transport, secure=secure))
        targets = locator.targets
        self.log.debug(
            "sip_targets",
            host=host,
            targets=[f"{t.transport}:{t.host_ip}:{t.port}" for t in targets],
        )
        return targets


class AllTargetsFailed(ConnectionError):
    """Every target was tried and none answered (RFC 3263 §4.3)."""

    def __init__(self, failures: Sequence[tuple[Target, BaseException]]) -> None:
        self.failures = list(failures)
        detail = "; ".join(f"{t.transport} {t.host_ip}:{t.port}: {e!r}" for t, e in failures)
        super().__init__(f"all {len(failures)} targets failed" + (f": {detail}" if detail else ""))


async def try_targets(
    targets: Iterable[Target],
    connect_fn: Callable[[Target], Awaitable[T]],
    *,
    per_target_timeout: float | None = None,
    on_failure: Callable[[Target, BaseException], None] | None = None,
) -> tuple[Target, T]:
    """Call ``connect_fn`` on each target in order until one succeeds (RFC 3263 §4.3).

    A transport error (``OSError``, which includes refused and unreachable
    connections) or running past ``per_target_timeout`` seconds moves on to the next target.
    Returns the target that worked and ``connect_fn``'s result; raises
    :class:`AllTargetsFailed` when none does. Other exceptions propagate.
    """
    failures: list[tuple[Target, BaseException]] = []
    for target in targets:
        try:
            async with asyncio.timeout(per_target_timeout):
                result = await connect_fn(target)
        except (OSError, TimeoutError) as exc:
            failures.append((target, exc))
            if on_failure is not None:
                on_failure(target, exc)
            continue
        return target, result
    raise AllTargetsFailed(failures)
