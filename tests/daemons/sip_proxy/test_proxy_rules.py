"""Pure parts of the sip-proxy: binding merge rules, out-of-service detection,
node choice, rate limiting and failed-auth slowdown (fake ``now``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemons.sip_proxy.registrar import LEGACY_WIRE_FIELDS, WIRE_FIELDS, Binding, BindingStore
from daemons.sip_proxy.routing import NodeTarget, Router
from daemons.sip_proxy.security import AuthGuard, RateLimiter
from protocols.sip.oos import NodeState, OosMonitor


def b(contact: str, stamp: float, origin: str = "A", expires: float = 100.0) -> Binding:
    return Binding("1001@lab", contact, stamp + expires, stamp, origin)


def test_last_writer_wins_and_is_idempotent() -> None:
    s = BindingStore()
    assert s.apply(b("sip:x@1", 10))
    assert not s.apply(b("sip:x@1", 10))  # duplicate
    assert not s.apply(b("sip:x@1", 5))  # older
    assert s.apply(b("sip:x@1", 10, origin="B"))  # tie broken by origin
    assert s.lookup("1001@lab", 20)[0].origin == "B"
    # removal (tombstone) beats an older add arriving late
    assert s.apply(b("sip:x@1", 30, expires=0))
    assert not s.apply(b("sip:x@1", 20))
    assert s.lookup("1001@lab", 31) == []
    assert len(s) == 0


def test_bindings_expire_and_are_purged() -> None:
    s = BindingStore(tombstone_ttl=10)
    s.apply(b("sip:x@1", 0, expires=50))
    assert s.lookup("1001@lab", 49)
    assert s.lookup("1001@lab", 50) == []
    assert s.purge(59) == 0
    assert s.purge(61) == 1 and s.aor_count() == 0


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(8))))
def test_any_order_gives_the_same_state(order: list[int]) -> None:
    updates = [b(f"sip:x@{i % 3}", float(i), origin="AB"[i % 2], expires=0 if i == 5 else 100)
               for i in range(8)]
    ref, other = BindingStore(), BindingStore()
    for u in updates:
        ref.apply(u)
    for i in order:
        other.apply(updates[i])
    assert sorted(x.to_wire() for x in ref.all()) == sorted(x.to_wire() for x in other.all())


def test_wire_round_trip_and_bad_input() -> None:
    x = Binding("a@d", "sip:a@h", 9.0, 1.0, "P", "TCP", "1.2.3.4:5", ("<sip:p;lr>",),
                "<urn:uuid:1>", 1, "ua", 0.5)
    assert Binding.from_wire(x.to_wire()) == x
    for bad in ([], ["a"] * 12, [1, *x.to_wire()[1:]]):
        try:
            Binding.from_wire(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_the_proxy_name_on_the_wire_and_the_previous_release_form() -> None:
    x = Binding("a@d", "sip:a@h", 9.0, 1.0, "P", proxy_name="spx-srv.cluster.lab")
    wire = x.to_wire()
    assert len(wire) == WIRE_FIELDS and Binding.from_wire(wire) == x
    # what a proxy of the previous release sends and reads: twelve fields
    legacy = x.to_wire(LEGACY_WIRE_FIELDS)
    assert len(legacy) == LEGACY_WIRE_FIELDS == 12
    assert Binding.from_wire(legacy) == Binding("a@d", "sip:a@h", 9.0, 1.0, "P")
    # a newer proxy's extra fields are left aside
    assert Binding.from_wire([*wire, "later"]) == x
    for bad in (wire[:11], [*wire[:12], 5]):
        try:
            Binding.from_wire(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
    assert x.as_dict(0.0)["proxy_name"] == "spx-srv.cluster.lab"


def test_oos_check_and_force() -> None:
    m = OosMonitor(["n1", "n2"], oos_check=5, oos_force=2)
    assert m.due(0) == ["n1", "n2"]
    assert m.answered("n1", 200, 0.1)
    assert m.answered("n2", 503, 0.1)  # alive but standby
    assert m.usable("n1") and not m.usable("n2") and m.alive("n2")
    assert m.due(4) == []
    assert m.due(5) == ["n1", "n2"]
    assert m.tick(6.9) == []
    assert m.tick(7.0) == ["n1", "n2"]  # oos-force after the unanswered check
    assert m.nodes["n1"].state is NodeState.OUT_OF_SERVICE
    m.answered("n1", 200, 8)  # back on the first answer
    assert m.usable("n1")


def test_routing_local_first_then_other_dc_and_ha_primary() -> None:
    usable = {"a1", "a2", "b1"}
    nodes = [NodeTarget("a1", "dc1", "h", 1, group="a1"), NodeTarget("a2", "dc1", "h", 2,
             pair="a2b", group="a2"), NodeTarget("a2b", "dc1", "h", 3, pair="a2",
             primary=False, group="a2"), NodeTarget("b1", "dc2", "h", 4, group="b1")]
    r = Router(nodes, "dc1", lambda n: n in usable)
    picks = {r.select(f"c{i}").name for i in range(40)}  # type: ignore[union-attr]
    assert picks == {"a1", "a2"}
    first = {i: r.select(f"c{i}").name for i in range(40)}  # type: ignore[union-attr]
    usable.discard("a2")
    usable.add("a2b")  # switchover: the backup answers 2xx now
    moved = {i: r.select(f"c{i}").name for i in range(40)}  # type: ignore[union-attr]
    assert all(moved[i] == ("a2b" if first[i] == "a2" else first[i]) for i in range(40))
    assert r.pinned("a2").name == "a2b"  # type: ignore[union-attr]
    usable.clear()
    usable.add("b1")
    assert r.select("x").name == "b1"  # type: ignore[union-attr]
    usable.clear()
    assert r.select("x") is None


def test_rate_limiter_per_source() -> None:
    rl = RateLimiter(rate=10, burst=5)
    assert [rl.allow("1.1.1.1", 0.0) for _ in range(7)].count(True) == 5
    assert rl.allow("2.2.2.2", 0.0)  # another source is not starved
    assert not rl.allow("1.1.1.1", 0.05)
    assert rl.allow("1.1.1.1", 0.2)  # refilled
    assert rl.refused == 3


def test_auth_guard_slows_then_refuses() -> None:
    g = AuthGuard(slow_after=2, block_after=4, base_delay=0.5, block_seconds=30)
    assert g.check("ip", 0).delay == 0
    g.failed("ip", 0)
    g.failed("ip", 1)
    assert g.check("ip", 1).delay == 0.5
    g.failed("ip", 2)
    assert g.check("ip", 2).delay == 1.0
    assert g.failed("ip", 3)
    assert g.check("ip", 4).refuse
    assert not g.check("ip", 34).refuse and g.check("ip", 34).delay > 0
    g.succeeded("ip")
    assert g.check("ip", 35).delay == 0
