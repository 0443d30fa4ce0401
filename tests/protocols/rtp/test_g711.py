"""G.711 tables against the reference points of the laws."""

from hypothesis import given
from hypothesis import strategies as st

from protocols.rtp import g711
from protocols.rtp.g711 import Codec


def test_zero_and_extremes() -> None:
    assert g711.ulaw_to_linear(0xFF) == 0
    assert g711.ulaw_to_linear(0x00) == -32124
    assert g711.ulaw_to_linear(0x80) == 32124
    assert g711.alaw_to_linear(0xD5) == 8
    assert g711.alaw_to_linear(0x55) == -8
    assert g711.alaw_to_linear(0xAA) == 32256
    assert Codec.PCMU.silence == 0xFF and Codec.PCMA.silence == 0xD5


def test_every_code_survives_decode_encode() -> None:
    for codec in Codec:
        codes = bytes(range(256))
        again = g711.encode(g711.decode(codes, codec), codec)
        # µ-law has two zeros (0x7F, 0xFF); every other code is its own image
        diff = [c for c, d in zip(codes, again, strict=True) if c != d]
        assert diff in ([], [0x7F]), (codec, diff)


@given(st.integers(-32768, 32767))
def test_quantisation_error_is_bounded(sample: int) -> None:
    for codec in Codec:
        back = g711.decode(g711.encode([sample], codec), codec)[0]
        # segment step of the laws: at most 1/16 of the magnitude (+ the small-value step)
        assert abs(back - sample) <= abs(sample) / 16 + 64, (codec, sample, back)


def test_table_encoder_matches_the_function() -> None:
    samples = list(range(-32768, 32768, 97))
    assert g711.encode(samples, Codec.PCMU) == bytes(g711.linear_to_ulaw(s) for s in samples)
    assert g711.encode(samples, Codec.PCMA) == bytes(g711.linear_to_alaw(s) for s in samples)


def test_transcode_keeps_the_signal() -> None:
    from protocols.rtp.tones import tone, tone_share
    ulaw = g711.encode(tone([800], 100), Codec.PCMU)
    alaw = g711.transcode(ulaw, Codec.PCMU, Codec.PCMA)
    assert tone_share(g711.decode(alaw, Codec.PCMA), 800) > 0.95
    assert g711.transcode(ulaw, Codec.PCMU, Codec.PCMU) is ulaw
