"""One registration view for the whole cluster: bindings replicated between
every SIP Proxy (guide: "SIP Registration": "It has a shared registration-info
storage. Any endpoint can be reached by any SIP Proxy").

Peer-to-peer over the project's length-prefixed msgpack frames
(:mod:`protocols.tlib.framing`), one TCP listener per proxy on its
``replication-port``. Design and reasons: docs/sip-proxy.md, "Replication".

Links. Every proxy *subscribes* to every other proxy: it connects to the
peer's replication port from its own host address and sends

    {"t": "hello", "name": <its name>, "full": <bool>, "fields": <int>}

The peer (the *publisher* side of that connection) checks that the name is a
sip-proxy of the cluster file and that the connection comes from that proxy's
host, then sends a snapshot -- every binding it knows when ``full`` is true,
else only those it originated -- in batches ``{"t": "snap", "b": [...]}``,
then ``{"t": "sync", "n": <count>}``, then, for as long as the connection
lives, every binding it originates ``{"t": "upd", "b": [...]}``. A subscriber
may ask again for a full snapshot at any time with ``{"t": "full"}``.

Record format. A binding is a list (:meth:`~daemons.sip_proxy.registrar.Binding.to_wire`);
``fields`` in the hello is how many of its fields the subscriber reads. A
proxy of an older release sends no ``fields`` and refuses a record longer than
the twelve it knows (it drops the link), so it gets the twelve
(:data:`~daemons.sip_proxy.registrar.LEGACY_WIRE_FIELDS`) and the proxies of
both releases replicate to each other during a rolling upgrade; a record of
the older form reads with the newer fields empty.

Catch-up. A starting proxy asks the first peer that answers for a full
snapshot, and every other peer for its own bindings, so nothing originated
while the snapshot was being taken can be missed: an origin's updates come
from the origin itself. It is *synced* once a full snapshot has arrived, or
when no peer can be reached (it is the first proxy up), or after
``sync_timeout``. Until then the proxy answers 503 and ``/healthz`` fails.

Coalescing. A publisher sends what it originates at once when its last frame
to that subscriber left at least ``batch_interval`` ago (5 ms by default,
``--replication-batch-ms``), else when that interval has passed, in one frame:
under load every binding of the interval shares one frame, one write and one
wake-up of the subscriber, and a binding waits at most the interval.

Merging is idempotent, last writer wins by ``(stamp, origin)``
(:meth:`daemons.sip_proxy.registrar.BindingStore.apply`), so duplicates
and reordering between the full snapshot and the origins' streams are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemons.runtime.service import cancel_and_wait
from daemons.sip_proxy.registrar import LEGACY_WIRE_FIELDS, WIRE_FIELDS, Binding, BindingStore
from protocols.tlib.errors import FrameTooLarge, MalformedFrame
from protocols.tlib.framing import FrameDecoder, encode_frame

__all__ = ["PeerAddress", "Replicator"]

#: Bindings per frame (a frame stays far below the 1 MiB frame limit).
BATCH = 1000


@dataclass(frozen=True, slots=True)
class PeerAddress:
    name: str
    host: str
    port: int


@dataclass(slots=True)
class _Subscriber:
    """An inbound link: a peer that receives what we originate."""

    name: str
    writer: asyncio.StreamWriter
    pending: list[list[Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    want_full: bool = False
    #: binding fields the subscriber reads (its hello's ``fields``)
    fields: int = LEGACY_WIRE_FIELDS
    #: loop time the last frame to it was written
    last_sent: float = 0.0


@dataclass(slots=True)
class _PeerLink:
    """An outbound link: a peer we receive bindings from."""

    peer: PeerAddress
    connected: bool = False
    synced: bool = False  # its snapshot has been fully received
    full_requested: bool = False
    writer: asyncio.StreamWriter | None = None
    received: int = 0
    connects: int = 0
    failures: int = 0
    last_error: str | None = None


class Replicator:
    """The replication links of one proxy (see module docstring)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        store: BindingStore,
        peers: list[PeerAddress],
        *,
        log: Any,
        metrics: Any = None,
        sync_timeout: float = 30.0,
        retry_interval: float = 1.0,
        on_apply: Callable[[Binding], None] | None = None,
        family: str | None = None,
        sibling_port: int | None = None,
        batch_interval: float = 0.005,
    ) -> None:
        self.name = name
        #: a worker of a sip-proxy with ``workers > 1`` (docs/sip-proxy.md, "Workers"):
        #: the proxy's name; bindings of every worker (origin ``NAME~wI``) go to the
        #: other proxies as the proxy's own, whichever worker took their link
        self.family = family
        #: a worker's own port, where only its sibling workers subscribe (the
        #: shared replication port is SO_REUSEPORT across the workers)
        self.sibling_port = sibling_port
        #: seconds a binding may wait so that it shares a frame with the next ones
        #: (see "Coalescing" above); 0 sends each wake-up's bindings at once
        self.batch_interval = batch_interval
        self.frames_sent = 0
        self._sibling_server: asyncio.AbstractServer | None = None
        self.host = host
        self.port = port
        self.store = store
        self.peers = {p.name: p for p in peers}
        self.log = log
        self.sync_timeout = sync_timeout
        self.retry_interval = retry_interval
        self.on_apply = on_apply
        self.links = {p.name: _PeerLink(p) for p in peers}
        self.subscribers: dict[int, _Subscriber] = {}
        self._synced = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._full_source: str | None = None
        self._started = 0.0
        self.sync_seconds: float | None = None
        self.applied = 0
        self.sent = 0
        if metrics is not None:
            self._m_applied = metrics.counter(
                "replication_bindings_applied", "Bindings received that changed the store",
                ("peer",))
            self._m_sent = metrics.counter(
                "replication_bindings_sent", "Bindings sent to subscribers")
            self._m_peers = metrics.gauge(
                "replication_peers_connected", "Peers we receive from")
        else:
            self._m_applied = self._m_sent = self._m_peers = None

    # ------------------------------------------------------------ lifecycle

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def start(self) -> int:
        """Listen, connect to every peer; returns the bound replication port."""
        self._started = time.monotonic()
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  reuse_address=True,
                                                  reuse_port=self.family is not None or None)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.sibling_port is not None:
            self._sibling_server = await asyncio.start_server(
                self._serve, self.host, self.sibling_port, reuse_address=True)
        self.log.info("replication_listening", port=self.port, peers=sorted(self.peers))
        if not self.peers:
            self._mark_synced("no_peers")
        for link in self.links.values():
            self._tasks.append(asyncio.create_task(self._run_link(link)))
        self._tasks.append(asyncio.create_task(self._sync_deadline()))
        return self.port

    async def close(self) -> None:
        # a link's retry loop can outlive one cancel (cancel_and_wait says when)
        await cancel_and_wait(*self._tasks)
        if self._server is not None:
            self._server.close()
        if self._sibling_server is not None:
            self._sibling_server.close()
        for sub in list(self.subscribers.values()):
            sub.writer.close()
        for link in self.links.values():
            if link.writer is not None:
                link.writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _mark_synced(self, why: str) -> None:
        if not self._synced.is_set():
            self.sync_seconds = time.monotonic() - self._started
            self._synced.set()
            self.log.info("replication_synced", reason=why, bindings=len(self.store),
                          seconds=round(self.sync_seconds, 3))

    async def _sync_deadline(self) -> None:
        await asyncio.sleep(self.sync_timeout)
        if not self.synced:
            self.log.warning("replication_sync_timeout", seconds=self.sync_timeout)
            self._mark_synced("timeout")

    def peer_alive(self, name: str) -> bool:
        link = self.links.get(name)
        return link is not None and link.connected

    # ------------------------------------------------------------ publishing

    def publish(self, binding: Binding) -> None:
        """A binding this proxy originated: stream it to every subscriber."""
        if not self.subscribers:
            return
        wire = binding.to_wire()
        for sub in self.subscribers.values():
            sub.pending.append(wire if sub.fields >= WIRE_FIELDS else wire[:sub.fields])
            sub.wake.set()

    def in_family(self, origin: str) -> bool:
        """``origin`` is this proxy or one of its workers."""
        family = self.family
        return family is not None and (origin == family or origin.startswith(family + "~"))

    def _relay(self, wire: list[Any]) -> None:
        """A sibling worker's binding (as it came, already checked by
        :meth:`Binding.from_wire`): to the other proxies subscribed here (the
        sibling streams it to the other workers itself)."""
        if len(wire) > WIRE_FIELDS:
            wire = wire[:WIRE_FIELDS]
        for sub in self.subscribers.values():
            if not self.in_family(sub.name):
                sub.pending.append(wire if sub.fields >= len(wire) else wire[:sub.fields])
                sub.wake.set()

    def _relaying(self) -> bool:
        """Some subscriber is another proxy (not a sibling worker)."""
        return any(not self.in_family(sub.name) for sub in self.subscribers.values())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        decoder = FrameDecoder()
        sub: _Subscriber | None = None
        sender: asyncio.Task[None] | None = None
        try:
            hello = await asyncio.wait_for(self._read_one(reader, decoder), 10.0)
            name = hello.get("name") if hello.get("t") == "hello" else None
            known = self.peers.get(name) if isinstance(name, str) else None
            if known is None and isinstance(name, str) and "~" in name:
                # a worker of a proxy with several workers subscribes under NAME~wI
                base = self.peers.get(name.split("~", 1)[0])
                known = PeerAddress(name, base.host, base.port) if base is not None else None
            if known is None or (peer and known.host not in (peer[0], "0.0.0.0")):
                self.log.warning("replication_peer_refused", peer=str(peer), name=name)
                return
            sub = _Subscriber(known.name, writer, fields=_fields_read(hello))
            fields = sub.fields
            # capture the snapshot and subscribe in the same step: nothing falls between
            full = bool(hello.get("full"))
            if full:
                snapshot = [b.to_wire(fields) for b in self.store.all()]
            elif self.family is not None and not self.in_family(known.name):
                snapshot = [b.to_wire(fields) for b in self.store.all()
                            if self.in_family(b.origin)]
            else:
                snapshot = [b.to_wire(fields) for b in self.store.from_origin(self.name)]
            self.subscribers[id(sub)] = sub
            self.log.info("replication_subscriber", peer=known.name, full=full,
                          snapshot=len(snapshot), fields=fields)
            await self._send_snapshot(writer, snapshot)
            sender = asyncio.create_task(self._sender(sub))
            while True:
                msg = await self._read_one(reader, decoder)
                if msg.get("t") == "full":
                    sub.want_full = True
                    sub.wake.set()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, MalformedFrame,
                FrameTooLarge, EOFError):
            pass
        finally:
            if sub is not None:
                self.subscribers.pop(id(sub), None)
            if sender is not None:
                sender.cancel()
            writer.close()

    async def _send_snapshot(self, writer: asyncio.StreamWriter, snapshot: list[list[Any]]
                             ) -> None:
        for i in range(0, len(snapshot), BATCH):
            writer.write(encode_frame({"t": "snap", "b": snapshot[i:i + BATCH]}))
            await writer.drain()
        writer.write(encode_frame({"t": "sync", "n": len(snapshot)}))
        await writer.drain()
        self.sent += len(snapshot)

    async def _sender(self, sub: _Subscriber) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await sub.wake.wait()
                hold = sub.last_sent + self.batch_interval - loop.time()
                if hold > 0:
                    # a frame left a moment ago: the bindings of the interval share the next
                    await asyncio.sleep(hold)
                sub.wake.clear()
                if sub.want_full:
                    sub.want_full = False
                    snapshot = [b.to_wire(sub.fields) for b in self.store.all()]
                    sub.pending.clear()  # the snapshot holds them
                    await self._send_snapshot(sub.writer, snapshot)
                    continue
                batch, sub.pending = sub.pending, []
                if not batch:
                    continue
                for i in range(0, len(batch), BATCH):
                    sub.writer.write(encode_frame({"t": "upd", "b": batch[i:i + BATCH]}))
                    self.frames_sent += 1
                sub.last_sent = loop.time()
                self.sent += len(batch)
                if self._m_sent is not None:
                    self._m_sent.inc(len(batch))
                await sub.writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            sub.writer.close()

    # ------------------------------------------------------------ subscribing

    async def _read_one(self, reader: asyncio.StreamReader, decoder: FrameDecoder
                        ) -> dict[str, Any]:
        while True:
            msg = decoder.next_frame()
            if msg is not None:
                return msg
            data = await reader.read(262144)
            if not data:
                raise EOFError
            decoder.feed(data)

    async def _run_link(self, link: _PeerLink) -> None:
        first = True
        while True:
            try:
                await self._link_once(link)
            except (OSError, asyncio.IncompleteReadError, EOFError, MalformedFrame,
                    FrameTooLarge, TimeoutError) as exc:
                link.failures += 1
                link.last_error = str(exc) or type(exc).__name__
            was = link.connected
            link.connected = False
            link.synced = False
            link.writer = None
            if self._m_peers is not None:
                self._m_peers.set(sum(1 for lk in self.links.values() if lk.connected))
            if was:
                self.log.warning("replication_peer_lost", peer=link.peer.name,
                                 error=link.last_error)
            if self._full_source == link.peer.name:
                self._full_source = None
                self._ask_full_elsewhere()
            if first:
                first = False
                self._check_alone()
            await asyncio.sleep(self.retry_interval)

    def _check_alone(self) -> None:
        """No peer reachable on the first try: nobody holds bindings we lack."""
        if self.synced:
            return
        if all(lk.failures > 0 and not lk.connected for lk in self.links.values()):
            self._mark_synced("no_peer_reachable")

    def _ask_full_elsewhere(self) -> None:
        if self.synced:
            return
        for link in self.links.values():
            if link.connected and link.writer is not None:
                self._full_source = link.peer.name
                link.full_requested = True
                link.synced = False
                link.writer.write(encode_frame({"t": "full"}))
                self.log.info("replication_full_requested", peer=link.peer.name)
                return

    async def _link_once(self, link: _PeerLink) -> None:
        peer = link.peer
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(peer.host, peer.port, local_addr=(self.host, 0)), 5.0)
        link.writer = writer
        try:
            full = not self.synced and self._full_source is None
            if full:
                self._full_source = peer.name
            link.full_requested = full
            writer.write(encode_frame({"t": "hello", "name": self.name, "full": full,
                                       "fields": WIRE_FIELDS}))
            await writer.drain()
            link.connected = True
            link.connects += 1
            if self._m_peers is not None:
                self._m_peers.set(sum(1 for lk in self.links.values() if lk.connected))
            self.log.info("replication_peer_connected", peer=peer.name, full=full)
            decoder = FrameDecoder()
            apply = self.store.apply
            on_apply = self.on_apply
            sibling = self.in_family(peer.name)
            counter = self._m_applied.labels(peer.name) if self._m_applied is not None \
                else None
            while True:
                data = await reader.read(262144)
                if not data:
                    raise EOFError("peer closed the link")
                decoder.feed(data)
                for msg in decoder:
                    kind = msg.get("t")
                    if kind in ("snap", "upd"):
                        items = msg.get("b")
                        if not isinstance(items, list):
                            raise MalformedFrame("binding batch is not a list")
                        changed = 0
                        # a sibling worker's bindings go on to the other proxies here
                        relay = self._relay if sibling and self._relaying() else None
                        for item in items:
                            try:
                                b = Binding.from_wire(item)
                            except ValueError as exc:
                                raise MalformedFrame(f"bad binding: {exc}") from exc
                            if apply(b):
                                changed += 1
                                if on_apply is not None:
                                    on_apply(b)
                                if relay is not None and b.origin == peer.name:
                                    relay(item)
                        link.received += len(items)
                        self.applied += changed
                        if counter is not None and changed:
                            counter.inc(changed)
                    elif kind == "sync":
                        link.synced = True
                        self.log.info("replication_snapshot_received", peer=peer.name,
                                      full=link.full_requested, count=msg.get("n"))
                        if link.full_requested:
                            self._mark_synced(f"snapshot_from_{peer.name}")
                            link.full_requested = False
                    # unknown kinds are ignored (newer peers)
        finally:
            writer.close()

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "sync_seconds": self.sync_seconds,
            "bindings": len(self.store),
            "applied": self.applied,
            "sent": self.sent,
            "frames_sent": self.frames_sent,
            "batch_ms": round(self.batch_interval * 1000, 3),
            "port": self.port,
            "subscribers": sorted(s.name for s in self.subscribers.values()),
            "peers": {name: {"connected": lk.connected, "synced": lk.synced,
                             "received": lk.received, "connects": lk.connects,
                             "failures": lk.failures, "last_error": lk.last_error,
                             "host": lk.peer.host, "port": lk.peer.port}
                      for name, lk in self.links.items()},
        }


def _fields_read(hello: dict[str, Any]) -> int:
    """How many binding fields the subscriber of ``hello`` reads: its ``fields``,
    at most ours; a hello without it (an older proxy) reads the twelve."""
    fields = hello.get("fields")
    if isinstance(fields, int) and not isinstance(fields, bool) and \
            fields >= LEGACY_WIRE_FIELDS:
        return min(fields, WIRE_FIELDS)
    return LEGACY_WIRE_FIELDS
