"""SDP (RFC 8866) for audio sessions, and the offer/answer model (RFC 3264).

:func:`parse_sdp` reads a session description into frozen dataclasses,
:meth:`SessionDescription.serialize` writes one back; :func:`answer_audio`
answers an offer with the first offered codec we support (PCMU or PCMA) and
telephone-event when offered (RFC 4733 §7.1), or raises
:class:`NotAcceptable` (answer 488, RFC 3261 §13.3.1.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from protocols.sip.errors import SipError

__all__ = [
    "AudioAnswer",
    "MediaDescription",
    "NotAcceptable",
    "SdpError",
    "SessionDescription",
    "answer_audio",
    "audio_offer",
    "parse_sdp",
]

#: static payload types (RFC 3551 §6) we know by number
_STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MAX_SDP = 16384


class SdpError(SipError):
    """A malformed session description: the INVITE gets 400."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.status = 400


class NotAcceptable(SipError):
    """The offer has nothing we can take: 488 Not Acceptable Here (RFC 3264 §6)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.status = 488


@dataclass(frozen=True)
class MediaDescription:
    """One ``m=`` section (RFC 8866 §5.14) with what offer/answer needs."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None
    #: payload type -> (encoding name, clock rate)
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str = "sendrecv"
    ptime: int | None = None

    def codec(self, pt: int) -> tuple[str, int] | None:
        """(encoding name upper-case, rate) of payload type ``pt``."""
        entry = self.rtpmap.get(pt)
        if entry is not None:
            return entry[0].upper(), entry[1]
        return _STATIC.get(pt)


@dataclass(frozen=True)
class SessionDescription:
    """A session description: origin, connection address and media sections."""

    origin_user: str
    session_id: int
    session_version: int
    origin_address: str
    connection: str | None
    media: tuple[MediaDescription, ...]
    session_name: str = "-"

    def audio(self) -> MediaDescription | None:
        """The first audio section with a non-zero port."""
        for m in self.media:
            if m.media == "audio" and m.port != 0:
                return m
        return None

    def address_of(self, media: MediaDescription) -> str | None:
        return media.connection or self.connection

    def serialize(self) -> bytes:
        lines = [
            "v=0",
            f"o={self.origin_user} {self.session_id} {self.session_version} IN IP4 "
            f"{self.origin_address}",
            f"s={self.session_name}",
        ]
        if self.connection:
            lines.append(f"c=IN IP4 {self.connection}")
        lines.append("t=0 0")
        for m in self.media:
            lines.append(f"m={m.media} {m.port} {m.proto} {' '.join(m.formats)}")
            if m.connection and m.connection != self.connection:
                lines.append(f"c=IN IP4 {m.connection}")
            for pt_text in m.formats:
                pt = int(pt_text)
                if pt in m.rtpmap:
                    name, rate = m.rtpmap[pt]
                    lines.append(f"a=rtpmap:{pt} {name}/{rate}")
                if pt in m.fmtp:
                    lines.append(f"a=fmtp:{pt} {m.fmtp[pt]}")
            if m.ptime:
                lines.append(f"a=ptime:{m.ptime}")
            lines.append(f"a={m.direction}")
        return ("\r\n".join(lines) + "\r\n").encode()


