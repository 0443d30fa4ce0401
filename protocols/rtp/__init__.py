"""RTP media for voicemail, sans-I/O: RTP packets (RFC 3550), G.711 (ITU-T
G.711 µ-law and A-law, by table), telephone-events (RFC 4733), a jitter
buffer, G.711 WAV files, tone generation and a Goertzel detector."""

from protocols.rtp.errors import RtpError

__all__ = ["RtpError"]
