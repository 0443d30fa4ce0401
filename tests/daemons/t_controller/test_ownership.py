"""DN ownership scenarios from the guide ("T-Controller DN Ownership",
"Agent Availability for Routing", "GWS Disaster Recovery Scenarios")."""

from __future__ import annotations

from pathlib import Path

from daemons.cluster.config import OwnershipKind, load_cluster
from daemons.t_controller.agent import (
    AgentOptions,
    AgentState,
    AgentTable,
    AgentWorkMode,
    EventAgentLogin,
    EventAgentLogout,
    EventAgentNotReady,
)
from daemons.t_controller.ownership import (
    ClaimIgnored,
    DnServiceEvent,
    ForwardClaim,
    MovePending,
    OwnershipGranted,
    OwnershipMoved,
    OwnershipReleased,
    OwnershipTable,
    PeerLost,
)
from protocols.tlib.mesh import OWNERSHIP_KINDS

A, B, C = "SIPS_dc1_1", "SIPS_dc2_1", "SIPS_dc2_2"
SIP_DN, PSTN_DN = "1001", "2001"
KINDS = {SIP_DN: OwnershipKind.SIP, "1002": OwnershipKind.SIP, PSTN_DN: OwnershipKind.TLIB}


def node(
    name: str = A, *, restore: bool = False, reconnect: float = 0.0, wrap_up: float = 0.0
) -> OwnershipTable:
    agents = AgentTable(AgentOptions(wrap_up_time=wrap_up), site=name)
    return OwnershipTable(
        name,
        kinds=KINDS,
        agents=agents,
        dn_owner_applications=["Cluster"],
        agent_state_auto_restore=restore,
        tc_reconnect_timeout=reconnect,
    )


def svc(out: list[object]) -> list[tuple[str, str]]:
    return [(e.name, e.this_dn) for e in out if isinstance(e, DnServiceEvent)]


# -- SIP-based ownership -------------------------------------------------------------


def test_first_register_owns_and_expiry_releases() -> None:
    t = node()
    out = t.sip_registered(SIP_DN, A, 60, now=0.0)
    assert out[0] == OwnershipGranted(SIP_DN, A, OwnershipKind.SIP, 0.0, 60.0)
    assert svc(out) == [("EventDNBackInService", SIP_DN)]
    assert t.owner(SIP_DN) == A
    assert t.sip_registered(SIP_DN, A, 60, now=30.0) == []  # refresh
    assert t.next_timer() == 90.0
    assert t.handle_timer(89.0) == []
    out = t.handle_timer(90.0)
    assert out[0] == OwnershipReleased(SIP_DN, A, "expired")
    assert svc(out) == [("EventDNOutOfService", SIP_DN)]
    assert t.owner(SIP_DN) is None and t.next_timer() is None


def test_unregister_releases_only_for_the_owner() -> None:
    t = node()
    t.sip_registered(SIP_DN, A, 60, now=0.0)
    assert t.sip_unregistered(SIP_DN, B, 1.0) == []
    out = t.sip_unregistered(SIP_DN, A, 2.0)
    assert out[0] == OwnershipReleased(SIP_DN, A, "unregistered")
    assert t.owner(SIP_DN) is None


def test_register_for_a_tlib_dn_gives_no_ownership() -> None:
    t = node()
    (ignored,) = t.sip_registered(PSTN_DN, A, 60, now=0.0)
    assert isinstance(ignored, ClaimIgnored) and t.owner(PSTN_DN) is None
    (unknown,) = t.sip_registered("5000", A, 60, now=0.0)
    assert isinstance(unknown, ClaimIgnored)


def test_phone_moves_to_other_dc_when_idle_agent_logged_out() -> None:
    """ "Softphone disconnects from DC1": no call or ACW -> the old owner logs
    the agent out and moves the ownership at once."""
    t = node(A)
    t.sip_registered(SIP_DN, A, 60, now=0.0)
    t.agents.login(SIP_DN, "7001", 1.0)
    out = t.sip_registered(SIP_DN, B, 60, now=10.0)
    assert isinstance(out[0], EventAgentLogout)
    assert out[0].reasons == {"cause": "ownership-moved"}
    moved = out[1]
    assert moved == OwnershipMoved(SIP_DN, A, B, OwnershipKind.SIP, 10.0, 70.0, None)
    assert t.owner(SIP_DN) == B
    assert t.agents.state(SIP_DN) is AgentState.LOGGED_OUT
    # the old owner's expiry no longer applies; the new one does
    assert t.next_timer() == 70.0


