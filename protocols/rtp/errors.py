"""Typed errors of the RTP layer: a daemon counts and logs them, and keeps serving."""

from __future__ import annotations


class RtpError(ValueError):
    """Bad media input: a malformed RTP packet, telephone-event or WAV file."""
