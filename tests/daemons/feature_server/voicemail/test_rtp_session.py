"""The RTP runtime: paced sending by absolute deadlines, the source check, ports."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from daemons.runtime.management import Metrics
from daemons.runtime.rtp import PortRange, RtpCounters, RtpPacer, RtpSession, open_rtp_session
from protocols.rtp.packet import RtpPacket


async def test_frames_paced_in_order_with_timestamps_and_source_check() -> None:
    loop = asyncio.get_running_loop()
    metrics = Metrics("t")
    pacer = RtpPacer(loop)
    pacer.register(metrics)
    counters = RtpCounters(metrics)
    got: list[tuple[RtpPacket, float]] = []
    ports = PortRange.parse("37000-37099")
    a = await open_rtp_session("127.0.110.70", ports, lambda: RtpSession(
        pacer, counters, payload_type=8))
    b = await open_rtp_session("127.0.110.71", ports, lambda: RtpSession(
        pacer, counters, payload_type=8, on_packet=lambda p, now: got.append((p, now))))
    a.remote, b.remote = b.local_address, a.local_address
    frames = [bytes([i]) * 160 for i in range(25)]
    await asyncio.wait_for(a.play(frames), 2.0)
    await asyncio.sleep(0.05)
    assert [p.payload for p, _ in got] == frames
    seqs = [p.sequence for p, _ in got]
    assert all((s2 - s1) & 0xFFFF == 1 for s1, s2 in itertools.pairwise(seqs))
    stamps = [p.timestamp for p, _ in got]
    assert all((t2 - t1) & 0xFFFFFFFF == 160 for t1, t2 in itertools.pairwise(stamps))
    assert got[0][0].marker and not any(p.marker for p, _ in got[1:])
    span = got[-1][1] - got[0][1]
    assert 0.40 <= span <= 0.60                     # 24 intervals of 20 ms
    assert pacer.frames == 25
    assert b"t_rtp_send_lateness_seconds_count 25.0" in metrics.render()
    # a third socket is not the negotiated peer: dropped and counted
    c = await open_rtp_session("127.0.110.72", ports, lambda: RtpSession(
        pacer, counters, payload_type=8))
    c.remote = b.local_address
    c.send(b"x" * 160, timestamp=0)
    await asyncio.sleep(0.05)
    assert len(got) == 25 and counters.dropped.labels("unexpected_source").value == 1
    for s in (a, b, c):
        s.close()
    pacer.close()


async def test_replacing_a_prompt_completes_the_old_one() -> None:
    pacer = RtpPacer(asyncio.get_running_loop())
    session = RtpSession(pacer, RtpCounters(Metrics("t")), payload_type=0)
    first = session.play([b"a" * 160] * 100)
    second = session.play([b"b" * 160])
    assert first.done() and not second.done()
    session.close()
    assert second.done()


def test_port_range() -> None:
    ports = PortRange.parse("20001-20010")
    assert list(ports.candidates())[:5] == [20002, 20004, 20006, 20008, 20010]
    assert next(iter(ports.candidates())) == 20002   # round-robin wraps
    for bad in ("20000", "a-b", "100-200", "30000-20000"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)
