"""The Replaces header (RFC 3891) and its place in a Refer-To URI (RFC 5589).

Attended transfer: the transferor sends REFER in its dialog with the party
that stays, with the consultation dialog in the Refer-To URI's ``Replaces``
header (``?Replaces=call-id%3Bto-tag%3DT%3Bfrom-tag%3DF``). ``to-tag`` and
``from-tag`` are seen from the transferor's side: ``to-tag`` is the tag of
the party the transferor talks to in that dialog (for a B2BUA, its own tag),
``from-tag`` the transferor's own.

Pure functions; :class:`Replaces` is what a UA matches against its dialogs
(RFC 3891 §3: Call-ID and both tags).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from protocols.sip.errors import ParseError
from protocols.sip.uri import SipUri

__all__ = ["Replaces", "parse_replaces", "replaces_in_uri"]


@dataclass(frozen=True, slots=True)
class Replaces:
    """``Replaces: call-id;to-tag=T;from-tag=F[;early-only]``."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    def __str__(self) -> str:
        text = f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}"
        return text + (";early-only" if self.early_only else "")

    def uri_header(self) -> str:
        """The value as a URI header (``?Replaces=...``): escaped per RFC 3261 §19.1.1."""
        return quote(str(self), safe=".-_!~*'()+:")

    def tags(self) -> tuple[str, str]:
        return self.to_tag, self.from_tag


def parse_replaces(text: str) -> Replaces:
    """Parse a Replaces header value; :class:`ParseError` (400) when a part is missing."""
    parts = [p.strip() for p in text.strip().split(";")]
    call_id = parts[0]
    if not call_id or any(c.isspace() for c in call_id):
        raise ParseError("Bad Replaces: no Call-ID")
    params: dict[str, str | None] = {}
    for part in parts[1:]:
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    to_tag, from_tag = params.get("to-tag"), params.get("from-tag")
    if not to_tag or not from_tag:
        raise ParseError("Bad Replaces: to-tag and from-tag are required")
    return Replaces(call_id, to_tag, from_tag, "early-only" in params)


def replaces_in_uri(uri: SipUri) -> Replaces | None:
    """The Replaces header embedded in a Refer-To URI, or None (a blind transfer)."""
    for name, value in uri.headers.items():
        if name.lower() == "replaces":
            return parse_replaces(unquote(value))
    return None
