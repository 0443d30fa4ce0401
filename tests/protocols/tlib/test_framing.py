"""T-Library framing (docs/tlib.md, "Framing"): length prefix + msgpack map."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.tlib.errors import ErrorCode, FrameTooLarge, FramingError, MalformedFrame
from protocols.tlib.framing import MAX_FRAME_SIZE, FrameDecoder, decode_body, encode_frame

EVENT = {
    "message": "EventEstablished",
    "AttributeThisDN": "1001",
    "AttributeOtherDN": "+33123456789",
    "AttributeConnID": "006b02a5c9f1e001",
    "AttributeCallUUID": "QK3S0HN2ON1O1F7ADJNHMLQ8B4000001",
    "AttributeCallType": "Inbound",
    "AttributeUserData": {"customer": "gold", "blob": b"\x00\xff", "n": 3, "f": 1.5},
    "AttributeEventSequenceNumber": 17,
    "AttributeTimeinSecs": 1_700_000_000,
    "AttributeTimeinuSecs": 123456,
}


def test_encode_layout_is_length_then_msgpack() -> None:
    frame = encode_frame(EVENT)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert msgpack.unpackb(frame[4:], raw=False) == EVENT


def test_round_trip_keeps_types() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(EVENT))
    [frame] = list(decoder)
    assert frame == EVENT
    assert isinstance(frame["AttributeUserData"]["blob"], bytes)
    assert decoder.buffered == 0


def test_split_at_every_byte_boundary() -> None:
    data = encode_frame(EVENT) + encode_frame({"message": "EventACK", "AttributeReferenceID": 9})
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        decoder.feed(data[:cut])
        got = list(decoder)
        decoder.feed(data[cut:])
        got += list(decoder)
        assert got == [EVENT, {"message": "EventACK", "AttributeReferenceID": 9}], cut


def test_byte_by_byte() -> None:
    data = encode_frame(EVENT) * 3
    decoder = FrameDecoder()
    got = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        got += list(decoder)
    assert got == [EVENT] * 3


def test_many_frames_in_one_chunk() -> None:
    frames = [{"message": "EventACK", "AttributeReferenceID": i} for i in range(1, 200)]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(f) for f in frames))
    assert list(decoder) == frames


def test_oversized_prefix_refused_before_body() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    good = encode_frame({"message": "EventACK"})
    decoder.feed(good + struct.pack(">I", 101) + b"x" * 50)
    # the good frame before it is still delivered, then the typed error
    assert decoder.next_frame() == {"message": "EventACK"}
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert info.value.size == 101 and info.value.limit == 100
    assert decoder.failed
    assert decoder.buffered == 0  # nothing of the oversized body kept
    decoder.feed(b"y" * 1000)  # later bytes are discarded
    assert decoder.buffered == 0
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_oversized_prefix_alone_is_enough() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", MAX_FRAME_SIZE + 1))
    with pytest.raises(FrameTooLarge):
        list(decoder)


def test_frame_at_exact_limit_is_accepted() -> None:
    body = msgpack.packb({"message": "EventACK", "AttributeExtensions": {"pad": "x" * 50}})
    decoder = FrameDecoder(max_frame_size=len(body))
    decoder.feed(struct.pack(">I", len(body)) + body)
    assert decoder.next_frame() is not None


def test_encode_refuses_oversized() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(
            {"message": "EventACK", "AttributeExtensions": {"x": "y" * 200}}, max_frame_size=100
        )


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty body
        b"\xc1",  # never-used msgpack byte
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb("EventACK"),
        msgpack.packb({1: "x"}),  # non-string key
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        b"\x81\xa1a\xa2\xff\xfe",  # invalid UTF-8 string
        b"\x81\xa1a\xd4\x05\x01",  # extension type
        b"\x91" * 2000 + b"\x90",  # nesting deeper than the unpacker allows
        b"\x81\xa1a",  # map without its value
    ],
)
def test_garbage_body_is_malformed_and_stream_continues(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body + encode_frame({"message": "EventACK"}))
    with pytest.raises(MalformedFrame) as info:
        decoder.next_frame()
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    assert decoder.next_frame() == {"message": "EventACK"}


def test_decode_body_direct() -> None:
    assert decode_body(msgpack.packb({"message": "X"})) == {"message": "X"}
    with pytest.raises(MalformedFrame):
        decode_body(b"\x92\x01\x02")


def test_encode_refuses_unencodable() -> None:
    with pytest.raises(MalformedFrame):
        encode_frame({"message": "X", "AttributeUserData": {"o": object()}})
    with pytest.raises(MalformedFrame):
        encode_frame(["not", "a", "map"])  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_random_bytes_raise_only_typed_errors(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_frame_size=256)
    for i in range(0, len(data), chunk):
        decoder.feed(data[i : i + chunk])
        while True:
            try:
                frame = decoder.next_frame()
            except FrameTooLarge:
                return
            except MalformedFrame:
                continue
            if frame is None:
                break
            assert isinstance(frame, dict)
            assert all(isinstance(k, str) for k in frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bodies_with_valid_prefix(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    try:
        frame = decoder.next_frame()
    except FramingError:
        return
    assert isinstance(frame, dict)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=20), _values, max_size=8))
def test_round_trip_any_map(message: dict[str, object]) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(message))
    assert decoder.next_frame() == message