def test_move_waits_for_call_and_after_call_work() -> None:
    t = node(A, wrap_up=20.0)
    t.sip_registered(SIP_DN, A, 3600, now=0.0)
    t.agents.login(SIP_DN, "7001", 0.0)
    t.agents.ready(SIP_DN, 0.0)
    t.agents.call_established(SIP_DN, "c1", 5.0)
    (pending,) = t.sip_registered(SIP_DN, B, 3600, now=10.0)
    assert pending == MovePending(SIP_DN, A, B, "call-or-after-call-work")
    assert t.view(SIP_DN).pending_claimant == B  # type: ignore[union-attr]
    assert t.handle_timer(11.0) == []  # still on the call, reported once
    t.agents.call_released(SIP_DN, "c1", 50.0)  # ACW until 70
    assert t.handle_timer(51.0) == []
    assert t.owner(SIP_DN) == A
    assert t.next_timer() == 70.0  # the wrap-up end
    acw_end = t.agents.handle_timer(70.0)
    assert t.agents.state(SIP_DN) is AgentState.READY and acw_end
    out = t.handle_timer(70.0)
    assert isinstance(out[0], EventAgentLogout)
    assert isinstance(out[1], OwnershipMoved) and out[1].to_node == B
    assert t.owner(SIP_DN) == B


def test_auto_restore_carries_agent_state_to_new_owner() -> None:
    old = node(A, restore=True)
    new = node(B, restore=True)
    (granted, _) = old.sip_registered(SIP_DN, A, 60, now=0.0)
    assert isinstance(granted, OwnershipGranted)
    new.apply(granted, 0.0)  # the announcement reaches the peer
    assert new.owner(SIP_DN) == A
    old.agents.login(SIP_DN, "7001", 1.0)
    old.agents.not_ready(SIP_DN, 2.0, work_mode=AgentWorkMode.AUX_WORK, reasons={"rc": "3"})
    # the phone registers on B; B forwards the claim to the owner A
    (fwd,) = new.sip_registered(SIP_DN, B, 60, now=10.0)
    assert fwd == ForwardClaim(SIP_DN, A, B, OwnershipKind.SIP)
    out = old.sip_registered(SIP_DN, B, 60, now=10.0)
    moved = out[-1]
    assert isinstance(moved, OwnershipMoved)
    assert moved.snapshot is not None and moved.snapshot.agent_id == "7001"
    # B applies the announcement and logs the agent in again in its old state
    restored = new.apply(moved, 10.5)
    assert [type(e) for e in restored] == [EventAgentLogin, EventAgentNotReady]
    assert restored[1].reasons == {"rc": "3"}
    assert new.owner(SIP_DN) == B
    assert new.agents.state(SIP_DN) is AgentState.NOT_READY


def test_without_auto_restore_agent_must_log_in_again() -> None:
    old = node(A, restore=False)
    old.sip_registered(SIP_DN, A, 60, now=0.0)
    old.agents.login(SIP_DN, "7001", 1.0)
    out = old.sip_registered(SIP_DN, B, 60, now=10.0)
    assert isinstance(out[-1], OwnershipMoved) and out[-1].snapshot is None
    new = node(B, restore=False)
    new.apply(OwnershipGranted(SIP_DN, A, OwnershipKind.SIP, 0.0, 60.0), 0.0)
    assert new.apply(out[-1], 10.0) == []
    assert new.agents.state(SIP_DN) is AgentState.LOGGED_OUT


def test_phone_back_before_move_cancels_it() -> None:
    t = node(A)
    t.sip_registered(SIP_DN, A, 60, now=0.0)
    t.agents.call_established(SIP_DN, "c1", 0.0)
    t.sip_registered(SIP_DN, B, 60, now=5.0)
    t.sip_registered(SIP_DN, A, 60, now=6.0)  # the phone re-registered with A
    t.agents.call_released(SIP_DN, "c1", 7.0)
    assert t.handle_timer(8.0) == []
    assert t.owner(SIP_DN) == A


# -- T-Library-based ownership -----------------------------------------------------


