"""The node's view of agent reservations (daemons/sip_server/reservation.py),
with a fake clock: who a reservation lets through, when it ends."""

from __future__ import annotations

from daemons.sip_server.reservation import ReservedAgents


def test_a_reservation_for_a_call_lets_only_that_call_through() -> None:
    table = ReservedAgents()
    table.note("1001", holder="TC_A/URS#3", conn_id="c1", agent_id="a1001", seconds=6,
               now=100.0)
    assert table.conflict("1001", "c1", "OtherRouter", 101.0) is None
    held = table.conflict("1001", "c2", "OtherRouter", 101.0)
    assert held is not None and held.holder == "TC_A/URS#3"
    assert table.conflict("1001", "c2", None, 101.0) is not None  # a default routing
    assert table.conflict("1002", "c2", "URS", 101.0) is None  # other agents are free


def test_a_reservation_without_a_call_lets_its_router_through() -> None:
    table = ReservedAgents()
    table.note("1001", holder="TC_C/URS#7", conn_id=None, agent_id=None, seconds=6, now=0.0)
    assert table.conflict("1001", "c1", "URS", 1.0) is None
    assert table.conflict("1001", "c1", "URS_other", 1.0) is not None
    assert table.conflict("1001", "c1", None, 1.0) is not None


def test_a_reservation_ends_after_its_timeout_or_when_a_call_is_offered() -> None:
    table = ReservedAgents()
    table.note("1001", holder="URS#1", conn_id="c1", agent_id=None, seconds=2, now=10.0)
    assert table.held("1001", 11.99) is not None
    assert table.held("1001", 12.0) is None
    assert table.ended == {"expired": 1, "consumed": 0}
    table.note("1001", holder="URS#1", conn_id="c1", agent_id=None, seconds=2, now=20.0)
    table.offered("1001")
    assert table.conflict("1001", "c9", "X", 20.5) is None
    assert table.ended == {"expired": 1, "consumed": 1}
    table.offered("1001")  # nothing held: nothing counted
    assert table.ended["consumed"] == 1 and len(table) == 0


def test_the_holding_router_may_route_another_of_its_calls_to_the_agent() -> None:
    """A router does not conflict with itself: its route of call c2 passes a
    reservation it holds for c1 (c1 may have rung on another node already, and
    the grant for c2 not have reached this node yet); other routers do not."""
    table = ReservedAgents()
    for holder in ("TC_A/URS#3", "URS#3", "TC_C/Dir#ector#12"):
        table.note("1001", holder=holder, conn_id="c1", agent_id="a1001", seconds=6, now=0.0)
        router = holder.rsplit("/", 1)[-1].rsplit("#", 1)[0]
        assert table.conflict("1001", "c2", router, 1.0) is None, holder
        assert table.conflict("1001", "c2", router + "_other", 1.0) is not None, holder
        assert table.conflict("1001", "c2", "TC_A", 1.0) is not None, holder
        assert table.conflict("1001", "c2", None, 1.0) is not None, holder  # default routing
    table.note("1001", holder="TC_A/?", conn_id="c1", agent_id=None, seconds=6, now=0.0)
    assert table.conflict("1001", "c2", "URS", 1.0) is not None  # the router is not known
    assert len(table) == 1 and table.ended == {"expired": 0, "consumed": 0}
