"""The agents reserved for routers, as this node knows them (docs/node.md,
"Reserved agents"; guide: "Agent Reservation in SIP Cluster", "Agent
Reservation Conflicts").

The DN's owner t-controller is the one authority on reservations
(``daemons/t_controller/reservation.py``). Every grant it makes, and every
grant its peers announce through the mesh, the t-controller beside this node
passes on over the node link as a ``RequestReserveAgent`` carrying the
``EventAgentReserved`` facts (DN, ConnID, holder, seconds left). The node
keeps them here so that it does not itself offer a reserved agent a call that
is not the one the agent was reserved for:

* a ``RequestRouteCall`` to a reserved agent from another router, for
  another ConnID than the one the reservation names (any call, when it
  names none), is refused with ``EventError`` 62 (reservation conflict) and
  the call keeps waiting on its routing point;
* the router that holds the reservation may route any of its calls to the
  agent: reservations keep routers from routing to the same target ("Agent
  Reservation Conflicts" occur between several routers), and a router does
  not conflict with itself. This node may still keep a reservation that the
  owner already counts as ended (used up by a call offered on another node)
  when the router's next grant of the agent, for its next call, reaches
  the node after the router's route does (the owner answers the router
  before the grant travels through the mesh and the node link); another
  router's route that finds such a reservation waits a moment for its own
  grant (``SipServer._await_grant``) before it is refused;
* a default routing (``router-timeout`` -> ``default-dn``) to a reserved
  agent waits on the routing point until the reservation ends.

A reservation ends when its time is up, when a call is offered to the DN
on this node (the owner counts that call as the one that consumes it), or
when the owner's next grant of the agent replaces it. Time comes in as
``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeldAgent", "ReservedAgents"]


@dataclass(frozen=True, slots=True)
class HeldAgent:
    """One reservation as the owner announced it."""

    dn: str
    holder: str  # the owner's name for the router: "URS#3", "TC_A/URS#3"
    conn_id: str | None
    agent_id: str | None
    expires: float

    @property
    def router(self) -> str:
        """The holder's application name: the owner names a router by its
        client id (``URS#3``), behind the t-controller it asked through when
        that was a peer (``TC_A/URS#3``)."""
        return self.holder.rsplit("/", 1)[-1].rsplit("#", 1)[0]

    def held_for(self, conn_id: str | None, application: str | None) -> bool:
        """Whether the call ``conn_id`` routed by ``application`` (None: a
        default routing) may be offered to the agent: it is the call the
        reservation names, or the router is the holder (module doc)."""
        if self.conn_id is not None and conn_id == self.conn_id:
            return True
        return application is not None and application == self.router


class ReservedAgents:
    """Reservations by DN (module doc)."""

    def __init__(self) -> None:
        self._held: dict[str, HeldAgent] = {}
        #: how reservations ended here: expired, consumed (a call was offered)
        self.ended: dict[str, int] = {"expired": 0, "consumed": 0}

    def note(self, dn: str, *, holder: str, conn_id: str | None, agent_id: str | None,
             seconds: float, now: float) -> HeldAgent:
        """The owner granted a reservation of ``dn``'s agent for ``seconds``."""
        held = self._held[dn] = HeldAgent(dn, holder, conn_id, agent_id, now + max(0.0, seconds))
        return held

    def held(self, dn: str, now: float) -> HeldAgent | None:
        """The reservation of ``dn``'s agent in force now, if any."""
        held = self._held.get(dn)
        if held is not None and now >= held.expires:
            del self._held[dn]
            self.ended["expired"] += 1
            return None
        return held

    def conflict(self, dn: str, conn_id: str | None, application: str | None,
                 now: float) -> HeldAgent | None:
        """The reservation that forbids offering call ``conn_id`` (routed by
        ``application``; None for a default routing) to ``dn``, if any."""
        held = self.held(dn, now)
        if held is None or held.held_for(conn_id, application):
            return None
        return held

    def offered(self, dn: str) -> None:
        """A call is offered to ``dn`` here: the reservation is used up."""
        if self._held.pop(dn, None) is not None:
            self.ended["consumed"] += 1

    def __len__(self) -> int:
        return len(self._held)

    def status(self, now: float) -> list[dict[str, object]]:
        return [{"dn": h.dn, "holder": h.holder, "conn_id": h.conn_id,
                 "agent_id": h.agent_id, "expires_in": round(h.expires - now, 3)}
                for dn in list(self._held) if (h := self.held(dn, now)) is not None]
