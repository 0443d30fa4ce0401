"""The site challenge (docs/rtm.md, "Handshake"; guide: "Understand Site
Identifiers and Passwords": a site ID 1-999 and a case-sensitive password).

The password never crosses the wire. The hub sends a fresh 32-byte nonce; the
site answers ``HMAC-SHA256(password, "rtm-site" | nonce | cnonce | site)``; the
hub proves it knows the password too with ``HMAC-SHA256(password, "rtm-hub" |
cnonce | nonce | site)``, so a site can tell a real hub from an impostor.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

NONCE_SIZE: Final = 32
CNONCE_SIZE: Final = 16
MIN_SITE_ID: Final = 1
MAX_SITE_ID: Final = 999


def new_nonce(size: int = NONCE_SIZE) -> bytes:
    return os.urandom(size)


def _mac(password: str, label: bytes, first: bytes, second: bytes, site: int) -> bytes:
    message = label + b"\0" + first + second + site.to_bytes(2, "big")
    return hmac.new(password.encode("utf-8"), message, hashlib.sha256).digest()


def site_proof(password: str, nonce: bytes, cnonce: bytes, site: int) -> bytes:
    """What the site sends in ``Login``."""
    return _mac(password, b"rtm-site", nonce, cnonce, site)


def hub_proof(password: str, nonce: bytes, cnonce: bytes, site: int) -> bytes:
    """What the hub sends in ``Welcome``."""
    return _mac(password, b"rtm-hub", cnonce, nonce, site)


def verify(expected: bytes, given: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, given)


def valid_site_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and MIN_SITE_ID <= value <= MAX_SITE_ID)
