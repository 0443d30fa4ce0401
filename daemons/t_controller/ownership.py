"""DN ownership across the cluster nodes, as one T-Controller sees it (sans-I/O).

SIP Cluster Solution Guide, "T-Controller DN Ownership", "Agent
Availability for Routing", "GWS Disaster Recovery Scenarios" and the SIP
Cluster Node DN options ``dn-owner-applications``,
``agent-state-auto-restore`` and ``tc-reconnect-timeout``:

* **SIP-based** ownership (Extension contact ``"*"``): the first node whose
  REGISTER succeeds owns the DN; ownership ends when the registration is
  removed or expires.
* **T-Library-based** ownership (any other contact): the first node that
  receives ``RequestRegisterAddress`` from an application listed in
  ``dn-owner-applications`` owns the DN; ownership ends on
  ``RequestUnregisterAddress`` from that client or when it disconnects.
* A claim from another node for an owned DN is a **conflict**: a REGISTER
  elsewhere means the phone moved, and the DN moves as soon as the agent's
  call and after-call work are over; a T-Library claim waits, in addition,
  until the current owner's clients let go of the DN, and when an agent is
  still logged in there it is logged out after a grace period (30 s) before
  the move.
* On a move the agent is logged out on the old owner; with
  ``agent-state-auto-restore`` an :class:`~daemons.t_controller.agent.AgentSnapshot`
  goes with the move and the new owner logs the agent in again in that state.
* A peer t-controller that stays unreachable for ``tc-reconnect-timeout``
  seconds (0: at once) loses its DNs: they go out of service here; and
  :class:`PeerLost` tells the daemon to forget the calls on that node (the
  call is in the disconnected data centre: guide, "TC-layer between DC1 and
  DC2 fails", Agent 2 step 7).

Each t-controller keeps one :class:`OwnershipTable`. It decides for DNs that
are unowned or owned by this node; a claim for a DN owned by a peer comes back
as :class:`ForwardClaim` so the daemon sends it to the owner, whose table
decides. Decisions (:class:`OwnershipGranted`, :class:`OwnershipReleased`,
:class:`OwnershipMoved`) are announced to the peers, which :meth:`apply` them.
Time is passed in as ``now``; :meth:`next_timer` / :meth:`handle_timer` drive
expiry, grace periods, peer loss and waiting moves.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemons.cluster.config import ClusterConfig, OwnershipKind
from daemons.t_controller.agent import AgentEvent, AgentSnapshot, AgentTable

__all__ = [
    "DEFAULT_MOVE_GRACE",
    "ClaimIgnored",
    "DnServiceEvent",
    "ForwardClaim",
    "MovePending",
    "OwnershipDecision",
    "OwnershipGranted",
    "OwnershipMoved",
    "OwnershipOutput",
    "OwnershipReleased",
    "OwnershipTable",
    "OwnershipView",
    "PeerLost",
]

#: Seconds an agent still logged in on the old owner keeps it before a
#: T-Library move logs it out (guide, "GWS disconnects from SIP Server", step 10).
DEFAULT_MOVE_GRACE = 30.0


# --------------------------------------------------------------------------
# outputs


@dataclass(frozen=True, slots=True)
class OwnershipGranted:
    """``node`` now owns ``dn`` (announced to the peers)."""

    dn: str
    node: str
    kind: OwnershipKind
    since: float
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class OwnershipReleased:
    """``dn`` has no owner any more; ``cause`` says why (``unregistered``,
    ``expired``, ``unregister-address``, ``client-disconnected``, ``peer-lost``)."""

    dn: str
    node: str
    cause: str


@dataclass(frozen=True, slots=True)
class OwnershipMoved:
    """``dn`` moved from one node to another; ``snapshot`` is the agent state to
    restore on the new owner (``agent-state-auto-restore``), if any."""

    dn: str
    from_node: str
    to_node: str
    kind: OwnershipKind
    since: float
    expires: float | None = None
    snapshot: AgentSnapshot | None = None


@dataclass(frozen=True, slots=True)
class MovePending:
    """A conflict: ``claimant`` wants ``dn`` but it stays with ``owner`` for now.

    ``waiting_for``: ``call-or-after-call-work``, ``owner-clients`` (the owner's
    T-Library clients still hold the DN) or ``agent-logout-grace``."""

    dn: str
    owner: str
    claimant: str
    waiting_for: str


@dataclass(frozen=True, slots=True)
class ForwardClaim:
    """``dn`` is owned by the peer ``owner``: send it the claim of ``claimant``."""

    dn: str
    owner: str
    claimant: str
    kind: OwnershipKind


@dataclass(frozen=True, slots=True)
class ClaimIgnored:
    """A registration that does not confer ownership, and why (for the log)."""

    dn: str
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerLost:
    """The peer ``node`` stayed unreachable for ``tc-reconnect-timeout``: its
    DNs went out of service here (the outputs before this one), and the calls
    on it no longer count for the DNs of this node (guide: "TC-layer between
    DC1 and DC2 fails", Agent 2 step 7: no call reported, the agent can log
    in). Its repeat after reconnection brings the calls back."""

    node: str


@dataclass(frozen=True, slots=True)
class DnServiceEvent:
    """``EventDNBackInService`` / ``EventDNOutOfService`` for the DN's clients."""

    name: str
    this_dn: str

    def to_map(self) -> dict[str, Any]:
        return {"message": self.name, "AttributeThisDN": self.this_dn}


