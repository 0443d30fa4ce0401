"""SIP, SIPS, tel and other URIs (RFC 3261 §19.1, §25.1; RFC 3966; RFC 5118).

:func:`parse_uri` splits a URI into its parts without unescaping them, so that
``str(parse_uri(text)) == text`` for every well-formed URI. Escaped forms are
kept as received; :attr:`SipUri.user_unescaped` gives the decoded user part
(RFC 3261 §19.1.2: "%HH" is equivalent to the character it encodes, but only
in the productions where "escaped" is allowed).

IPv6 references (RFC 3261 §19.1.1, RFC 5118) are stored without their brackets
in :attr:`SipUri.host` and written back with them. A port can only follow the
closing bracket: ``sip:[2001:db8::10:5070]`` has no port (RFC 5118 §4.3).
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import unquote

from protocols.sip.errors import ParseError

__all__ = ["SipUri", "format_host", "is_ipv6_literal", "normalise_ipv6", "parse_uri"]

_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGIT = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SCHEME_CHARS = _ALPHA | _DIGIT | frozenset("+-.")
_UNRESERVED = _ALPHA | _DIGIT | frozenset("-_.!~*'()")
# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved )
_USER_CHARS = _UNRESERVED | frozenset("&=+$,;?/%")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD_CHARS = _UNRESERVED | frozenset("&=+$,%")
# paramchar = param-unreserved / unreserved / escaped
_PARAM_CHARS = _UNRESERVED | frozenset("[]/:&+$%")
# hname / hvalue = 1*( hnv-unreserved / unreserved / escaped )
_HEADER_CHARS = _UNRESERVED | frozenset("[]/?:+$%")
# Characters allowed in the opaque part of a URI of an unknown scheme
# (RFC 3986 §2: reserved / unreserved / pct-encoded).
_OPAQUE_CHARS = _UNRESERVED | frozenset(":/?#[]@!$&'()*+,;=%")

SIP_SCHEMES = frozenset({"sip", "sips"})


def _check_chars(text: str, allowed: frozenset[str], what: str) -> None:
    for ch in text:
        if ch not in allowed:
            raise ParseError(f"invalid character {ch!r} in {what}")
    if "%" in text:
        _check_escapes(text, what)


def _check_escapes(text: str, what: str) -> None:
    i = text.find("%")
    while i != -1:
        pair = text[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise ParseError(f"invalid escape '%{pair}' in {what}")
        i = text.find("%", i + 3)


def normalise_ipv6(text: str) -> str:
    """Return the IPv6 address ``text`` if valid, raising :class:`ParseError` if not.

    RFC 5118 §4.10: RFC 3261's ABNF admits a third colon before an embedded
    IPv4 address (``2001:db8:::192.0.2.1``); implementations must tolerate it,
    so ":::" directly before a dotted quad is read as "::".
    """
    try:
        ipaddress.IPv6Address(text)
        return text
    except ValueError:
        pass
    if ":::" in text:
        head, _, tail = text.partition(":::")
        if "." in tail and ":" not in tail:
            fixed = f"{head}::{tail}"
            try:
                ipaddress.IPv6Address(fixed)
                return text
            except ValueError:
                pass
    raise ParseError(f"invalid IPv6 address {text!r}")


def is_ipv6_literal(host: str) -> bool:
    """True when ``host`` (as stored, without brackets) is an IPv6 address."""
    return ":" in host


def format_host(host: str) -> str:
    """Write ``host`` for a URI or Via: IPv6 addresses get their brackets back."""
    return f"[{host}]" if ":" in host else host


#: hostname and IPv4address characters (RFC 3261 §25.1)
_HOSTNAME_TEXT: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"


def _check_hostname(host: str) -> None:
    """hostname / IPv4address (RFC 3261 §25.1)."""
    # all of them when stripping them leaves nothing: one C loop instead of a
    # pattern match, for every URI and Via parsed
    if not host or host.strip(_HOSTNAME_TEXT):
        raise ParseError(f"invalid host {host[:60]!r}")


def parse_hostport(text: str, what: str = "host") -> tuple[str, int | None]:
    """Split ``host[:port]`` with an optional IPv6 reference (RFC 3261 §25.1, RFC 5118)."""
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise ParseError(f"unterminated IPv6 reference in {what}")
        host = text[1:end]
        normalise_ipv6(host)
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ParseError(f"unexpected text after IPv6 reference in {what}")
        return host, _parse_port(rest[1:], what)
    host, colon, port_text = text.partition(":")
    _check_hostname(host)
    if not colon:
        return host, None
    return host, _parse_port(port_text, what)


def _parse_port(text: str, what: str) -> int:
    if not text or len(text) > 5 or not text.isdigit() or not text.isascii():
        raise ParseError(f"invalid port {text!r} in {what}")
    port = int(text)
    if port > 65535:
        raise ParseError(f"port {port} out of range in {what}")
    return port


class SipUri:
    """A parsed URI (RFC 3261 §19.1.1).

    For ``sip``/``sips``: ``user``, ``password``, ``host``, ``port``, ``params``
    (ordered; a parameter without value maps to ``None``) and ``headers``
    (ordered ``?name=value&...``), all kept in their escaped wire form.
    For ``tel`` (RFC 3966) ``user`` holds the number and ``params`` its
    parameters. Any other scheme is kept as ``opaque`` text (RFC 4475 §3.3.2).
    ``scheme`` is lower-cased (schemes are case-insensitive, RFC 3986 §3.1).
    """

    __slots__ = ("headers", "host", "opaque", "params", "password", "port", "scheme", "user")

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        host: str = "",
        port: int | None = None,
        *,
        password: str | None = None,
        params: dict[str, str | None] | None = None,
        headers: dict[str, str] | None = None,
        opaque: str | None = None,
    ) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = {} if params is None else params
        self.headers: dict[str, str] = {} if headers is None else headers
        self.opaque = opaque

    @property
    def is_sip(self) -> bool:
        """True for ``sip:`` and ``sips:`` URIs."""
        return self.scheme in SIP_SCHEMES

    @property
    def user_unescaped(self) -> str | None:
        """The user part with %HH escapes decoded (RFC 3261 §19.1.2)."""
        if self.user is None:
            return None
        return unquote(self.user, errors="surrogateescape")

    @property
    def hostport(self) -> str:
        """``host[:port]`` as written in a URI or Via."""
        if self.port is None:
            return format_host(self.host)
        return f"{format_host(self.host)}:{self.port}"

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.scheme == "tel":
            parts.append(self.user or "")
        else:
            if self.user is not None:
                parts.append(self.user)
                if self.password is not None:
                    parts.append(":")
                    parts.append(self.password)
                parts.append("@")
            parts.append(self.hostport)
        for name, value in self.params.items():
            parts.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers:
            parts.append("?")
            parts.append("&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def _parse_params(text: str, what: str) -> dict[str, str | None]:
    """``*( ";" uri-parameter )`` with the leading ";" removed (RFC 3261 §25.1)."""
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name:
            raise ParseError(f"empty parameter in {what}")
        _check_chars(name, _PARAM_CHARS, what)
        if eq:
            if not value:
                raise ParseError(f"empty value of parameter {name!r} in {what}")
            _check_chars(value, _PARAM_CHARS, what)
            params[name] = value
        else:
            params[name] = None
    return params


def _parse_headers(text: str, what: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not name or not eq:
            raise ParseError(f"malformed header {item!r} in {what}")
        _check_chars(name, _HEADER_CHARS, what)
        _check_chars(value, _HEADER_CHARS, what)
        headers[name] = value
    return headers


def parse_uri(text: str) -> SipUri:
    """Parse an absolute URI (RFC 3261 §19.1.1, §25.1), raising :class:`ParseError`."""
    colon = text.find(":")
    if colon <= 0:
        raise ParseError(f"URI {text!r} has no scheme")
    scheme = text[:colon]
    if scheme[0] not in _ALPHA:
        raise ParseError(f"invalid URI scheme {scheme!r}")
    for ch in scheme:
        if ch not in _SCHEME_CHARS:
            raise ParseError(f"invalid URI scheme {scheme!r}")
    rest = text[colon + 1 :]
    lscheme = scheme.lower()
    if lscheme in SIP_SCHEMES:
        return _parse_sip(lscheme, rest, text)
    if lscheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise ParseError("empty tel URI number")
        _check_chars(number, _PARAM_CHARS, "tel URI")
        return SipUri("tel", number, params=_parse_params(ptext, "tel URI") if ptext else None)
    if not rest:
        raise ParseError(f"empty {scheme} URI")
    _check_chars(rest, _OPAQUE_CHARS, f"{scheme} URI")
    return SipUri(lscheme, opaque=rest)


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    # '@' cannot appear unescaped after the userinfo (RFC 3261 §25.1), so the
    # last '@' ends the userinfo even when the user part contains '?' or ';'.
    at = rest.rfind("@")
    user: str | None = None
    password: str | None = None
    if at != -1:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise ParseError(f"empty user part in URI {text!r}")
        _check_chars(user, _USER_CHARS, "URI user part")
        if colon:
            _check_chars(pw, _PASSWORD_CHARS, "URI password")
            password = pw
    headers: dict[str, str] | None = None
    if "?" in rest:
        rest, _, htext = rest.partition("?")
        headers = _parse_headers(htext, "URI headers")
    params: dict[str, str | None] | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end == -1:
            raise ParseError(f"unterminated IPv6 reference in URI {text!r}")
        semi = rest.find(";", end)
    else:
        semi = rest.find(";")
    if semi != -1:
        params = _parse_params(rest[semi + 1 :], "URI parameters")
        rest = rest[:semi]
    host, port = parse_hostport(rest, f"URI {text!r}")
    return SipUri(scheme, user, host, port, password=password, params=params, headers=headers)
