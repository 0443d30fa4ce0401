"""G.711 WAV files and the tone detector."""

import pytest

from protocols.rtp import RtpError, g711
from protocols.rtp.g711 import Codec
from protocols.rtp.tones import dtmf_tone, silence, tone, tone_share
from protocols.rtp.wav import build_pcm16_wav, build_wav, parse_pcm16_wav, parse_wav


@pytest.mark.parametrize("codec", list(Codec))
def test_g711_wav_roundtrip_and_layout(codec: Codec) -> None:
    data = g711.encode(tone([440], 105), codec)      # odd length: a pad byte
    wav = build_wav(codec, data)
    assert wav[20:22] == (b"\x07\x00" if codec is Codec.PCMU else b"\x06\x00")
    assert int.from_bytes(wav[4:8], "little") == len(wav) - 8
    assert parse_wav(wav) == (codec, data)


def test_pcm16_roundtrip() -> None:
    samples = tone([1000], 50)
    assert parse_pcm16_wav(build_pcm16_wav(samples)) == (8000, 1, samples)


@pytest.mark.parametrize("data", [b"", b"RIFF\0\0\0\0WAVX", build_pcm16_wav(silence(10))])
def test_bad_g711_wav(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_wav(data)


def test_tone_share_separates_frequencies_through_g711() -> None:
    for codec in Codec:
        heard = g711.decode(g711.encode(tone([1004], 200), codec), codec)
        assert tone_share(heard, 1004) > 0.9
        assert tone_share(heard, 1400) < 0.01
    assert tone_share(silence(100), 1004) == 0.0
    key = dtmf_tone("5", 100)
    assert tone_share(key, 770) > 0.3 and tone_share(key, 1336) > 0.3
    assert tone_share(key, 697) < 0.05
