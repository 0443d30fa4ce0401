"""RFC 4733 telephone-events: each key press reported exactly once."""

import pytest

from protocols.rtp import RtpError
from protocols.rtp.packet import RtpPacket
from protocols.rtp.telephone_event import (
    DtmfReceiver,
    digit_payloads,
    encode_event,
    parse_event,
)


def _stream(digits: str, *, ts_step: int = 1600, seq0: int = 0,
            same_ts: bool = False) -> list[RtpPacket]:
    packets = []
    seq = seq0
    for i, digit in enumerate(digits):
        ts = 1000 if same_ts else 1000 + i * ts_step
        for payload in digit_payloads(digit):
            packets.append(RtpPacket(101, seq & 0xFFFF, ts, 7, payload))
            seq += 1
    return packets


def test_encode_parse() -> None:
    event = parse_event(encode_event(11, end=True, volume=10, duration=800))
    assert (event.digit, event.end, event.volume, event.duration) == ("#", True, 10, 800)


def test_each_digit_once_despite_repeats_and_three_end_packets() -> None:
    rx = DtmfReceiver()
    got = [d.digit for p in _stream("1234*#") if (d := rx.receive(p, 0.0 + p.sequence * 0.02))]
    assert got == list("1234*#")
    assert rx.duplicates == 6 * 7


def test_same_digit_twice_with_reused_timestamp() -> None:
    rx = DtmfReceiver()
    got = [d.digit for p in _stream("55", same_ts=True) if (d := rx.receive(p, p.sequence))]
    assert got == ["5", "5"]


def test_reordered_end_packet_does_not_start_a_new_event() -> None:
    rx = DtmfReceiver()
    packets = _stream("7")
    packets[2], packets[6] = packets[6], packets[2]   # an end packet arrives early
    got = [d.digit for p in packets if (d := rx.receive(p, 0.0))]
    assert got == ["7"]


def test_flood_is_cut_and_counted() -> None:
    rx = DtmfReceiver(max_digits=10, window=1.0)
    got = [d for p in _stream("1" * 30) if (d := rx.receive(p, 0.5))]
    assert len(got) == 10 and rx.flood_dropped == 20
    later = RtpPacket(101, 999, 999_999, 7, encode_event(2, end=False, duration=160))
    assert rx.receive(later, 2.0) is not None        # the window moved on


@pytest.mark.parametrize("payload", [b"", b"\x01\x02\x03", encode_event(16, end=False,
                                                                       duration=1)])
def test_bad_payloads(payload: bytes) -> None:
    with pytest.raises(RtpError):
        DtmfReceiver().receive(RtpPacket(101, 1, 1, 1, payload), 0.0)