OwnershipDecision = OwnershipGranted | OwnershipReleased | OwnershipMoved
OwnershipOutput = (
    OwnershipDecision | MovePending | ForwardClaim | ClaimIgnored | DnServiceEvent | AgentEvent
    | PeerLost
)


@dataclass(frozen=True, slots=True)
class OwnershipView:
    dn: str
    node: str
    kind: OwnershipKind
    since: float
    expires: float | None
    clients: frozenset[str]
    pending_claimant: str | None


# --------------------------------------------------------------------------
# internal records


@dataclass(slots=True)
class _Claim:
    node: str
    kind: OwnershipKind
    since: float
    expires: float | None = None
    client: str | None = None
    grace_deadline: float | None = None
    waiting_for: str | None = None  # last MovePending reason reported


@dataclass(slots=True)
class _Entry:
    dn: str
    node: str
    kind: OwnershipKind
    since: float
    expires: float | None = None
    clients: set[str] = field(default_factory=set)  # T-Library holders on the owner node
    pending: _Claim | None = None
    release_when_idle: str | None = None  # cause of a release waiting for call / ACW end
    order: int = 0  # creation order: outputs of one timer run come in table order

    def deadlines(self) -> tuple[float | None, ...]:
        pending = self.pending
        if pending is None:
            return (self.expires,)
        return (self.expires, pending.grace_deadline, pending.expires)


def _back_in_service(dn: str) -> DnServiceEvent:
    return DnServiceEvent("EventDNBackInService", dn)


def _out_of_service(dn: str) -> DnServiceEvent:
    return DnServiceEvent("EventDNOutOfService", dn)


