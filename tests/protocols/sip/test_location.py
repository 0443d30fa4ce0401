"""RFC 3263 / RFC 2782 server location: the pure planner with fixture records."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from protocols.sip.errors import SipError
from protocols.sip.location import (
    AddressRecord,
    DnsCache,
    DnsFailure,
    LocationError,
    Locator,
    NaptrRecord,
    Query,
    RdType,
    Record,
    SrvRecord,
    StaticRecords,
    Target,
    Transport,
    order_srv,
)

UDP, TCP, TLS = Transport.UDP, Transport.TCP, Transport.TLS
Zone = Mapping[tuple[str, RdType], Sequence[Record] | DnsFailure]


def A(*addresses: str, ttl: float = 60.0) -> list[Record]:
    return [AddressRecord(a, ttl) for a in addresses]


def resolve(locator: Locator, zone: Zone) -> list[Query]:
    """Drive ``locator`` against ``zone``; missing names are NXDOMAIN. Returns queries asked."""
    asked: list[Query] = []
    while (query := locator.next_query()) is not None:
        asked.append(query)
        locator.feed(query, zone.get(query.key, DnsFailure.NXDOMAIN))
    return asked


EXAMPLE: Zone = {
    ("example.com", RdType.NAPTR): [
        NaptrRecord(50, 50, "s", "SIPS+D2T", "", "_sips._tcp.example.com", 300),
        NaptrRecord(90, 50, "s", "SIP+D2T", "", "_sip._tcp.example.com", 300),
        NaptrRecord(100, 50, "s", "SIP+D2U", "", "_sip._udp.example.com", 300),
        NaptrRecord(10, 50, "u", "E2U+sip", "!^.*$!sip:info@example.com!", ".", 300),
    ],
    ("_sips._tcp.example.com", RdType.SRV): [SrvRecord(0, 0, 5061, "tls1.example.com", 300)],
    ("_sip._tcp.example.com", RdType.SRV): [SrvRecord(0, 0, 5060, "tcp1.example.com", 300)],
    ("_sip._udp.example.com", RdType.SRV): [
        SrvRecord(10, 0, 5060, "udp2.example.com", 300),
        SrvRecord(0, 0, 5070, "udp1.example.com", 300),
    ],
    ("tls1.example.com", RdType.A): A("192.0.2.1"),
    ("tls1.example.com", RdType.AAAA): [AddressRecord("2001:db8::1", 60)],
    ("tcp1.example.com", RdType.A): A("192.0.2.2"),
    ("udp1.example.com", RdType.A): A("192.0.2.3"),
    ("udp2.example.com", RdType.A): A("192.0.2.4"),
}


# ---------------------------------------------------------------------------
# RFC 2782 ordering
# ---------------------------------------------------------------------------


def test_order_srv_priority_first() -> None:
    records = [
        SrvRecord(20, 100, 5060, "c"),
        SrvRecord(10, 0, 5060, "b"),
        SrvRecord(10, 5, 5060, "a"),
        SrvRecord(30, 0, 5060, "."),
    ]
    for seed in range(20):
        ordered = order_srv(records, random.Random(seed))
        assert [r.priority for r in ordered] == [10, 10, 20]
        assert {r.target for r in ordered[:2]} == {"a", "b"}


def test_order_srv_weighted_distribution() -> None:
    records = [SrvRecord(0, w, 5060, f"h{w}") for w in (10, 30, 60)]
    rng = random.Random(1234)
    draws = 20000
    firsts = Counter(order_srv(records, rng)[0].weight for _ in range(draws))
    # Selection probability is weight / (sum + 1) per draw of [0, sum]; the
    # zero draw falls on the first record in the shuffled order.
    for weight in (10, 30, 60):
        assert firsts[weight] / draws == pytest.approx(weight / 100, abs=0.015)


def test_order_srv_weight_zero_rarely_first() -> None:
    records = [SrvRecord(0, 0, 5060, "zero"), SrvRecord(0, 100, 5060, "heavy")]
    rng = random.Random(99)
    draws = 20000
    zero_first = sum(order_srv(records, rng)[0].target == "zero" for _ in range(draws))
    assert zero_first / draws == pytest.approx(1 / 101, abs=0.004)


def test_order_srv_all_zero_weights_uniform() -> None:
    records = [SrvRecord(0, 0, 5060, f"h{i}") for i in range(4)]
    rng = random.Random(7)
    draws = 8000
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(draws))
    assert set(firsts) == {"h0", "h1", "h2", "h3"}
    for count in firsts.values():
        assert count / draws == pytest.approx(0.25, abs=0.03)


def test_order_srv_keeps_every_record_once() -> None:
    records = [
        SrvRecord(p, w, 5060 + i, f"h{i}")
        for i, (p, w) in enumerate([(1, 5), (1, 0), (2, 9), (1, 7)])
    ]
    ordered = order_srv(records, random.Random(3))
    assert sorted(ordered, key=lambda r: r.target) == sorted(records, key=lambda r: r.target)


# ---------------------------------------------------------------------------
# RFC 3263 §4.1 transport and target selection
# ---------------------------------------------------------------------------


def test_naptr_order_preference_and_failover_list() -> None:
    loc = Locator("example.com", rng=random.Random(0))
    asked = resolve(loc, EXAMPLE)
    assert asked[0] == Query("example.com", RdType.NAPTR)
    assert loc.targets == [
        Target(TLS, "192.0.2.1", 5061, "example.com"),
        Target(TLS, "2001:db8::1", 5061, "example.com"),
        Target(TCP, "192.0.2.2", 5060, "example.com"),
        Target(UDP, "192.0.2.3", 5070, "example.com"),
        Target(UDP, "192.0.2.4", 5060, "example.com"),
    ]
    # No fallback SRV queries once NAPTR gave targets.
    assert Query("_sip._udp.example.com", RdType.SRV) in asked
    assert all(q.rdtype is not RdType.SRV or q.name.startswith("_sip") for q in asked)


def test_naptr_preference_breaks_order_ties() -> None:
    zone = dict(EXAMPLE)
    zone[("example.com", RdType.NAPTR)] = [
        NaptrRecord(10, 90, "s", "SIP+D2U", "", "_sip._udp.example.com"),
        NaptrRecord(10, 20, "S", "sip+d2t", "", "_sip._tcp.example.com"),
    ]
    loc = Locator("example.com")
    resolve(loc, zone)
    assert [t.transport for t in loc.targets] == [TCP, UDP, UDP]


def test_naptr_filtered_by_supported_transports() -> None:
    loc = Locator("example.com", supported=("udp",), rng=random.Random(0))
    resolve(loc, EXAMPLE)
    assert [(t.transport, t.port) for t in loc.targets] == [(UDP, 5070), (UDP, 5060)]


def test_sips_uses_only_tls() -> None:
    loc = Locator("example.com", secure=True)
    resolve(loc, EXAMPLE)
    assert {t.transport for t in loc.targets} == {TLS}
    assert loc.current == Target(TLS, "192.0.2.1", 5061, "example.com")


def test_srv_fallback_without_naptr() -> None:
    zone: Zone = {
        ("_sip._udp.lab.test", RdType.SRV): [SrvRecord(0, 10, 5080, "a.lab.test")],
        ("_sip._tcp.lab.test", RdType.SRV): [],  # NODATA
        ("_sips._tcp.lab.test", RdType.SRV): [SrvRecord(0, 10, 5081, "a.lab.test")],
        ("a.lab.test", RdType.A): A("127.0.1.5"),
        ("a.lab.test", RdType.AAAA): [],
    }
    loc = Locator("lab.test")
    asked = resolve(loc, zone)
    assert [(q.name, q.rdtype) for q in asked] == [
        ("lab.test", RdType.NAPTR),
        ("_sip._udp.lab.test", RdType.SRV),
        ("a.lab.test", RdType.A),
        ("a.lab.test", RdType.AAAA),
        ("_sip._tcp.lab.test", RdType.SRV),
        ("_sips._tcp.lab.test", RdType.SRV),
    ]
    assert loc.targets == [
        Target(UDP, "127.0.1.5", 5080, "lab.test"),
        Target(TLS, "127.0.1.5", 5081, "lab.test"),
    ]


def test_unusable_naptr_falls_back_to_srv() -> None:
    zone: Zone = {
        ("lab.test", RdType.NAPTR): [NaptrRecord(1, 1, "s", "SIP+D2S", "", "_sip._sctp.lab.test")],
        ("_sip._tcp.lab.test", RdType.SRV): [SrvRecord(0, 0, 5062, "b.lab.test")],
        ("b.lab.test", RdType.A): A("127.0.1.6"),
    }
    loc = Locator("lab.test", supported=("tcp", "udp"))
    resolve(loc, zone)
    assert loc.targets == [Target(TCP, "127.0.1.6", 5062, "lab.test")]


def test_a_record_fallback_default_ports() -> None:
    zone: Zone = {("pbx.lab.test", RdType.A): A("127.0.1.7", "127.0.1.8")}
    loc = Locator("pbx.lab.test")
    resolve(loc, zone)
    assert loc.targets == [
        Target(UDP, "127.0.1.7", 5060, "pbx.lab.test"),
        Target(UDP, "127.0.1.8", 5060, "pbx.lab.test"),
    ]
    secure = Locator("pbx.lab.test", secure=True)
    resolve(secure, zone)
    assert [(t.transport, t.port) for t in secure.targets] == [(TLS, 5061), (TLS, 5061)]


def test_timeouts_fall_through_like_missing_records() -> None:
    zone: Zone = {
        ("lab.test", RdType.NAPTR): DnsFailure.TIMEOUT,
        ("_sip._udp.lab.test", RdType.SRV): DnsFailure.SERVFAIL,
        ("lab.test", RdType.A): A("127.0.1.9"),
    }
    loc = Locator("lab.test")
    resolve(loc, zone)
    assert loc.targets == [Target(UDP, "127.0.1.9", 5060, "lab.test")]


@pytest.mark.parametrize(
    ("host", "kwargs", "expected"),
    [
        ("192.0.2.9", {}, Target(UDP, "192.0.2.9", 5060, "192.0.2.9")),
        ("192.0.2.9", {"secure": True}, Target(TLS, "192.0.2.9", 5061, "192.0.2.9")),
        ("192.0.2.9", {"transport": "tcp"}, Target(TCP, "192.0.2.9", 5060, "192.0.2.9")),
        ("[2001:DB8::9]", {"port": 5070}, Target(UDP, "2001:db8::9", 5070, "2001:DB8::9")),
        (
            "192.0.2.9",
            {"transport": "TLS", "port": 6000},
            Target(TLS, "192.0.2.9", 6000, "192.0.2.9"),
        ),
    ],
)
def test_numeric_host_needs_no_query(
    host: str, kwargs: dict[str, object], expected: Target
) -> None:
    loc = Locator(host, **kwargs)  # type: ignore[arg-type]
    assert loc.next_query() is None and loc.done
    assert loc.targets == [expected]


def test_explicit_port_skips_naptr_and_srv() -> None:
    loc = Locator("example.com", port=5099)
    asked = resolve(loc, EXAMPLE | {("example.com", RdType.A): A("192.0.2.50")})
    assert [q.rdtype for q in asked] == [RdType.A, RdType.AAAA]
    assert loc.targets == [Target(UDP, "192.0.2.50", 5099, "example.com")]


def test_explicit_transport_uses_its_srv_only() -> None:
    loc = Locator("example.com", transport="tcp")
    asked = resolve(loc, EXAMPLE)
    assert asked[0] == Query("_sip._tcp.example.com", RdType.SRV)
    assert loc.targets == [Target(TCP, "192.0.2.2", 5060, "example.com")]
    # No SRV for it: A records and the default port.
    loc = Locator("tcp1.example.com", transport="tcp")
    resolve(loc, EXAMPLE)
    assert loc.targets == [Target(TCP, "192.0.2.2", 5060, "tcp1.example.com")]


def test_sip_uri_with_transport_tls_uses_sips_srv() -> None:
    loc = Locator("example.com", transport="tls")
    asked = resolve(loc, EXAMPLE)
    assert asked[0] == Query("_sips._tcp.example.com", RdType.SRV)
    assert loc.current is not None and loc.current.transport is TLS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transport": "sctp"},
        {"transport": "udp", "secure": True},
        {"transport": "tcp", "supported": ("udp",)},
        {"secure": True, "supported": ("udp", "tcp")},
        {"port": 0},
        {"supported": ("carrier-pigeon",)},
    ],
)
def test_impossible_requests_raise_typed_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocationError):
        Locator("example.com", **kwargs)  # type: ignore[arg-type]
    assert issubclass(LocationError, SipError)


def test_feed_rejects_unasked_answers() -> None:
    loc = Locator("example.com")
    with pytest.raises(LocationError):
        loc.feed(Query("other.com", RdType.A), [])
    with pytest.raises(LocationError):
        _ = loc.targets


def test_failover_walks_the_list() -> None:
    loc = Locator("example.com", rng=random.Random(0))
    resolve(loc, EXAMPLE)
    seen = []
    target = loc.current
    while target is not None:
        seen.append(target)
        target = loc.fail(target)
    assert len(seen) == 5 and len(set(seen)) == 5
    assert seen[0].transport is TLS and seen[-1].port == 5060
    assert loc.targets == [] and loc.current is None


def test_duplicate_targets_are_tried_once() -> None:
    zone: Zone = {
        ("_sip._udp.lab.test", RdType.SRV): [
            SrvRecord(0, 0, 5060, "a.lab.test"),
            SrvRecord(1, 0, 5060, "alias.lab.test"),
        ],
        ("a.lab.test", RdType.A): A("127.0.1.5"),
        ("alias.lab.test", RdType.A): A("127.0.1.5"),
    }
    loc = Locator("lab.test", supported=("udp",))
    resolve(loc, zone)
    assert loc.targets == [Target(UDP, "127.0.1.5", 5060, "lab.test")]


def test_for_uri_reads_scheme_host_port_params() -> None:
    class Uri:
        def __init__(self, scheme: str, host: str, port: int | None, params: dict[str, str | None]):
            self.scheme, self.host, self.port, self.params = scheme, host, port, params

    loc = Locator.for_uri(Uri("sips", "example.com", None, {}))
    resolve(loc, EXAMPLE)
    assert {t.transport for t in loc.targets} == {TLS}
    loc = Locator.for_uri(
        Uri("sip", "example.com", None, {"maddr": "192.0.2.77", "transport": "tcp"})
    )
    assert loc.targets == [Target(TCP, "192.0.2.77", 5060, "192.0.2.77")]
    with pytest.raises(LocationError):
        Locator.for_uri(Uri("tel", "", None, {}))


# ---------------------------------------------------------------------------
# Static records and the cache
# ---------------------------------------------------------------------------


def test_static_records_answer_before_dns() -> None:
    static = StaticRecords.from_config(
        {
            "pbx.lab": {"NAPTR": ['10 50 "s" "SIP+D2T" "" _sip._tcp.pbx.lab.']},
            "_sip._tcp.pbx.lab": {"SRV": ["10 60 5070 sip1.pbx.lab", "20 0 5071 sip2.pbx.lab"]},
            "sip1.pbx.lab": {"A": ["127.0.1.10"]},
            "sip2.pbx.lab": {"a": ["127.0.1.11"], "AAAA": ["::1"]},
        }
    )
    loc = Locator("PBX.lab.", static=static)
    asked = resolve(loc, {})
    assert asked == []
    assert loc.targets == [
        Target(TCP, "127.0.1.10", 5070, "pbx.lab"),
        Target(TCP, "127.0.1.11", 5071, "pbx.lab"),
        Target(TCP, "::1", 5071, "pbx.lab"),
    ]


def test_static_host_with_only_an_address() -> None:
    static = StaticRecords.from_config({"media.lab": {"A": ["127.0.2.20"]}})
    loc = Locator("media.lab", static=static)
    assert resolve(loc, {}) == []
    assert loc.targets == [Target(UDP, "127.0.2.20", 5060, "media.lab")]
    # Names that are not in the table still go to DNS.
    other = Locator("else.lab", static=static)
    assert other.next_query() == Query("else.lab", RdType.NAPTR)


@pytest.mark.parametrize(
    "config",
    [
        {"x": {"A": ["not-an-ip"]}},
        {"x": {"A": ["::1"]}},
        {"x": {"SRV": ["10 60 sip1"]}},
        {"x": {"SRV": ["10 60 70000 sip1"]}},
        {"x": {"MX": ["10 mail"]}},
        {"x": {"NAPTR": ['10 50 "s "SIP+D2T" "" y']}},
    ],
)
def test_bad_static_config_raises(config: dict[str, dict[str, list[str]]]) -> None:
    with pytest.raises(LocationError):
        StaticRecords.from_config(config)


def test_cache_ttl_expiry_with_fake_now() -> None:
    cache = DnsCache(negative_ttl=5.0)
    q = Query("a.lab.test", RdType.A)
    cache.put(q, [AddressRecord("127.0.0.1", 10), AddressRecord("127.0.0.2", 30)], now=100.0)
    assert cache.get(q, 109.9) == [AddressRecord("127.0.0.1", 10), AddressRecord("127.0.0.2", 30)]
    assert cache.get(Query("A.LAB.TEST.", RdType.A), 105.0) is not None
    assert cache.get(q, 110.0) is None  # the smallest TTL governs
    assert len(cache) == 0
    nx = Query("nope.lab.test", RdType.SRV)
    cache.put(nx, DnsFailure.NXDOMAIN, now=100.0)
    assert cache.get(nx, 104.0) is DnsFailure.NXDOMAIN
    assert cache.get(nx, 105.0) is None
    cache.put(nx, [], now=200.0)  # NODATA
    assert cache.get(nx, 201.0) == []
    timeout = Query("slow.lab.test", RdType.A)
    cache.put(timeout, DnsFailure.TIMEOUT, now=200.0)
    assert cache.get(timeout, 200.0) is None


def test_cache_is_bounded() -> None:
    cache = DnsCache(max_entries=3)
    for i in range(5):
        cache.put(Query(f"h{i}", RdType.A), [AddressRecord("127.0.0.1", 100 + i)], now=0.0)
    assert len(cache) == 3
    assert cache.get(Query("h4", RdType.A), 1.0) is not None
    assert cache.get(Query("h0", RdType.A), 1.0) is None


def test_locator_uses_and_fills_cache() -> None:
    cache = DnsCache(negative_ttl=30.0)
    first = Locator("example.com", cache=cache, now=1000.0, rng=random.Random(0))
    asked = resolve(first, EXAMPLE)
    assert first.queries_sent == len(asked) > 0
    again = Locator("example.com", cache=cache, now=1010.0, rng=random.Random(0))
    assert resolve(again, EXAMPLE) == []
    assert again.targets == first.targets
    # Address records (TTL 60) expired, SRV/NAPTR (TTL 300) not, negative entries (30) too.
    later = Locator("example.com", cache=cache, now=1061.0, rng=random.Random(0))
    asked_later = resolve(later, EXAMPLE)
    assert asked_later and {q.rdtype for q in asked_later} <= {RdType.A, RdType.AAAA}
    assert later.targets == first.targets