def test_register_address_from_privileged_application_owns() -> None:
    t = node(A)
    (ignored,) = t.register_address(PSTN_DN, A, "statserver", "StatServer", 0.0)
    assert isinstance(ignored, ClaimIgnored) and "dn-owner-applications" in ignored.reason
    out = t.register_address(PSTN_DN, A, "gws-1", "Cluster", 0.0)
    assert out[0] == OwnershipGranted(PSTN_DN, A, OwnershipKind.TLIB, 0.0, None)
    assert t.view(PSTN_DN).clients == {"gws-1"}  # type: ignore[union-attr]
    (not_tlib,) = t.register_address(SIP_DN, A, "gws-1", "Cluster", 0.0)
    assert isinstance(not_tlib, ClaimIgnored)


def test_unregister_address_and_disconnect_release() -> None:
    t = node(A)
    t.register_address(PSTN_DN, A, "gws-1", "Cluster", 0.0)
    t.register_address(PSTN_DN, A, "gws-2", "Cluster", 0.0)
    assert t.unregister_address(PSTN_DN, A, "gws-1", 1.0) == []  # gws-2 still holds it
    out = t.client_disconnected(A, "gws-2", 2.0)
    assert out[0] == OwnershipReleased(PSTN_DN, A, "client-disconnected")
    assert svc(out) == [("EventDNOutOfService", PSTN_DN)]
    t.register_address(PSTN_DN, A, "gws-1", "Cluster", 3.0)
    out = t.unregister_address(PSTN_DN, A, "gws-1", 4.0)
    assert out[0] == OwnershipReleased(PSTN_DN, A, "unregister-address")


def test_tlib_move_waits_for_owner_clients_then_grace() -> None:
    """Agent 2 in "WWE reconnects to a new GWS API node": the desktop moves to
    DC2; ownership is not transferred while GWS1 keeps the DN registered; after
    TUnregisterAddress the logged-in agent is logged out after 30 s and the DN
    moves."""
    t = node(A)
    t.register_address(PSTN_DN, A, "gws-1", "Cluster", 0.0)
    t.agents.login(PSTN_DN, "7002", 0.0, client="gws-1")
    (p1,) = t.register_address(PSTN_DN, B, "gws-3", "Cluster", 10.0)
    assert p1 == MovePending(PSTN_DN, A, B, "owner-clients")
    assert t.handle_timer(1000.0) == []  # never moves while gws-1 holds it
    assert t.owner(PSTN_DN) == A
    (p2,) = t.unregister_address(PSTN_DN, A, "gws-1", 1000.0)
    assert p2 == MovePending(PSTN_DN, A, B, "agent-logout-grace")
    assert t.next_timer() == 1030.0
    assert t.handle_timer(1029.0) == []
    assert t.owner(PSTN_DN) == A
    out = t.handle_timer(1030.0)
    assert isinstance(out[0], EventAgentLogout)
    assert out[1] == OwnershipMoved(PSTN_DN, A, B, OwnershipKind.TLIB, 1030.0, None, None)
    assert t.view(PSTN_DN).clients == {"gws-3"}  # type: ignore[union-attr]


def test_tlib_move_without_agent_is_immediate_and_waits_for_call() -> None:
    t = node(A)
    t.register_address(PSTN_DN, A, "gws-1", "Cluster", 0.0)
    t.agents.call_established(PSTN_DN, "c1", 0.0)
    t.register_address(PSTN_DN, B, "gws-3", "Cluster", 1.0)
    (p,) = t.client_disconnected(A, "gws-1", 2.0)
    assert p.waiting_for == "call-or-after-call-work"  # type: ignore[union-attr]
    assert t.owner(PSTN_DN) == A
    t.agents.call_released(PSTN_DN, "c1", 3.0)
    (moved,) = t.handle_timer(3.0)
    assert isinstance(moved, OwnershipMoved) and moved.to_node == B


def test_claimant_withdraws() -> None:
    t = node(A)
    t.register_address(PSTN_DN, A, "gws-1", "Cluster", 0.0)
    t.register_address(PSTN_DN, B, "gws-3", "Cluster", 1.0)
    t.unregister_address(PSTN_DN, B, "gws-3", 2.0)
    out = t.unregister_address(PSTN_DN, A, "gws-1", 3.0)
    assert out[0] == OwnershipReleased(PSTN_DN, A, "unregister-address")


# -- peers ---------------------------------------------------------------------------


