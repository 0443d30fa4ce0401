"""RTP on the event loop: one datagram socket per media stream, a shared 20 ms
pacer that sends by absolute deadlines, and a receiver that checks the source
(RFC 3550 §5, §8.2; RFC 3551 §4.2: 20 ms G.711 frames).

:class:`RtpPacer` is one loop timer for every stream of a daemon: tick *k*
fires at ``t0 + k * ptime`` (absolute deadlines, so lateness never adds up)
and each playing stream sends one frame per tick. It measures how late each
tick ran (the send jitter) in 0.25 ms buckets. :class:`RtpSession` is one
stream: it sends the frames it is given, at 8,000 timestamp units per second
measured by the pacer's tick, and passes every valid packet from the expected
source to ``on_packet``; a packet from elsewhere or a malformed one is dropped
with a counter and one log line per stream. The expected source is the one
the SDP announced, or the first packet's address when it comes from the
announced port (symmetric RTP, RFC 4961): then that address only.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics, TallyCounter
from protocols.rtp import RtpError
from protocols.rtp.packet import RtpPacket, build_rtp, parse_rtp

__all__ = ["PortRange", "RtpCounters", "RtpPacer", "RtpSession", "open_rtp_session"]

Address = tuple[str, int]
PacketHandler = Callable[[RtpPacket, float], None]

#: a packet sent more than this after its deadline is late
LATE_AFTER = 0.010
_BUCKET = 0.00025
_BUCKETS = 400  # up to 100 ms; later ticks land in the last bucket


class RtpCounters:
    """The RTP counters of a daemon (one set, shared by its sessions)."""

    def __init__(self, metrics: Metrics) -> None:
        self.received: TallyCounter = metrics.tally(
            "rtp_packets_received", "RTP packets accepted", ("kind",))
        self.sent: TallyCounter = metrics.tally("rtp_packets_sent", "RTP packets sent", ("kind",))
        self.dropped: TallyCounter = metrics.tally(
            "rtp_packets_dropped", "RTP packets dropped", ("reason",))


class _LatenessCollector:
    """``rtp_send_lateness_seconds`` (histogram, 0.25 ms buckets to 20 ms) and
    ``rtp_frames_late_total``, read from the pacer when /metrics is scraped."""

    def __init__(self, pacer: RtpPacer, namespace: str) -> None:
        self.pacer = pacer
        self.prefix = f"{namespace}_" if namespace else ""

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        pacer = self.pacer
        buckets: list[tuple[str, float]] = []
        seen = 0
        for i, count in enumerate(pacer.lateness[:80]):
            seen += count
            buckets.append((f"{(i + 1) * _BUCKET:.5f}", seen))
        buckets.append(("+Inf", pacer.frames))
        yield HistogramMetricFamily(
            f"{self.prefix}rtp_send_lateness_seconds",
            "How late each RTP frame left after its 20 ms deadline",
            buckets=buckets, sum_value=pacer.lateness_sum)
        late = CounterMetricFamily(f"{self.prefix}rtp_frames_late",
                                   f"RTP frames sent more than {LATE_AFTER * 1000:.0f} ms late")
        late.add_metric([], pacer.late)
        yield late


class RtpPacer:
    """One timer at absolute 20 ms deadlines for every playing stream (see module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ptime: float = 0.020) -> None:
        self.loop = loop
        self.ptime = ptime
        self._streams: dict[RtpSession, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self.tick = 0
        #: histogram of (send time - deadline) per frame sent, 0.25 ms buckets
        self.lateness = [0] * _BUCKETS
        self.frames = 0
        self.late = 0
        self.lateness_sum = 0.0

    def register(self, metrics: Metrics) -> None:
        """Expose the send-lateness figures on the daemon's /metrics."""
        metrics.registry.register(_LatenessCollector(self, metrics.namespace))

    def add(self, session: RtpSession) -> None:
        self._streams[session] = None
        if self._handle is None:
            self._deadline = self.loop.time() + self.ptime
            self._handle = self.loop.call_at(self._deadline, self._tick)

    def remove(self, session: RtpSession) -> None:
        self._streams.pop(session, None)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._streams.clear()

    def _tick(self) -> None:
        now = self.loop.time()
        deadline = self._deadline
        self.tick += 1
        delay = now - deadline
        sent = 0
        for session in list(self._streams):
            if session.send_next(self.tick):
                sent += 1
            else:
                self._streams.pop(session, None)
        if sent:
            index = min(int(delay / _BUCKET), _BUCKETS - 1) if delay > 0 else 0
            self.lateness[index] += sent
            self.frames += sent
            self.lateness_sum += max(delay, 0.0) * sent
            if delay > LATE_AFTER:
                self.late += sent
        if not self._streams:
            self._handle = None
            return
        self._deadline = deadline + self.ptime
        self._handle = self.loop.call_at(self._deadline, self._tick)

    def percentile(self, q: float) -> float:
        """Send lateness (seconds) at quantile ``q`` (0..1) of the frames sent."""
        if not self.frames:
            return 0.0
        target = q * self.frames
        seen = 0
        for i, count in enumerate(self.lateness):
            seen += count
            if seen >= target:
                return (i + 1) * _BUCKET
        return _BUCKETS * _BUCKET

    def reset_stats(self) -> None:
        self.lateness = [0] * _BUCKETS
        self.frames = self.late = 0
        self.lateness_sum = 0.0


class RtpSession(asyncio.DatagramProtocol):
    """One RTP stream: paced sending through the pacer, checked receiving."""

    def __init__(self, pacer: RtpPacer, counters: RtpCounters, *, payload_type: int,
                 on_packet: PacketHandler | None = None, logger: Any = None) -> None:
        self.pacer = pacer
        self.counters = counters
        self.payload_type = payload_type
        self.on_packet = on_packet
        self.log = logger if logger is not None else get_logger("rtp")
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: Address | None = None
        #: where packets are accepted from: ``remote`` until a packet from the
        #: announced port on another address latches it (see :meth:`_latch`)
        self.source: Address | None = None
        #: nothing is sent while set (a stream on hold); paced playing goes on
        self.muted = False
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts_base = secrets.randbits(32)
        self._queue: deque[bytes] = deque()
        self._done: asyncio.Future[None] | None = None
        self._marker = True
        self._warned = False
        self.closed = False

    # ---------------------------------------------------------------- socket
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        source = self.source
        if source is None:
            source = self._first_source(addr)
        if source is None or addr[0] != source[0] or addr[1] != source[1]:
            self._drop("unexpected_source", addr, "rtp_unexpected_source")
            return
        try:
            packet = parse_rtp(data)
        except RtpError as exc:
            self._drop("malformed", addr, "rtp_malformed", str(exc))
            return
        self.counters.received.labels(
            "audio" if packet.payload_type == self.payload_type else "other").inc()
        if self.on_packet is not None:
            self.on_packet(packet, self.pacer.loop.time())

    def _first_source(self, addr: Address) -> Address | None:
        """The source the first packet fixes: the announced address, or
        (symmetric RTP, RFC 4961) another address with the announced port: a
        phone bound to every address sends from the kernel's choice, a NAT
        may keep the port. From then on only that source is accepted."""
        remote = self.remote
        if remote is None or addr[1] != remote[1]:
            return None
        self.source = addr
        if addr[0] != remote[0]:
            self.log.info("rtp_source_latched", peer=f"{addr[0]}:{addr[1]}",
                          announced=f"{remote[0]}:{remote[1]}")
        return addr

    def _drop(self, reason: str, addr: Address, event: str, detail: str = "") -> None:
        self.counters.dropped.labels(reason).inc()
        if not self._warned:  # one line per stream: a flood does not flood the log
            self._warned = True
            self.log.warning(event, peer=f"{addr[0]}:{addr[1]}", detail=detail,
                             expected=f"{self.remote[0]}:{self.remote[1]}" if self.remote
                             else None)

    def error_received(self, exc: Exception) -> None:
        self.counters.dropped.labels("socket_error").inc()

    @property
    def local_address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    # ---------------------------------------------------------------- sending
    def play(self, frames: Iterable[bytes]) -> asyncio.Future[None]:
        """Queue frames (one per 20 ms); the future completes when the last went out.

        Replaces what was playing (its future completes at once)."""
        self.stop_playing()
        self._queue.extend(frames)
        loop = self.pacer.loop
        self._done = loop.create_future()
        if not self._queue or self.closed:
            self._done.set_result(None)
        else:
            self._marker = True
            self.pacer.add(self)
        return self._done

    def stop_playing(self) -> None:
        self._queue.clear()
        self.pacer.remove(self)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    def send_next(self, tick: int) -> bool:
        """Send the next frame at pacer tick ``tick``; False when nothing is left."""
        if not self._queue or self.closed:
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
            return False
        self.send(self._queue.popleft(), timestamp=self._ts_base + 160 * tick)
        if not self._queue and self._done is not None and not self._done.done():
            self._done.set_result(None)
        return True

    def send(self, payload: bytes, *, timestamp: int, payload_type: int | None = None,
             marker: bool | None = None, kind: str = "audio") -> None:
        """Send one packet now (the pacer calls this; so do DTMF senders)."""
        if self.transport is None or self.remote is None or self.closed or self.muted:
            return
        if marker is None:
            marker, self._marker = self._marker, False
        data = build_rtp(self.payload_type if payload_type is None else payload_type,
                         self._seq, timestamp, self.ssrc, payload, marker=marker)
        self._seq = (self._seq + 1) & 0xFFFF
        self.transport.sendto(data, self.remote)
        self.counters.sent.labels(kind).inc()

    def timestamp_now(self) -> int:
        """The RTP timestamp of the current pacer tick."""
        return (self._ts_base + 160 * self.pacer.tick) & 0xFFFFFFFF

    def close(self) -> None:
        if self.closed:
            return
        self.stop_playing()
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PortRange:
    """Even RTP ports of a range (RTCP would take the odd one above, RFC 3550 §11),
    handed out round-robin; a port in use elsewhere is skipped."""

    def __init__(self, first: int, last: int) -> None:
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"bad RTP port range {first}-{last}")
        self.first = first + (first & 1)
        self.last = last
        self._next = self.first

    @classmethod
    def parse(cls, text: str) -> PortRange:
        first, sep, last = text.partition("-")
        if not sep or not first.strip().isdigit() or not last.strip().isdigit():
            raise ValueError(f"RTP port range {text!r} is not FIRST-LAST")
        return cls(int(first), int(last))

    def candidates(self) -> Iterable[int]:
        count = (self.last - self.first) // 2 + 1
        start = self._next
        for i in range(count):
            port = self.first + ((start - self.first) // 2 + i) % count * 2
            self._next = port + 2 if port + 2 <= self.last else self.first
            yield port


async def open_rtp_session(host: str, ports: PortRange, factory: Callable[[], RtpSession]
                           ) -> RtpSession:
    """Bind a new session on the first free even port of ``ports``."""
    loop = asyncio.get_running_loop()
    for port in ports.candidates():
        try:
            _, protocol = await loop.create_datagram_endpoint(factory, local_addr=(host, port))
        except OSError:
            continue
        assert isinstance(protocol, RtpSession)
        return protocol
    raise OSError(f"no free RTP port in {ports.first}-{ports.last}")
