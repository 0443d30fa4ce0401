"""The T-Controller mesh: one link from this t-controller to every other
t-controller of the cluster, and what comes back on them (guide:
"T-Controller", "T-Controller DN Ownership", "DN Availability for Routing",
"Smart Proxy", "Troubleshooting T-Controllers communication issues";
docs/t-controller.md).

Wire: T-Library over TCport, the messages of :mod:`protocols.tlib.mesh`.
Each t-controller connects to the ``tc-port`` of every peer as a *smart*
client named after itself (its application name in the cluster file),
binding its own host address as the local address, with ADDP
(``addp-timeout`` / ``addp-remote-timeout``) and reconnection with backoff.
A pair of t-controllers therefore has two connections: on the one a
t-controller opened (its *client connection*) it sends requests -- ownership
claims, DN interest, requests of its desktops for DNs the peer owns, latency
polls; on the one the peer opened (its *server connection*) it sends events.
What goes out, and to whom, is :mod:`daemons.t_controller.peers`; the
peers' requests are answered by :mod:`daemons.t_controller.requests`.

What comes in on a client connection (the peer's events):

* **ownership decisions**: ``EventDNBackInService`` / ``EventDNOutOfService``
  with ``AttributeExtensions`` ``mesh`` = ``granted``, ``moved`` or
  ``released``, applied to the ownership table here; the owner repeats a
  ``granted`` for every DN it owns on each (re)connection, with the DN's
  current agent state;
* **events of the DNs the peer owns**, to the clients here that registered
  the DN (and the Smart Proxy in normal mode);
* **call events of the peer's node for a DN this node owns**, processed as
  this node's own (agent activity, after-call work) and relayed -- so a
  desktop anywhere sees the call and agent events of its DN in the owner's
  order;
* answers to the requests this node relayed, put back to the desktop's
  ReferenceID.

A link down for ``tc-reconnect-timeout`` seconds puts the peer's DNs out of
service here (``OwnershipTable.peer_lost``) and makes this node forget the
peer's calls on the DNs it owns (``PeerLost``); when the link is back, a
node repeats to each owner the calls it has on the owner's DNs (its last call
event with ``mesh`` = ``call-state``), and the owner takes in those it does
not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from daemons.runtime.tlib_server import TLibConnection
from daemons.t_controller.agent import AgentEvent
from daemons.t_controller.controller import CALL_EVENTS, NodeCall, decision_of
from daemons.t_controller.latency import event_wall_time
from daemons.t_controller.node_link import ForwardedRequest, NodeLinkDown
from daemons.t_controller.ownership import OwnershipOutput
from daemons.t_controller.peers import Peer
from daemons.t_controller.state import ControllerState
from protocols.tlib.errors import ErrorCode, TLibError
from protocols.tlib.framing import TMap
from protocols.tlib.mesh import (
    CallState,
    DnGranted,
    DnMoved,
    DnReleased,
    DnSnapshot,
    MalformedMeshMessage,
    MeshEvent,
    decode_event,
)

__all__ = ["Mesh", "MeshController"]

#: Attributes of a received event that belong to the link, not to the event.
_LINK_ATTRIBUTES = frozenset({"message", "AttributeReferenceID", "AttributeEventSequenceNumber",
                              "AttributeTimeinSecs", "AttributeTimeinuSecs"})
_POLL = object()  # origin of a latency poll


class MeshController(ControllerState, Protocol):
    """What the mesh needs of the :class:`~daemons.t_controller.controller.TController`."""

    @property
    def name(self) -> str: ...
    @property
    def remote_agents(self) -> dict[str, dict[str, Any]]: ...

    def schedule_timer(self) -> None: ...
    def apply(self, outputs: Iterable[OwnershipOutput],
              answer: tuple[TLibConnection, int] | None = None, *,
              claimant: tuple[str, str] | None = None,
              details: dict[str, TMap] | None = None) -> None: ...
    def publish_agent_events(self, events: Iterable[AgentEvent],
                             answer: tuple[TLibConnection, int] | None = None, *,
                             local: bool | None = None) -> None: ...
    def mirror_announced_agent(self, message: DnGranted) -> None: ...
    def owned_dn_messages(self, granted: type[DnGranted] = DnGranted,
                          ) -> Iterator[DnGranted]: ...
    def calls_for_owner(self, owner: str, dn: str | None = None) -> list[NodeCall]: ...
    def restore_call(self, name: str, attributes: TMap, *, answered: bool) -> bool: ...
    def on_owned_call_event(self, name: str, attributes: TMap,
                            answer: tuple[TLibConnection, int] | None) -> None: ...
    def deliver_remote(self, name: str, attributes: TMap,
                       answer: tuple[TLibConnection, int] | None = None) -> None: ...


class _PeerSink:
    """The link callbacks of one peer, bound to the mesh."""

    def __init__(self, mesh: Mesh, peer: Peer) -> None:
        self.mesh = mesh
        self.peer = peer

    def on_link_up(self) -> None:
        self.mesh.link_up(self.peer)

    def on_link_down(self, reason: str, lost: list[ForwardedRequest]) -> None:
        self.mesh.link_down(self.peer, reason, lost)

    def on_node_event(self, event: TMap, answers: ForwardedRequest | None) -> None:
        self.mesh.on_peer_event(self.peer, event, answers)


class Mesh:
    """The t-controller's side of the mesh (see the module doc)."""

    def __init__(self, controller: MeshController) -> None:
        self.controller = controller
        self.table = controller.peers
        self.poll_interval = self.table.options.poll_interval
        self.log = self.table.log
        self._poll_task: asyncio.Task[None] | None = None
        #: the mesh messages of a peer's events, by type
        self._events: dict[type[MeshEvent], Callable[[Peer, Any], None]] = {
            DnGranted: self._apply_decision,
            DnMoved: self._apply_decision,
            DnReleased: self._apply_decision,
            CallState: self._call_state,
        }

    @property
    def peers(self) -> dict[str, Peer]:
        """The peers, by node."""
        return self.table.peers

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.table.open_links(lambda peer: _PeerSink(self, peer))
        if self.poll_interval > 0 and self.peers:
            self._poll_task = asyncio.create_task(self._poll_loop(), name="tc-latency-polls")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        await self.table.close_links()

    # -- status ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``/status/peers``: link state and latency statistics per peer."""
        controller = self.controller
        peers: dict[str, Any] = {}
        for peer in self.peers.values():
            stats = peer.stats
            stats.tx_queue_len = peer.tx_queue()
            stats.rx_queue_len = peer.rx_queue()
            peers[peer.tc] = {
                "node": peer.node,
                "address": f"{peer.host}:{peer.port}",
                "client-connection": "up" if peer.link_up else "down",
                "server-connection": "up" if peer.conn is not None else "down",
                "connects": peer.link.connects if peer.link is not None else 0,
                "owned-dns": controller.ownership.owned_count(peer.node),
                "interests": len(peer.interests),
                **stats.to_dict(),
            }
        return {"application": controller.name, "node": controller.node,
                "mode": "optimised" if self.table.optimised else "normal",
                "tc-latency-poll-interval": self.poll_interval, "peers": peers}

    # -- peer server connections (the peer's link to our TCport) -------------------------
    def peer_connected(self, conn: TLibConnection) -> None:
        """The peer's link to our TCport is up: it gets a ``granted`` for every
        DN owned here, and the calls of this node on the DNs it owns."""
        peer = self.table.by_tc[conn.application]
        old, peer.conn = peer.conn, conn
        if old is not None and old is not conn:
            old.close()
        sent = self._send_owned_dns(conn, DnGranted)
        peer.tx.inc(sent)
        calls = self.repeat_calls(peer)
        self.log.info("peer_connected", peer=peer.tc, owned_dns_sent=sent, calls_sent=calls)

    def bulk_registered(self, conn: TLibConnection) -> None:
        """A Smart Proxy's bulk registration: the state of every DN owned here."""
        self._send_owned_dns(conn, DnSnapshot)

    def _send_owned_dns(self, conn: TLibConnection, granted: type[DnGranted]) -> int:
        sent = 0
        for message in self.controller.owned_dn_messages(granted):
            name, attributes = message.to_wire()
            if conn.send_event(name, attributes) is not None:
                sent += 1
        return sent

    def peer_closed(self, conn: TLibConnection) -> None:
        peer = self.table.by_tc.get(conn.application)
        if peer is not None and peer.conn is conn:
            peer.conn = None
            peer.interests.clear()
            self.log.info("peer_disconnected", peer=peer.tc)
            # the peer's desktops are gone with it: logout-on-disconnect for their agents
            controller = self.controller
            now = controller.clock()
            prefix = f"{peer.tc}/"
            clients = {view.client for dn in controller.agents.logged_in()
                       if (view := controller.agents.agent(dn)) is not None
                       and view.client is not None and view.client.startswith(prefix)}
            for client in sorted(clients):
                controller.publish_agent_events(controller.agents.client_disconnected(client, now))

    # -- peer links (our client connections) ---------------------------------------------
    def link_up(self, peer: Peer) -> None:
        controller = self.controller
        peer.up_since = controller.clock()
        controller.ownership.peer_restored(peer.node, controller.clock())
        controller.schedule_timer()
        # the peer's clients see our events again only for what we ask for
        self.table.send_interests(peer)
        self.log.info("peer_link_up", peer=peer.tc, interests=len(self.table.local_interest))

    def link_down(self, peer: Peer, reason: str, lost: list[ForwardedRequest]) -> None:
        controller = self.controller
        peer.up_since = None
        peer.stats.link_lost()
        for request in lost:
            origin = request.origin
            if isinstance(origin, TLibConnection):
                origin.answer_error(request.reference_id, ErrorCode.INTERNAL_ERROR,
                                    f"Link to {peer.tc} lost ({reason}): {request.name} has "
                                    "no answer")
        self.log.warning("peer_lost", peer=peer.tc, reason=reason,
                         tc_reconnect_timeout=controller.ownership.tc_reconnect_timeout,
                         owned_dns=controller.ownership.owned_count(peer.node))
        controller.apply(controller.ownership.peer_lost(peer.node, controller.clock()))

    def on_peer_event(self, peer: Peer, event: TMap, answers: ForwardedRequest | None) -> None:
        name = event.get("message")
        if not isinstance(name, str):
            return
        if answers is not None and answers.origin is _POLL:
            peer.stats.poll_answered(answers.link_reference_id, event_wall_time(event),
                                     time.time(), time.monotonic())
            return
        if name == "EventServerInfo":
            return
        peer.rx.inc()
        controller = self.controller
        attributes = {k: v for k, v in event.items() if k not in _LINK_ATTRIBUTES}
        answer: tuple[TLibConnection, int] | None = None
        if answers is not None and isinstance(answers.origin, TLibConnection):
            answer = (answers.origin, answers.reference_id)
        if answers is None:
            try:
                message = decode_event(name, attributes)
            except MalformedMeshMessage as exc:
                self.table.refused(peer.tc, name, exc)
                return
            handler = self._events.get(type(message)) if message is not None else None
            if handler is not None:
                handler(peer, message)
                return
        if name in ("EventACK", "EventError") or (answers is not None and answer is None):
            if answer is not None:
                answered = dict(attributes)
                answered["AttributeReferenceID"] = answer[1]
                answer[0].send_event(name, answered)
            return
        dn = attributes.get("AttributeThisDN")
        if (name in CALL_EVENTS and isinstance(dn, str)
                and controller.ownership.owner(dn) == controller.node):
            conn_id = attributes.get("AttributeConnID")
            if isinstance(conn_id, str):
                self.table.remember_call(conn_id, peer.node)
            controller.on_owned_call_event(name, attributes, answer)
            return
        controller.deliver_remote(name, attributes, answer)

    # -- calls ------------------------------------------------------------------------
    def repeat_calls(self, peer: Peer, dn: str | None = None) -> int:
        """The calls of this node on the DNs ``peer`` owns (only ``dn``'s if
        given), to it as :class:`CallState`: it forgot them when it lost this
        node. Returns the events sent."""
        if peer.conn is None:
            return 0
        calls = self.controller.calls_for_owner(peer.node, dn)
        return self.table.repeat_calls(
            peer, (CallState(call.name, call.attributes, call.answered) for call in calls))

    def _call_state(self, peer: Peer, message: CallState) -> None:
        """A peer's repeat of a call on its node (:meth:`repeat_calls`)."""
        controller = self.controller
        name, event = message.name, dict(message.attributes)
        dn = event.get("AttributeThisDN")
        conn_id = event.get("AttributeConnID")
        if (name not in CALL_EVENTS or not isinstance(dn, str) or not isinstance(conn_id, str)
                or controller.ownership.owner(dn) != controller.node):
            self.table.dropped.labels("call-state-not-owned").inc()
            self.log.info("peer_call_state_ignored", peer=peer.tc, dn=dn, tlib_event=name)
            return
        self.table.remember_call(conn_id, peer.node)
        controller.restore_call(name, event, answered=message.answered)

    # -- ownership decisions ------------------------------------------------------------
    def _apply_decision(self, peer: Peer, message: DnGranted | DnMoved | DnReleased) -> None:
        controller = self.controller
        dn = message.dn
        now = controller.clock()
        try:
            decision = decision_of(message, now, peer.node)
        except ValueError as exc:
            self.table.dropped.labels("bad-decision").inc()
            self.log.warning("mesh_message_refused", peer=peer.tc, dn=dn, mesh=message.marker,
                             reason="bad-decision", error=str(exc))
            return
        controller.remote_agents.pop(dn, None)
        if isinstance(message, DnGranted):
            controller.mirror_announced_agent(message)
        controller.apply(controller.ownership.apply(decision, now),
                         details={dn: message.announced_attributes()})
        if not isinstance(message, DnReleased):
            owner = self.table.owner_peer(dn)
            if owner is not None:
                self.repeat_calls(owner, dn)  # the owner may have forgotten them

    # -- latency polls ----------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.poll_all()

    def poll_all(self) -> int:
        """One poll cycle: a ``RequestQueryServer`` to every connected peer."""
        sent = 0
        for peer in self.peers.values():
            link = peer.link
            if link is None or not link.up:
                continue
            try:
                forwarded = link.send("RequestQueryServer", {}, origin=_POLL)
            except (NodeLinkDown, TLibError):
                continue
            peer.stats.poll_sent(forwarded.link_reference_id, time.time(), time.monotonic())
            peer.stats.tx_queue_len = peer.tx_queue()
            peer.stats.rx_queue_len = peer.rx_queue()
            sent += 1
        return sent