def test_claim_for_a_peer_owned_dn_is_forwarded() -> None:
    t = node(A)
    t.apply(OwnershipGranted(SIP_DN, B, OwnershipKind.SIP, 0.0, 60.0), 0.0)
    assert t.sip_registered(SIP_DN, C, 60, now=1.0) == [
        ForwardClaim(SIP_DN, B, C, OwnershipKind.SIP)
    ]
    assert t.owner(SIP_DN) == B


def test_simultaneous_grants_earlier_claim_wins() -> None:
    a = node(A)
    a.sip_registered(SIP_DN, A, 60, now=5.0)
    a.agents.login(SIP_DN, "7001", 5.0)
    # B granted it earlier: A yields and logs its agent out
    out = a.apply(OwnershipGranted(SIP_DN, B, OwnershipKind.SIP, 4.0, 64.0), 6.0)
    assert [type(e) for e in out] == [EventAgentLogout]
    assert a.owner(SIP_DN) == B
    # a later competing grant is ignored
    assert a.apply(OwnershipGranted(SIP_DN, C, OwnershipKind.SIP, 9.0, 69.0), 9.0) == []
    assert a.owner(SIP_DN) == B
    out = a.apply(OwnershipReleased(SIP_DN, B, "expired"), 70.0)
    assert svc(out) == [("EventDNOutOfService", SIP_DN)] and a.owner(SIP_DN) is None


def test_peer_lost_after_tc_reconnect_timeout() -> None:
    """ "Agent Availability for Routing": a node that loses its peer puts the
    peer's DNs out of service and keeps routing to its own."""
    t = node(A, reconnect=10.0)
    t.sip_registered(SIP_DN, A, 3600, now=0.0)
    t.apply(OwnershipGranted("1002", B, OwnershipKind.SIP, 0.0, 3600.0), 0.0)
    assert t.peer_lost(B, 100.0) == []
    assert t.next_timer() == 110.0
    t.peer_restored(B, 105.0)
    assert t.handle_timer(110.0) == []
    assert t.owner("1002") == B
    t.peer_lost(B, 200.0)
    out = t.handle_timer(210.0)
    assert out[0] == OwnershipReleased("1002", B, "peer-lost")
    assert svc(out) == [("EventDNOutOfService", "1002")]
    assert t.owner("1002") is None and t.owner(SIP_DN) == A
    # the phone may now register here
    assert isinstance(t.sip_registered("1002", A, 60, now=211.0)[0], OwnershipGranted)


def test_peer_lost_is_reported_after_its_dns_even_without_any() -> None:
    """A lost peer is announced once its DNs are out of service (PeerLost: the
    daemon forgets its calls), also for a peer that owns no DN (a node where
    only calls are); not when the link came back in time."""
    t = node(A, reconnect=10.0)
    t.apply(OwnershipGranted("1002", B, OwnershipKind.SIP, 0.0, 3600.0), 0.0)
    t.peer_lost(B, 100.0)
    t.peer_lost(C, 100.0)  # owns nothing here
    out = t.handle_timer(110.0)
    assert out == [OwnershipReleased("1002", B, "peer-lost"),
                   DnServiceEvent("EventDNOutOfService", "1002"), PeerLost(B), PeerLost(C)]
    assert t.handle_timer(120.0) == []  # once
    t.peer_lost(C, 200.0)
    t.peer_restored(C, 205.0)
    assert t.handle_timer(210.0) == []
    assert node(A, reconnect=0.0).peer_lost(C, 5.0) == [PeerLost(C)]


def test_zero_reconnect_timeout_is_immediate() -> None:
    t = node(A, reconnect=0.0)
    t.apply(OwnershipGranted("1002", B, OwnershipKind.SIP, 0.0, 3600.0), 0.0)
    out = t.peer_lost(B, 5.0)
    assert out[0] == OwnershipReleased("1002", B, "peer-lost")
    assert t.peer_lost(A, 5.0) == []  # never loses itself


def test_from_config_uses_cluster_file() -> None:
    cfg = load_cluster(Path(__file__).resolve().parents[3] / "deploy/etc/cluster.toml")
    agents = AgentTable(AgentOptions.from_tserver(cfg.tserver_for("TC_dc1_1")), site="dc1")
    t = OwnershipTable.from_config(cfg, "SIPS_dc1_1", agents)
    assert t.kinds["1001"] is OwnershipKind.SIP and t.kinds["2001"] is OwnershipKind.TLIB
    assert "5000" not in t.kinds
    assert t.dn_owner_applications == {"Cluster"}
    assert t.agent_state_auto_restore is True and t.tc_reconnect_timeout == 10.0


