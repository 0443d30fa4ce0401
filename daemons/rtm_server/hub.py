"""The hub's policy (docs/rtm-server.md; guide: "Multi-Site RTM Server is the
hub through which all messages pass"): sessions per site, routing, the
per-destination queues, request correlation, dead letters, flood control and
the group commit to the store. No sockets here: :mod:`.service` wires a
:class:`Link` per connection.

Rules:

* One live session per site (a second one is refused ``already-connected``).
* A ``Send`` is taken only in order: ``seq`` one above the site's highest held
  (a lower one is a resend, a duplicate: acknowledged again, stored never; a
  higher one follows a refused one and is dropped, the site sends it again).
* ``Accepted`` is sent once the batch holding the message is committed.
* Each destination's queue is delivered in delivery-id order, at most
  ``window`` unacknowledged; the site's cumulative ``Ack`` removes them.
* Broadcast ``*``: one copy per configured site other than the origin.
* A destination over ``max-queue-bytes`` gets the message in the dead letters
  (``queue-full``); a message older than ``message-ttl`` for a site that is
  away goes there too (``ttl-expired``).
* A request gets a correlation id; its response is routed by correlation and
  ``reply_to``; past the request's timeout the requester is told ``timeout``
  and a later response is discarded and counted (``late``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from daemons.rtm_server.store import (
    Batch,
    HubState,
    PendingRequest,
    Store,
    StoredMessage,
    StoreError,
)
from daemons.runtime.management import Metrics
from protocols.rtm.errors import RtmCode
from protocols.rtm.events import (
    AckReceived,
    HandshakeRefused,
    PeerLost,
    PongReceived,
    ProtocolViolation,
    SendInvalid,
    SendReceived,
    SessionClosed,
    SessionEvent,
    SiteAuthenticated,
)
from protocols.rtm.messages import PROTOCOL_VERSION
from protocols.rtm.session import HubSession

__all__ = ["Hub", "HubMetrics", "HubOptions", "Link"]

#: Bytes a queued message counts for besides its elements and ids.
MESSAGE_OVERHEAD = 64
_EMPTY_ELEMENTS = b"\x90"  # msgpack []


@dataclass(frozen=True)
class HubOptions:
    """``[applications.NAME.options]`` of an rtm-server (docs/rtm-server.md)."""

    sites: dict[int, str]
    max_queue_bytes: int = 64 * 1024 * 1024
    message_ttl: float = 7 * 86400.0
    keepalive: float = 10.0
    window: int = 512
    max_rate: float = 5000.0
    max_frame_size: int = 1024 * 1024
    busy_retry_ms: int = 500
    sweep_interval: float = 1.0


class HubMetrics:
    """The hub's counters and gauges, made once per process (a hub that takes
    over again after losing its store reports into the same ones)."""

    def __init__(self, m: Metrics, sites: Iterable[int]) -> None:
        self.hub: Hub | None = None
        self.accepted = m.tally("rtm_messages_accepted", "Messages the hub took durably",
                                ("kind",))
        self.received = m.tally("rtm_messages_received", "Messages taken from each site",
                                ("site",))
        self.delivered = m.tally("rtm_messages_delivered",
                                 "Deliveries acknowledged by their destination", ("site",))
        self.duplicates = m.tally("rtm_duplicates", "Resent messages the hub already held",
                                  ("site",))
        self.refused = m.tally("rtm_refused", "Sessions and messages refused, by reason",
                               ("reason",))
        self.dead = m.tally("rtm_dead_letters", "Messages moved to the dead letters",
                            ("reason",))
        self.late = m.tally("rtm_late_responses",
                            "Responses discarded: their request timed out or was answered",
                            ("site",))
        self.timeouts = m.tally("rtm_request_timeouts", "Requests whose timeout passed",
                                ("site",))
        self.commit = m.histogram("rtm_commit_seconds", "Time of one group commit",
                                  buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                                           0.1, 0.25, 1.0))
        self.batch = m.histogram("rtm_commit_messages", "Messages per group commit",
                                 buckets=(1, 4, 16, 64, 256, 1024, 4096))
        m.gauge("rtm_sessions", "Open site sessions").set_function(
            lambda: len(self.hub.links) if self.hub else 0)
        depth = m.gauge("rtm_queue_messages", "Messages queued per destination site", ("site",))
        size = m.gauge("rtm_queue_bytes", "Bytes queued per destination site", ("site",))
        rtt = m.gauge("rtm_link_rtt_seconds", "Last keep-alive round trip per site", ("site",))
        up = m.gauge("rtm_link_up", "1 while the site has a live session", ("site",))
        for site in sites:
            depth.labels(str(site)).set_function(partial(self._queue, site, "count"))
            size.labels(str(site)).set_function(partial(self._queue, site, "bytes"))
            rtt.labels(str(site)).set_function(partial(self._rtt, site))
            up.labels(str(site)).set_function(partial(self._up, site))
        m.gauge("rtm_pending_requests", "Requests waiting for their response").set_function(
            lambda: len(self.hub.pending) if self.hub else 0)
        m.gauge("rtm_dead_letter_messages", "Messages held in the dead letters").set_function(
            lambda: self.hub.dead_letters if self.hub else 0)

    def _queue(self, site: int, what: str) -> float:
        q = self.hub.queues.get(site) if self.hub else None
        return float(getattr(q, what)) if q is not None else 0.0

    def _rtt(self, site: int) -> float:
        link = self.hub.links.get(site) if self.hub else None
        return (link.rtt or 0.0) if link is not None else 0.0

    def _up(self, site: int) -> float:
        return 1.0 if self.hub is not None and site in self.hub.links else 0.0


class Link:
    """One connection: its session, the driver that moves its bytes, its site."""

    def __init__(self, session: HubSession, peer: str, flush: Callable[[], None]) -> None:
        self.session = session
        self.peer = peer
        self.flush = flush
        self.site: int | None = None
        self.tokens = 0.0
        self.refilled = 0.0
        self.busy_until = 0.0
        self.rtt: float | None = None
        self.received = 0
        self.delivered = 0


@dataclass
class DestQueue:
    """A destination's queue as the hub sees it: totals always, messages only
    while the site is connected (``buffer``: fetched, not sent; ``inflight``:
    sent, not acknowledged)."""

    count: int = 0
    bytes: int = 0
    buffer: deque[StoredMessage] = field(default_factory=deque)
    inflight: deque[tuple[int, int, float]] = field(default_factory=deque)
    #: highest id held in memory (buffer or inflight) or acknowledged
    loaded: int = 0
    #: True: no row of this queue beyond ``loaded`` is in the store
    complete: bool = False
    fetching: bool = False
    acked: int = 0


class Hub:
    """Routing, queues and the group commit of one active hub."""

    def __init__(self, name: str, options: HubOptions, store: Store, state: HubState, *,
                 metrics: HubMetrics, log: Any, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.options = options
        self.store = store
        self.metrics = metrics
        self.log = log
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.links: dict[int, Link] = {}
        self.origins: dict[int, int] = dict(state.origins)  # taken (maybe not committed)
        self.committed: dict[int, int] = dict(state.origins)
        self.queues: dict[int, DestQueue] = {
            s: DestQueue() for s in options.sites}
        for dest, (count, size) in state.queues.items():
            q = self.queues.setdefault(dest, DestQueue())
            q.count, q.bytes = count, size
        self.pending: dict[int, PendingRequest] = {p.correlation: p for p in state.pending}
        self.last_id = state.last_id
        self.last_correlation = state.last_correlation
        self.dead_letters = state.dead_letters
        self._batch = Batch()
        self._fetches: deque[int] = deque()
        self._expire_due = False
        self._ping_due = False
        self._wake = asyncio.Event()
        self.failed = asyncio.Event()
        self.failure = ""
        self._writer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        m = metrics
        self.m_accepted = m.accepted
        self.m_delivered = m.delivered
        self.m_received = m.received
        self.m_duplicates = m.duplicates
        self.m_refused = m.refused
        self.m_dead = m.dead
        self.m_late = m.late
        self.m_timeouts = m.timeouts
        self.m_commit = m.commit
        self.m_batch = m.batch
        metrics.hub = self
        self._dispatch: dict[type[SessionEvent], Callable[[Link, Any], None]] = {
            SiteAuthenticated: self._on_authenticated,
            SendReceived: self._on_send,
            SendInvalid: self._on_send_invalid,
            AckReceived: self._on_ack,
            PongReceived: self._on_pong,
            HandshakeRefused: self._on_refused,
            ProtocolViolation: self._on_violation,
            PeerLost: self._on_peer_lost,
            SessionClosed: self._on_closed,
        }

    # -- metrics ----------------------------------------------------------------------
    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())
        self._sweeper = asyncio.create_task(self._sweep_loop())
        self.log.info("rtm_hub_active", queued=sum(q.count for q in self.queues.values()),
                      pending_requests=len(self.pending), last_id=self.last_id)

    async def close(self) -> None:
        """Close every session and write what was taken."""
        self._closing = True
        for link in list(self.links.values()):
            link.session.close("hub-stopping")
            link.flush()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._writer is not None and not self.failed.is_set():
            with contextlib.suppress(StoreError):
                await self._drain()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _drain(self) -> None:
        for _ in range(100):
            if not self._batch and not self._fetches:
                return
            self._wake.set()
            await asyncio.sleep(0.01)

    def _fail(self, exc: Exception) -> None:
        self.failure = str(exc)
        self.log.error("rtm_store_failed", error=str(exc))
        self.failed.set()

    # -- sessions ---------------------------------------------------------------------
    def handle(self, link: Link) -> None:
        """Dispatch what the link's session reported (after input or a timer)."""
        session = link.session
        while (event := session.next_event()) is not None:
            handler = self._dispatch.get(type(event))
            if handler is not None:
                handler(link, event)

    def _on_authenticated(self, link: Link, event: SiteAuthenticated) -> None:
        now = self.loop.time()
        site = event.site
        if event.mode == "check":
            q = self.queues.get(site, DestQueue())
            self.log.info("rtm_check_site", site=site, peer=link.peer)
            link.session.welcome(self.committed.get(site, 0), now, status={
                "connected": site in self.links, "queued": q.count, "queued_bytes": q.bytes,
                "hub": self.name, "version": PROTOCOL_VERSION,
                "sites": sorted(self.options.sites)})
            link.session.close("check-site")
            return
        if site in self.links:
            self.m_refused.labels(RtmCode.ALREADY_CONNECTED.value).inc()
            self.log.warning("rtm_session_refused", site=site, peer=link.peer,
                             reason=RtmCode.ALREADY_CONNECTED.value)
            link.session.refuse(RtmCode.ALREADY_CONNECTED,
                                f"site {site} already has a live session", now)
            return
        link.site = site
        link.tokens = self._burst()
        link.refilled = now
        self.links[site] = link
        link.session.welcome(self.committed.get(site, 0), now)
        q = self.queues.setdefault(site, DestQueue())
        q.buffer.clear()
        q.inflight.clear()
        q.loaded = q.acked
        q.complete = q.count == 0
        self.log.info("rtm_site_connected", site=site, peer=link.peer, queued=q.count,
                      last_seq=self.committed.get(site, 0))
        self._pump(site)

    def _on_closed(self, link: Link, event: SessionClosed) -> None:
        site = link.site
        if site is None or self.links.get(site) is not link:
            return
        del self.links[site]
        q = self.queues[site]
        q.buffer.clear()
        q.inflight.clear()
        q.complete = False
        if not self._closing:
            self.log.info("rtm_site_disconnected", site=site, peer=link.peer,
                          reason=event.reason, queued=q.count)

    def _on_refused(self, link: Link, event: HandshakeRefused) -> None:
        if event.code == RtmCode.ALREADY_CONNECTED.value:
            return  # counted where refused
        self.m_refused.labels(event.code).inc()
        self.log.warning("rtm_session_refused", site=event.site, peer=link.peer,
                         reason=event.code, detail=event.reason)

    def _on_violation(self, link: Link, event: ProtocolViolation) -> None:
        self.m_refused.labels(event.code).inc()
        self.log.warning("rtm_protocol_error", site=link.site, peer=link.peer, code=event.code,
                         detail=event.reason)

    def _on_peer_lost(self, link: Link, event: PeerLost) -> None:
        self.log.warning("rtm_site_lost", site=link.site, peer=link.peer,
                         reason="keepalive-timeout")

    def _on_pong(self, link: Link, event: PongReceived) -> None:
        link.rtt = event.rtt

    # -- taking messages --------------------------------------------------------------
    def _burst(self) -> float:
        return max(self.options.max_rate, 1.0)

    def _flooding(self, link: Link, now: float) -> bool:
        rate = self.options.max_rate
        if rate <= 0:
            return False
        if now < link.busy_until:
            return True
        link.tokens = min(self._burst(), link.tokens + (now - link.refilled) * rate)
        link.refilled = now
        if link.tokens < 1.0:
            return True
        link.tokens -= 1.0
        return False

    def _in_order(self, link: Link, site: int, seq: int) -> bool:
        """True when ``seq`` is the next one to take from ``site``."""
        held = self.origins.get(site, 0)
        if seq == held + 1:
            return True
        if seq <= held:
            self.m_duplicates.labels(str(site)).inc()
            if seq <= self.committed.get(site, 0):
                link.session.accept(self.committed[site], self.loop.time())
        else:
            self.m_refused.labels(RtmCode.OUT_OF_ORDER.value).inc()
        return False

    def _on_send_invalid(self, link: Link, event: SendInvalid) -> None:
        site = link.site
        assert site is not None
        if not self._in_order(link, site, event.seq):
            return
        self._reject(link, site, event.seq, RtmCode(event.code), event.reason)

    def _reject(self, link: Link, site: int, seq: int, code: RtmCode, reason: str) -> None:
        self.m_refused.labels(code.value).inc()
        self.log.warning("rtm_message_rejected", site=site, seq=seq, code=code.value,
                         detail=reason)
        link.session.reject(seq, code, reason, self.loop.time())
        self._take(site, seq)

    def _take(self, site: int, seq: int) -> None:
        self.origins[site] = seq
        self._batch.origins[site] = seq
        self._wake.set()

    def _on_send(self, link: Link, event: SendReceived) -> None:
        site = link.site
        assert site is not None
        send = event.send
        now = self.loop.time()
        if not self._in_order(link, site, send.seq):
            return
        if self._flooding(link, now):
            # every frame refused here is the next one in order (the later ones
            # are out of order): tell the site each time when to send it again
            if now >= link.busy_until:
                link.busy_until = now + self.options.busy_retry_ms / 1000
                self.m_refused.labels(RtmCode.FLOOD.value).inc()
                self.log.warning("rtm_flood", site=site, seq=send.seq,
                                 max_rate=self.options.max_rate,
                                 retry_ms=self.options.busy_retry_ms)
            retry_ms = max(1, int((link.busy_until - now) * 1000))
            link.session.busy(send.seq, retry_ms, now)
            return
        link.received += 1
        self.m_received.labels(str(site)).inc()
        wall = self.clock()
        if send.kind == "response":
            self._route_response(link, site, send.seq, send.correlation, send.reply_to,
                                 send.object, send.event, event.elements, wall)
            return
        if send.to == "*":
            if send.kind != "event":
                self._reject(link, site, send.seq, RtmCode.UNKNOWN_DESTINATION,
                             "a request goes to one site, not '*'")
                return
            dests = [s for s in self.options.sites if s != site]
        else:
            dest = int(send.to) if send.to.isdigit() else 0
            if dest not in self.options.sites:
                self._reject(link, site, send.seq, RtmCode.UNKNOWN_DESTINATION,
                             f"no site {send.to!r} in this collective")
                return
            dests = [dest]
        correlation = 0
        if send.kind == "request":
            self.last_correlation += 1
            correlation = self.last_correlation
        for dest in dests:
            message = self._queue(dest, site, send.kind, send.object, send.event,
                                  event.elements, correlation, site if correlation else 0, 0,
                                  wall)
            if correlation:
                deadline = wall + send.timeout_ms / 1000 if send.timeout_ms else None
                pending = PendingRequest(correlation, site, dest, send.seq, deadline,
                                         message.id)
                self.pending[correlation] = pending
                self._batch.pending_add.append(pending)
        self.m_accepted.labels(send.kind).inc()
        self._take(site, send.seq)

    def _route_response(self, link: Link, site: int, seq: int, correlation: int,
                        reply_to: int, object_: str, event_: str, elements: bytes,
                        wall: float) -> None:
        pending = self.pending.get(correlation)
        if pending is None or pending.requester != reply_to or pending.responder != site:
            self.m_late.labels(str(site)).inc()
            self.log.info("rtm_late_response", site=site, correlation=correlation,
                          reply_to=reply_to)
            self._take(site, seq)
            return
        del self.pending[correlation]
        self._batch.pending_done.append(correlation)
        self._queue(reply_to, site, "response", object_, event_, elements, correlation, 0,
                    pending.request_seq, wall)
        self.m_accepted.labels("response").inc()
        self._take(site, seq)

    def _queue(self, dest: int, origin: int, kind: str, object_: str, event_: str,
               elements: bytes, correlation: int, reply_to: int, in_reply_to: int,
               wall: float) -> StoredMessage:
        self.last_id += 1
        size = len(elements) + len(object_) + len(event_) + MESSAGE_OVERHEAD
        # a request waits for its own timeout (0: forever), not for message-ttl
        ttl = self.options.message_ttl if kind != "request" else 0
        message = StoredMessage(self.last_id, dest, origin, kind, object_, event_, elements,
                                correlation, reply_to, in_reply_to, wall,
                                wall + ttl if ttl > 0 else None, size)
        q = self.queues.setdefault(dest, DestQueue())
        if q.bytes + size > self.options.max_queue_bytes:
            self._batch.dead.append((message, "queue-full"))
            self.m_dead.labels("queue-full").inc()
            self.dead_letters += 1
            if q.bytes <= self.options.max_queue_bytes - size // 2 or not q.fetching:
                self.log.warning("rtm_queue_full", site=dest, origin=origin,
                                 queued_bytes=q.bytes,
                                 max_queue_bytes=self.options.max_queue_bytes)
            return message
        q.count += 1
        q.bytes += size
        self._batch.messages.append(message)
        return message

    # -- delivering -------------------------------------------------------------------
    def _on_ack(self, link: Link, event: AckReceived) -> None:
        site = link.site
        assert site is not None
        q = self.queues[site]
        done = 0
        upto = 0
        while q.inflight and q.inflight[0][0] <= event.id:
            upto, size, _ = q.inflight.popleft()
            q.count -= 1
            q.bytes -= size
            done += 1
        if done:
            # cumulative, but never past what was delivered: an Ack beyond it
            # cannot remove messages the site has not seen
            self.m_delivered.labels(str(site)).inc(done)
            link.delivered += done
            q.acked = upto
            self._batch.acks[site] = upto
            self._wake.set()
        self._pump(site)

    def _pump(self, site: int) -> None:
        link = self.links.get(site)
        if link is None or not link.session.open:
            return
        q = self.queues[site]
        window = self.options.window
        session = link.session
        now = self.loop.time()
        sent = False
        while q.buffer and len(q.inflight) < window:
            m = q.buffer.popleft()
            fields: dict[str, Any] = {"id": m.id, "origin": m.origin, "kind": m.kind,
                                      "object": m.object, "event": m.event, "at": m.at}
            if m.correlation:
                fields["correlation"] = m.correlation
            if m.reply_to:
                fields["reply_to"] = m.reply_to
            if m.in_reply_to:
                fields["in_reply_to"] = m.in_reply_to
            session.deliver(fields, m.elements, now)
            q.inflight.append((m.id, m.size, m.at))
            sent = True
        if not q.buffer and not q.complete and not q.fetching \
                and len(q.inflight) < window:
            q.fetching = True
            self._fetches.append(site)
            self._wake.set()
        if sent:
            link.flush()

    def _fetched(self, site: int, rows: list[StoredMessage], limit: int) -> None:
        q = self.queues[site]
        q.fetching = False
        if site not in self.links:
            return
        for m in rows:
            if m.id > q.loaded:
                q.buffer.append(m)
                q.loaded = m.id
        if len(rows) < limit:
            q.complete = True
        self._pump(site)

    def _committed(self, batch: Batch, moved: list[tuple[int, int, int, str]]) -> None:
        now = self.loop.time()
        for site, seq in batch.origins.items():
            if seq > self.committed.get(site, 0):
                self.committed[site] = seq
            link = self.links.get(site)
            if link is not None and link.session.open:
                link.session.accept(self.committed[site], now)
                link.flush()
        touched: set[int] = set()
        for m in batch.messages:
            q = self.queues[m.dest]
            if m.dest in self.links and q.complete and m.id > q.loaded:
                q.buffer.append(m)
                q.loaded = m.id
                touched.add(m.dest)
        self._moved(moved)
        for site in touched:
            self._pump(site)

    def _moved(self, moved: Iterable[tuple[int, int, int, str]]) -> None:
        for delivery_id, dest, size, reason in moved:
            q = self.queues.setdefault(dest, DestQueue())
            q.count -= 1
            q.bytes -= size
            self.m_dead.labels(reason).inc()
            self.dead_letters += 1
            self.log.info("rtm_dead_letter", site=dest, id=delivery_id, reason=reason)

    # -- the writer and the sweeper ----------------------------------------------------
    async def _write_loop(self) -> None:
        store = self.store
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self._batch or self._fetches or self._expire_due or self._ping_due:
                    if self._ping_due:
                        # an idle active hub learns it lost its store (and its lock)
                        self._ping_due = False
                        await store.ping()
                    if self._batch:
                        batch, self._batch = self._batch, Batch()
                        batch.last_id = self.last_id
                        batch.last_correlation = self.last_correlation
                        batch.at = self.clock()
                        started = time.perf_counter()
                        moved = await store.commit(batch)
                        self.m_commit.observe(time.perf_counter() - started)
                        self.m_batch.observe(len(batch.messages))
                        self._committed(batch, moved)
                    while self._fetches:
                        site = self._fetches.popleft()
                        q = self.queues[site]
                        limit = max(64, self.options.window * 2)
                        rows = await store.fetch(site, q.loaded, limit)
                        self._fetched(site, rows, limit)
                    if self._expire_due:
                        self._expire_due = False
                        moved = await store.expire(self.clock(), list(self.links), 1000)
                        self._moved(moved)
            except StoreError as exc:
                self._fail(exc)
                return

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep_interval)
            self._ping_due = True
            self.sweep(self.clock())
            self._wake.set()

    def sweep(self, wall: float) -> None:
        """Time out requests whose deadline passed; ask for the TTL sweep."""
        for correlation, p in list(self.pending.items()):
            if p.deadline is None or p.deadline > wall:
                continue
            del self.pending[correlation]
            self._batch.pending_done.append(correlation)
            self.m_timeouts.labels(str(p.requester)).inc()
            self._queue(p.requester, p.responder, "timeout", "rtm", "timeout",
                        _EMPTY_ELEMENTS, correlation, 0, p.request_seq, wall)
            if p.responder not in self.links:
                self._batch.kill.append((p.delivery_id, "request-timeout"))
            self.log.info("rtm_request_timeout", requester=p.requester,
                          responder=p.responder, correlation=correlation)
        if self.options.message_ttl > 0 and any(
                q.count for s, q in self.queues.items() if s not in self.links):
            self._expire_due = True
        if self._batch or self._expire_due:
            self._wake.set()

    # -- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "hub": self.name,
            "sites": {str(s): {"connected": s in self.links,
                               "peer": self.links[s].peer if s in self.links else None,
                               "rtt": self.links[s].rtt if s in self.links else None,
                               "queued": q.count, "queued_bytes": q.bytes,
                               "inflight": len(q.inflight),
                               "last_seq": self.committed.get(s, 0)}
                      for s, q in sorted(self.queues.items())},
            "pending_requests": len(self.pending),
            "dead_letters": self.dead_letters,
            "last_id": self.last_id,
        }
