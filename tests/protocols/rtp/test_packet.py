"""RTP packets (RFC 3550 §5.1) and the jitter buffer."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.rtp import RtpError
from protocols.rtp.jitter import JitterBuffer
from protocols.rtp.packet import RtpPacket, build_rtp, parse_rtp, seq_delta, seq_newer


@given(st.integers(0, 127).filter(lambda p: not 72 <= p <= 76), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.binary(max_size=200),
       st.booleans())
def test_build_parse_roundtrip(pt: int, seq: int, ts: int, ssrc: int, payload: bytes,
                               marker: bool) -> None:
    packet = parse_rtp(build_rtp(pt, seq, ts, ssrc, payload, marker=marker))
    assert packet == RtpPacket(pt, seq, ts, ssrc, payload, marker)


def test_csrc_extension_and_padding_are_skipped() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0, 7, 160, 1)
    csrcs = struct.pack("!II", 11, 12)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\1\2\3\4"
    data = header + csrcs + ext + b"abc" + b"\0\0\3"
    assert parse_rtp(data).payload == b"abc"


@pytest.mark.parametrize("data", [
    b"\x80\x00",                                       # short
    b"\x40" + bytes(11),                              # version 1
    bytes([0x90, 0]) + bytes(10) + b"\0\0",           # truncated extension
    bytes([0xA0, 0]) + bytes(10) + b"x\x09",          # padding longer than payload
    bytes([0x80, 200]) + bytes(10),                   # RTCP SR
    bytes([0x8F, 0]) + bytes(10),                     # 15 CSRCs announced, none there
])
def test_malformed_packets_raise(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_sequence_arithmetic_wraps() -> None:
    assert seq_delta(2, 0xFFFF) == 3
    assert seq_newer(1, 0xFFF0) and not seq_newer(0xFFF0, 1)


def _pkt(seq: int, payload: bytes = b"x") -> RtpPacket:
    return RtpPacket(0, seq & 0xFFFF, seq * 160, 1, payload)


def test_jitter_buffer_reorders_and_fills_gaps() -> None:
    jb = JitterBuffer(delay=0.06, depth=10)
    for seq, t in ((100, 0.0), (102, 0.01), (101, 0.02), (104, 0.03)):
        assert jb.push(_pkt(seq, bytes([seq & 0xFF])), t)
    assert jb.pop(0.05) == []                         # nothing due yet
    assert jb.next_timer() == pytest.approx(0.06)
    assert jb.pop(0.2) == [b"d", b"e", b"f", None, b"h"]
    assert jb.lost == 1
    assert not jb.push(_pkt(101), 0.3)                # late
    assert jb.late == 1


def test_jitter_buffer_duplicates_and_wrap() -> None:
    jb = JitterBuffer(delay=0.0, depth=4)
    jb.push(_pkt(0xFFFF), 0.0)
    assert not jb.push(_pkt(0xFFFF), 0.0)
    jb.push(_pkt(0x10000), 0.0)
    assert jb.duplicates == 1
    assert jb.pop(0.0) == [b"x", b"x"]


def test_jitter_buffer_depth_releases_early() -> None:
    jb = JitterBuffer(delay=10.0, depth=3)
    for seq in range(5):
        jb.push(_pkt(seq), 0.0)
    assert len(jb.pop(0.0)) == 2                      # held down to depth
    assert len(jb.flush()) == 3