class OwnershipTable:
    """Who owns which DN, from the point of view of ``local_node``.

    ``kinds`` maps each agent DN to its ownership kind (from the DN's contact).
    ``agents`` is this node's agent table: it says whether a local DN is busy
    (call or after-call work) and logs agents out when their DN moves away.

    Every query and update costs O(log n) at most, whatever the number of DNs:
    deadlines wait in a heap (an entry whose deadline changed leaves a stale
    item, skipped when it reaches the top), and the DNs of each node, of each
    T-Library client, with a pending claim or with a release waiting for the
    DN to be idle are indexed.
    """

    def __init__(
        self,
        local_node: str,
        *,
        kinds: Mapping[str, OwnershipKind],
        agents: AgentTable,
        dn_owner_applications: Collection[str] = (),
        agent_state_auto_restore: bool = False,
        tc_reconnect_timeout: float = 0.0,
        move_grace: float = DEFAULT_MOVE_GRACE,
    ) -> None:
        self.local_node = local_node
        self.kinds = kinds
        self.agents = agents
        self.dn_owner_applications = frozenset(dn_owner_applications)
        self.agent_state_auto_restore = agent_state_auto_restore
        self.tc_reconnect_timeout = tc_reconnect_timeout
        self.move_grace = move_grace
        self._entries: dict[str, _Entry] = {}
        self._lost_peers: dict[str, float] = {}  # node -> deadline
        self._order = itertools.count()
        #: (deadline, dn): expiry, claim expiry, grace end; stale items skipped lazily
        self._deadlines: list[tuple[float, str]] = []
        self._by_node: dict[str, set[str]] = {}
        #: (node, client) -> DNs it holds or claims (stale members skipped lazily)
        self._by_client: dict[tuple[str, str], set[str]] = {}
        self._pending_dns: set[str] = set()  # DNs with a pending claim (lazily cleaned)
        self._idle_waits: set[str] = set()  # DNs with release_when_idle (lazily cleaned)

    @classmethod
    def from_config(
        cls, config: ClusterConfig, local_node: str, agents: AgentTable
    ) -> OwnershipTable:
        """``local_node`` is the name of the sip-server the t-controller serves."""
        kinds = {d.number: k for d in config.agent_dns() if (k := d.ownership_kind) is not None}
        return cls(
            local_node,
            kinds=kinds,
            agents=agents,
            dn_owner_applications=config.nodes.dn_owner_applications,
            agent_state_auto_restore=config.nodes.agent_state_auto_restore,
            tc_reconnect_timeout=float(config.nodes.tc_reconnect_timeout),
        )

    # -- queries -------------------------------------------------------------
    def owner(self, dn: str) -> str | None:
        entry = self._entries.get(dn)
        return entry.node if entry else None

    def owned_by(self, node: str) -> list[str]:
        return sorted(self._by_node.get(node, ()))

    def owned_count(self, node: str) -> int:
        """``len(owned_by(node))`` without building the list."""
        return len(self._by_node.get(node, ()))

    def __len__(self) -> int:
        return len(self._entries)

    def view(self, dn: str) -> OwnershipView | None:
        e = self._entries.get(dn)
        if e is None:
            return None
        return OwnershipView(
            dn=e.dn,
            node=e.node,
            kind=e.kind,
            since=e.since,
            expires=e.expires,
            clients=frozenset(e.clients),
            pending_claimant=e.pending.node if e.pending else None,
        )

    # -- SIP-based ownership ---------------------------------------------------
    def sip_registered(
        self, dn: str, node: str, expires: float, now: float
    ) -> list[OwnershipOutput]:
        """A REGISTER for ``dn`` succeeded on ``node`` for ``expires`` seconds."""
        if self.kinds.get(dn) is not OwnershipKind.SIP:
            return [ClaimIgnored(dn, node, 'DN is not SIP-owned (contact is not "*")')]
        until = now + expires
        entry = self._entries.get(dn)
        if entry is None:
            return self._grant(dn, node, OwnershipKind.SIP, now, until)
        if entry.node == node:
            entry.expires = until  # refresh
            self._push(until, dn)
            if entry.pending is not None and entry.pending.kind is OwnershipKind.SIP:
                entry.pending = None  # the phone came back before the move
            return []
        if entry.node != self.local_node:
            return [ForwardClaim(dn, entry.node, node, OwnershipKind.SIP)]
        self._claim(entry, _Claim(node, OwnershipKind.SIP, now, expires=until))
        return self._advance(entry, now)

    def sip_unregistered(self, dn: str, node: str, now: float) -> list[OwnershipOutput]:
        """The registration of ``dn`` on ``node`` was removed (Expires: 0)."""
        entry = self._entries.get(dn)
        if entry is None or entry.kind is not OwnershipKind.SIP:
            return []
        if entry.node != node:
            if entry.pending is not None and entry.pending.node == node:
                entry.pending = None
            return []
        return self._release_or_move(entry, now, "unregistered")

    # -- T-Library-based ownership ---------------------------------------------
    def register_address(
        self, dn: str, node: str, client: str, application: str, now: float
    ) -> list[OwnershipOutput]:
        """``RequestRegisterAddress`` for ``dn`` from ``client`` (its
        AttributeApplicationName is ``application``) connected to ``node``."""
        if self.kinds.get(dn) is not OwnershipKind.TLIB:
            return [ClaimIgnored(dn, node, "DN ownership is not T-Library-based")]
        if application not in self.dn_owner_applications:
            return [ClaimIgnored(dn, node, f"{application!r} is not in dn-owner-applications")]
        entry = self._entries.get(dn)
        if entry is None:
            out = self._grant(dn, node, OwnershipKind.TLIB, now, None)
            self._hold(self._entries[dn], client)
            return out
        if entry.node == node:
            self._hold(entry, client)
            entry.release_when_idle = None
            return []
        if entry.node != self.local_node:
            return [ForwardClaim(dn, entry.node, node, OwnershipKind.TLIB)]
        self._claim(entry, _Claim(node, OwnershipKind.TLIB, now, client=client))
        return self._advance(entry, now)

    def unregister_address(
        self, dn: str, node: str, client: str, now: float
    ) -> list[OwnershipOutput]:
        """``RequestUnregisterAddress`` for ``dn`` from ``client`` on ``node``."""
        entry = self._entries.get(dn)
        if entry is None or entry.kind is not OwnershipKind.TLIB:
            return []
        if entry.node != node:
            if entry.pending is not None and entry.pending.client == client:
                entry.pending = None
            return []
        entry.clients.discard(client)
        held = self._by_client.get((node, client))
        if held is not None:
            held.discard(dn)
            if not held:
                del self._by_client[(node, client)]
        if entry.clients:
            return []
        return self._release_or_move(entry, now, "unregister-address")

    def client_disconnected(self, node: str, client: str, now: float) -> list[OwnershipOutput]:
        """A T-Library client of ``node`` disconnected: it lets go of every DN."""
        out: list[OwnershipOutput] = []
        for entry in self._in_order(self._by_client.pop((node, client), ())):
            if entry.pending is not None and entry.pending.client == client:
                if entry.pending.node == node:
                    entry.pending = None
            if entry.node == node and client in entry.clients:
                entry.clients.discard(client)
                if not entry.clients:
                    out += self._release_or_move(entry, now, "client-disconnected")
        return out

    # -- peers -------------------------------------------------------------------
    def apply(self, decision: OwnershipDecision, now: float) -> list[OwnershipOutput]:
        """A decision announced by a peer t-controller."""
        if isinstance(decision, OwnershipGranted):
            current = self._entries.get(decision.dn)
            if current is not None and current.node != decision.node:
                # both granted before hearing of each other: the earlier claim wins
                if (current.since, current.node) <= (decision.since, decision.node):
                    return []
                out: list[OwnershipOutput] = []
                if current.node == self.local_node:
                    events, _ = self.agents.hand_over(decision.dn, now, restore=False)
                    out += events
                self._drop(decision.dn)
                self._set(
                    decision.dn, decision.node, decision.kind, decision.since, decision.expires
                )
                return out
            if current is None:
                self._set(
                    decision.dn, decision.node, decision.kind, decision.since, decision.expires
                )
                return [_back_in_service(decision.dn)]
            current.expires = decision.expires
            if decision.expires is not None:
                self._push(decision.expires, decision.dn)
            return []
        if isinstance(decision, OwnershipReleased):
            current = self._entries.get(decision.dn)
            if current is None or current.node != decision.node:
                return []
            self._drop(decision.dn)
            return [_out_of_service(decision.dn)]
        # OwnershipMoved
        current = self._entries.get(decision.dn)
        if current is not None:
            self._drop(decision.dn)
        self._set(decision.dn, decision.to_node, decision.kind, decision.since, decision.expires)
        out = [] if current is not None else [_back_in_service(decision.dn)]
        if (
            decision.to_node == self.local_node
            and decision.snapshot is not None
            and self.agent_state_auto_restore
        ):
            out += self.agents.restore(decision.snapshot, now)
        return out

    def peer_lost(self, node: str, now: float) -> list[OwnershipOutput]:
        """The t-controller link to ``node`` is down: its DNs go out of service
        after ``tc-reconnect-timeout`` unless the link comes back."""
        if node == self.local_node:
            return []
        self._lost_peers[node] = now + self.tc_reconnect_timeout
        return self._expire_peers(now)

    def peer_restored(self, node: str, now: float) -> None:
        """The link to ``node`` is back (the peer then re-announces its DNs)."""
        self._lost_peers.pop(node, None)

    # -- timers --------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next (0.0: at once), or None."""
        times: list[float] = list(self._lost_peers.values())
        deadline = self._next_deadline()
        if deadline is not None:
            times.append(deadline)
        if self._idle_release_due() or self._idle_move_due():
            times.append(0.0)
        if self._any_pending():
            agent_timer = self.agents.next_timer()
            if agent_timer is not None:
                times.append(agent_timer)  # wrap-up end may let a waiting move go
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[OwnershipOutput]:
        """Registration expiry, pending claims, grace periods, peer loss.

        Call it also after feeding call events to the agent table: a move
        waiting for a call to end goes as soon as the DN is idle."""
        out: list[OwnershipOutput] = self._expire_peers(now)
        due: set[str] = set()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            due.add(heapq.heappop(heap)[1])
        due.update(self._pending_dns)
        due.update(self._idle_waits)
        for entry in self._in_order(due):
            if entry.pending is not None and entry.pending.expires is not None:
                if now >= entry.pending.expires:
                    entry.pending = None  # the claimant's registration lapsed
            if entry.expires is not None and now >= entry.expires:
                out += self._release_or_move(entry, now, "expired")
            elif entry.pending is not None:
                out += self._advance(entry, now)
            elif entry.release_when_idle is not None and not self.agents.is_busy(entry.dn):
                cause, entry.release_when_idle = entry.release_when_idle, None
                out += self._release_or_move(entry, now, cause)
        return out

    # -- internals -------------------------------------------------------------------
    def _in_order(self, dns: Iterable[str]) -> list[_Entry]:
        """The live entries of ``dns``, in table order."""
        entries = self._entries
        found = [e for dn in dns if (e := entries.get(dn)) is not None]
        found.sort(key=lambda e: e.order)
        return found

    def _push(self, when: float, dn: str) -> None:
        heap = self._deadlines
        heapq.heappush(heap, (when, dn))
        if len(heap) > 2 * len(self._entries) + 64:
            # refreshes left stale items behind: keep the heap in proportion
            self._deadlines = [(d, e.dn) for e in self._entries.values()
                               for d in e.deadlines() if d is not None]
            heapq.heapify(self._deadlines)

    def _next_deadline(self) -> float | None:
        heap = self._deadlines
        entries = self._entries
        while heap:
            when, dn = heap[0]
            entry = entries.get(dn)
            if entry is not None and when in entry.deadlines():
                return when
            heapq.heappop(heap)
        return None

    def _any_pending(self) -> bool:
        pending = self._pending_dns
        entries = self._entries
        for dn in list(pending):
            entry = entries.get(dn)
            if entry is not None and entry.pending is not None:
                return True
            pending.discard(dn)
        return False

    def _idle_release_due(self) -> bool:
        """A release waiting for the end of a call or after-call work may go."""
        waits = self._idle_waits
        entries = self._entries
        due = False
        for dn in list(waits):
            entry = entries.get(dn)
            if entry is None or entry.release_when_idle is None:
                waits.discard(dn)
            elif not self.agents.is_busy(dn):
                due = True
        return due

    def _idle_move_due(self) -> bool:
        """A move that waited for a call or after-call work to end may go."""
        entries = self._entries
        for dn in self._pending_dns:
            entry = entries.get(dn)
            if (entry is not None and entry.pending is not None
                    and entry.pending.waiting_for == "call-or-after-call-work"
                    and entry.node == self.local_node and not self.agents.is_busy(dn)):
                return True
        return False

    def _claim(self, entry: _Entry, claim: _Claim) -> None:
        entry.pending = claim
        self._pending_dns.add(entry.dn)
        if claim.expires is not None:
            self._push(claim.expires, entry.dn)
        if claim.client is not None:
            self._by_client.setdefault((claim.node, claim.client), set()).add(entry.dn)

    def _hold(self, entry: _Entry, client: str) -> None:
        entry.clients.add(client)
        self._by_client.setdefault((entry.node, client), set()).add(entry.dn)

    def _set(
        self, dn: str, node: str, kind: OwnershipKind, since: float, expires: float | None
    ) -> _Entry:
        entry = _Entry(dn=dn, node=node, kind=kind, since=since, expires=expires,
                       order=next(self._order))
        self._entries[dn] = entry
        self._by_node.setdefault(node, set()).add(dn)
        if expires is not None:
            self._push(expires, dn)
        return entry

    def _drop(self, dn: str) -> _Entry:
        entry = self._entries.pop(dn)
        owned = self._by_node.get(entry.node)
        if owned is not None:
            owned.discard(dn)
            if not owned:
                del self._by_node[entry.node]
        return entry

    def _grant(
        self, dn: str, node: str, kind: OwnershipKind, now: float, expires: float | None
    ) -> list[OwnershipOutput]:
        self._set(dn, node, kind, now, expires)
        return [OwnershipGranted(dn, node, kind, now, expires), _back_in_service(dn)]

    def _release_or_move(self, entry: _Entry, now: float, cause: str) -> list[OwnershipOutput]:
        """The owner lets go of the DN: to the pending claimant if there is one
        (after call and after-call work), else the DN is released."""
        if entry.kind is OwnershipKind.SIP:
            entry.expires = None
        if entry.pending is not None:
            return self._advance(entry, now, owner_gone=True)
        if (entry.kind is OwnershipKind.TLIB and entry.node == self.local_node
                and self.agents.is_busy(entry.dn)):
            # the last T-Library holder let go during a call or after-call work: the
            # DN stays here until they are over (guide: "GWS Disaster Recovery Scenarios")
            entry.release_when_idle = cause
            self._idle_waits.add(entry.dn)
            return []
        self._drop(entry.dn)
        return [OwnershipReleased(entry.dn, entry.node, cause), _out_of_service(entry.dn)]

    def _advance(
        self, entry: _Entry, now: float, *, owner_gone: bool = False
    ) -> list[OwnershipOutput]:
        """Move the DN to its pending claimant if nothing holds it back."""
        claim = entry.pending
        assert claim is not None
        dn = entry.dn
        if entry.node != self.local_node:
            return [ForwardClaim(dn, entry.node, claim.node, claim.kind)]
        if (claim.kind is OwnershipKind.TLIB and entry.clients and not owner_gone
                and entry.release_when_idle is None):
            return self._pending(entry, claim, "owner-clients")
        if self.agents.is_busy(dn):
            return self._pending(entry, claim, "call-or-after-call-work")
        if (
            claim.kind is OwnershipKind.TLIB
            and self.agents.agent(dn) is not None
            and self.move_grace > 0
        ):
            if claim.grace_deadline is None:
                claim.grace_deadline = now + self.move_grace
                self._push(claim.grace_deadline, dn)
            if now < claim.grace_deadline:
                return self._pending(entry, claim, "agent-logout-grace")
        events, snapshot = self.agents.hand_over(dn, now, restore=self.agent_state_auto_restore)
        old = entry.node
        self._drop(dn)
        new = self._set(dn, claim.node, claim.kind, now, claim.expires)
        if claim.client is not None:
            self._hold(new, claim.client)
        moved = OwnershipMoved(dn, old, claim.node, claim.kind, now, claim.expires, snapshot)
        return [*events, moved]

    def _pending(self, entry: _Entry, claim: _Claim, reason: str) -> list[OwnershipOutput]:
        """Report a waiting move once per reason, not on every timer run."""
        if claim.waiting_for == reason:
            return []
        claim.waiting_for = reason
        return [MovePending(entry.dn, entry.node, claim.node, reason)]

    def _expire_peers(self, now: float) -> list[OwnershipOutput]:
        out: list[OwnershipOutput] = []
        for node, deadline in list(self._lost_peers.items()):
            if now < deadline:
                continue
            del self._lost_peers[node]
            for dn in self.owned_by(node):
                self._drop(dn)
                out += [OwnershipReleased(dn, node, "peer-lost"), _out_of_service(dn)]
            out.append(PeerLost(node))
        return out