def _connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line {value!r}")
    return parts[2].split("/")[0]


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse a session description; :class:`SdpError` when it is malformed."""
    if len(body) > _MAX_SDP:
        raise SdpError(f"SDP body of {len(body)} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    origin: list[str] | None = None
    connection: str | None = None
    session_name = "-"
    media: list[dict[str, object]] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:40]!r}")
        kind, value = line[0], line[2:]
        current = media[-1] if media else None
        if kind == "o":
            origin = value.split()
            if len(origin) != 6:
                raise SdpError(f"bad o= line {value!r}")
        elif kind == "s":
            session_name = value or "-"
        elif kind == "c":
            if current is None:
                connection = _connection(value)
            else:
                current["connection"] = _connection(value)
        elif kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"bad m= line {value!r}")
            port_text = parts[1].split("/")[0]
            if not port_text.isdigit() or int(port_text) > 65535:
                raise SdpError(f"bad m= port {parts[1]!r}")
            media.append({"media": parts[0], "port": int(port_text), "proto": parts[2],
                          "formats": tuple(parts[3:]), "rtpmap": {}, "fmtp": {}})
        elif kind == "a" and current is not None:
            _media_attribute(current, value)
    if origin is None:
        raise SdpError("SDP without o= line")
    try:
        session_id, version = int(origin[1]), int(origin[2])
    except ValueError:
        raise SdpError("bad o= session id or version") from None
    return SessionDescription(
        origin_user=origin[0], session_id=session_id, session_version=version,
        origin_address=origin[5], connection=connection, session_name=session_name,
        media=tuple(MediaDescription(**m) for m in media),  # type: ignore[arg-type]
    )


def _media_attribute(current: dict[str, object], value: str) -> None:
    name, _, rest = value.partition(":")
    if name in _DIRECTIONS:
        current["direction"] = name
    elif name in ("rtpmap", "fmtp"):
        pt_text, _, spec = rest.partition(" ")
        if not pt_text.isdigit() or not spec:
            raise SdpError(f"bad a={name} line {value!r}")
        pt = int(pt_text)
        if name == "fmtp":
            fmtp = current["fmtp"]
            assert isinstance(fmtp, dict)
            fmtp[pt] = spec.strip()
            return
        enc = spec.strip().split("/")
        if len(enc) < 2 or not enc[1].isdigit():
            raise SdpError(f"bad a=rtpmap line {value!r}")
        rtpmap = current["rtpmap"]
        assert isinstance(rtpmap, dict)
        rtpmap[pt] = (enc[0], int(enc[1]))
    elif name == "ptime" and rest.strip().isdigit():
        current["ptime"] = int(rest.strip())


@dataclass(frozen=True)
class AudioAnswer:
    """What offer/answer agreed for the audio stream."""

    sdp: SessionDescription
    codec: str
    payload_type: int
    #: the offerer's telephone-event payload type, None when not offered
    event_payload_type: int | None
    remote_address: str
    remote_port: int
    direction: str


_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly",
                     "recvonly": "sendonly", "inactive": "inactive"}


def answer_audio(offer: SessionDescription, *, address: str, port: int,
                 codecs: Sequence[str] = ("PCMU", "PCMA"), session_id: int = 1,
                 version: int = 1, user: str = "sipcluster") -> AudioAnswer:
    """Answer ``offer`` (RFC 3264 §6.1): its first audio codec among ``codecs``,
    with telephone-event/8000 when offered; other media streams are rejected.
    A later answer in the same session (a re-INVITE, §8) passes the next
    ``version`` of the origin line;
    with port 0. :class:`NotAcceptable` when no audio stream can be taken."""
    chosen: tuple[int, str] | None = None
    event_pt: int | None = None
    answered: list[MediaDescription] = []
    audio = offer.audio()
    for m in offer.media:
        if m is not audio or m.proto.upper() not in ("RTP/AVP", "RTP/AVPF"):
            answered.append(replace(m, port=0, connection=None, rtpmap={}, fmtp={},
                                    direction="inactive", ptime=None))
            continue
        for fmt in m.formats:
            if not fmt.isdigit():
                continue
            codec = m.codec(int(fmt))
            if codec is None:
                continue
            name, rate = codec
            if chosen is None and name in codecs and rate == 8000:
                chosen = (int(fmt), name)
            elif name == "TELEPHONE-EVENT" and rate == 8000 and event_pt is None:
                event_pt = int(fmt)
        if chosen is None:
            raise NotAcceptable("no offered audio codec is PCMU or PCMA")
        formats = [str(chosen[0])] + ([str(event_pt)] if event_pt is not None else [])
        rtpmap = {chosen[0]: (chosen[1], 8000)}
        fmtp: dict[int, str] = {}
        if event_pt is not None:
            rtpmap[event_pt] = ("telephone-event", 8000)
            fmtp[event_pt] = "0-15"
        answered.append(MediaDescription(
            "audio", port, m.proto, tuple(formats), None, rtpmap, fmtp,
            _ANSWER_DIRECTION.get(m.direction, "sendrecv"), 20))
    if audio is None or chosen is None:
        raise NotAcceptable("the offer has no audio stream")
    remote = offer.address_of(audio)
    if remote is None:
        raise SdpError("the audio stream has no connection address")
    sdp = SessionDescription(user, session_id, version, address,
                             address, tuple(answered))
    return AudioAnswer(sdp, chosen[1], chosen[0], event_pt, remote, audio.port,
                       audio.direction)


def audio_offer(*, address: str, port: int, codecs: Sequence[str] = ("PCMU", "PCMA"),
                telephone_event: int | None = 101, session_id: int = 1) -> SessionDescription:
    """An offer of one audio stream (what a caller sends)."""
    pts = {"PCMU": 0, "PCMA": 8}
    formats = [str(pts[c]) for c in codecs]
    rtpmap = {pts[c]: (c, 8000) for c in codecs}
    fmtp: dict[int, str] = {}
    if telephone_event is not None:
        formats.append(str(telephone_event))
        rtpmap[telephone_event] = ("telephone-event", 8000)
        fmtp[telephone_event] = "0-15"
    media = MediaDescription("audio", port, "RTP/AVP", tuple(formats), None, rtpmap, fmtp,
                             "sendrecv", 20)
    return SessionDescription("sipcluster", session_id, 1, address, address, (media,))
