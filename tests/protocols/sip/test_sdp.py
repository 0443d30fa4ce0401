"""SDP parse/build and RFC 3264 offer/answer for the voicemail audio stream."""

import pytest

from protocols.sip.sdp import NotAcceptable, SdpError, answer_audio, audio_offer, parse_sdp

BARESIP_OFFER = (
    b"v=0\r\no=- 123 456 IN IP4 127.0.110.5\r\ns=-\r\nc=IN IP4 127.0.110.5\r\nt=0 0\r\n"
    b"m=audio 10000 RTP/AVP 9 0 8 101\r\n"
    b"a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    b"m=video 10002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


def test_parse_offer() -> None:
    sdp = parse_sdp(BARESIP_OFFER)
    audio = sdp.audio()
    assert audio is not None
    assert (sdp.connection, audio.port, audio.formats) == ("127.0.110.5", 10000,
                                                          ("9", "0", "8", "101"))
    assert audio.codec(101) == ("TELEPHONE-EVENT", 8000)
    assert audio.codec(8) == ("PCMA", 8000)
    assert audio.fmtp[101] == "0-15" and audio.ptime == 20


def test_answer_picks_first_supported_codec_and_rejects_video() -> None:
    ans = answer_audio(parse_sdp(BARESIP_OFFER), address="127.0.110.1", port=20000)
    assert (ans.codec, ans.payload_type, ans.event_payload_type) == ("PCMU", 0, 101)
    assert (ans.remote_address, ans.remote_port) == ("127.0.110.5", 10000)
    again = parse_sdp(ans.sdp.serialize())
    assert [m.port for m in again.media] == [20000, 0]   # same number of m= lines (§6)
    assert again.media[0].formats == ("0", "101")
    assert again.connection == "127.0.110.1"


def test_answer_pcma_only_and_direction_mirrored() -> None:
    offer = audio_offer(address="127.0.110.9", port=4000, codecs=("PCMA",),
                        telephone_event=None)
    sdp = parse_sdp(offer.serialize().replace(b"a=sendrecv", b"a=sendonly"))
    ans = answer_audio(sdp, address="127.0.110.1", port=20002)
    assert (ans.codec, ans.payload_type, ans.event_payload_type) == ("PCMA", 8, None)
    assert ans.sdp.media[0].direction == "recvonly"


def test_unknown_codecs_are_not_acceptable() -> None:
    offer = BARESIP_OFFER.replace(b"RTP/AVP 9 0 8 101", b"RTP/AVP 9 101").split(b"m=video")[0]
    with pytest.raises(NotAcceptable) as info:
        answer_audio(parse_sdp(offer), address="127.0.0.1", port=1)
    assert info.value.status == 488


def test_no_audio_is_not_acceptable() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n" \
           b"m=video 5000 RTP/AVP 96\r\n"
    with pytest.raises(NotAcceptable):
        answer_audio(parse_sdp(body), address="127.0.0.1", port=1)


@pytest.mark.parametrize("body", [
    b"", b"hello", b"v=0\r\ns=-\r\n", b"v=0\r\no=- x 1 IN IP4 a\r\n",
    b"v=0\r\no=- 1 1 IN IP4 a\r\nc=IN IP4\r\n",
    b"v=0\r\no=- 1 1 IN IP4 a\r\nm=audio port RTP/AVP 0\r\n",
    b"v=0\r\no=- 1 1 IN IP4 a\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:x PCMU/8000\r\n",
    b"v=0\r\no=- 1 1 IN IP4 a\r\nbroken\r\n", b"\xff\xfe",
])
def test_malformed_sdp(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)


def test_audio_without_connection_address_is_malformed() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"
    with pytest.raises(SdpError):
        answer_audio(parse_sdp(body), address="127.0.0.1", port=1)