# -- timers at scale (deadline heap, indexes) ----------------------------------------


def many(count: int) -> tuple[OwnershipTable, list[str]]:
    numbers = [str(300000 + i) for i in range(count)]
    agents = AgentTable(AgentOptions(), site=A)
    table = OwnershipTable(A, kinds={dn: OwnershipKind.SIP for dn in numbers}, agents=agents)
    return table, numbers


def test_next_timer_follows_refreshes_and_expiries_of_many_dns() -> None:
    t, numbers = many(2000)
    for i, dn in enumerate(numbers):
        t.sip_registered(dn, A, 1000.0 + i, now=0.0)  # dn i expires at 1000 + i
    assert t.next_timer() == 1000.0
    t.sip_registered(numbers[0], A, 5000.0, now=10.0)  # refreshed: now expires at 5010
    t.sip_registered(numbers[1], A, 5000.0, now=10.0)
    assert t.next_timer() == 1002.0  # the superseded deadlines are not reported
    out = t.handle_timer(1003.0)
    assert [o.dn for o in out if isinstance(o, OwnershipReleased)] == numbers[2:4]
    assert t.owner(numbers[2]) is None and t.owner(numbers[0]) == A
    assert t.next_timer() == 1004.0
    assert t.owned_count(A) == 1998 == len(t.owned_by(A))
    out = t.handle_timer(10000.0)
    assert len([o for o in out if isinstance(o, OwnershipReleased)]) == 1998
    assert t.next_timer() is None and t.owned_count(A) == 0


def test_many_refreshes_do_not_lose_the_deadline() -> None:
    t, numbers = many(3)
    for dn in numbers:
        t.sip_registered(dn, A, 60.0, now=0.0)
    for k in range(1, 500):  # far more refreshes than DNs: the heap is compacted
        t.sip_registered(numbers[0], A, 60.0, now=float(k))
    assert t.next_timer() == 60.0  # numbers[1] and numbers[2]
    assert [o.dn for o in t.handle_timer(60.0) if isinstance(o, OwnershipReleased)] \
        == numbers[1:]
    assert t.next_timer() == 559.0


def test_move_waiting_for_a_call_is_due_once_the_call_ends() -> None:
    """Without wrap-up the end of the call arms no agent timer: the table says
    the waiting move is due at once, so the daemon runs handle_timer."""
    t = node(A)
    t.sip_registered(SIP_DN, A, 3600, now=0.0)
    t.agents.call_established(SIP_DN, "c1", 1.0)
    (pending,) = t.sip_registered(SIP_DN, B, 3600, now=2.0)
    assert pending.waiting_for == "call-or-after-call-work"  # type: ignore[union-attr]
    assert t.next_timer() == 3600.0  # the owner's own expiry only
    t.agents.call_released(SIP_DN, "c1", 5.0)
    assert t.next_timer() == 0.0
    (moved,) = t.handle_timer(5.0)
    assert isinstance(moved, OwnershipMoved) and moved.to_node == B
    assert t.next_timer() == 3602.0  # the claimant's registration


def test_client_disconnect_only_touches_that_nodes_client() -> None:
    """Client ids are per node: the same id on a peer is another client."""
    t = node(A)
    t.register_address(PSTN_DN, A, "gws-1", "Cluster", 0.0)
    t.register_address(PSTN_DN, B, "gws-1", "Cluster", 1.0)  # pending claim from B
    assert t.client_disconnected(B, "gws-1", 2.0) == []  # B's client withdrew its claim
    assert t.view(PSTN_DN).pending_claimant is None  # type: ignore[union-attr]
    out = t.client_disconnected(A, "gws-1", 3.0)
    assert out[0] == OwnershipReleased(PSTN_DN, A, "client-disconnected")


def test_ownership_kinds_are_the_values_the_mesh_carries() -> None:
    """``ownership`` / ``mesh-kind`` of the mesh messages name the cluster
    file's ownership kinds: a kind the protocol refused would drop decisions."""
    assert {kind.value for kind in OwnershipKind} == OWNERSHIP_KINDS
