"""SIP header fields: the raw ordered multi-map and the typed values (RFC 3261 §7.3, §20, §25).

:class:`Headers` keeps every header field line in arrival order, with its name
as written, its unfolded value and its original text, so that a proxy can
forward unknown or untouched headers byte-exact (RFC 3261 §16.6, RFC 4475
§3.1.1.1). Names are matched case-insensitively and compact forms are
expanded (RFC 3261 §7.3.3).

The typed values — :class:`Via`, :class:`NameAddr`, :class:`CSeq` — are
parsed only when asked for; the grammar helpers here (:func:`split_list`,
:func:`parse_quoted`, :func:`parse_params`) are shared by them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Final, cast

from protocols.sip.errors import ParseError
from protocols.sip.uri import SipUri, format_host, parse_hostport, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "CSeq",
    "Headers",
    "NameAddr",
    "Via",
    "canonical_name",
    "header_key",
    "parse_cseq",
    "parse_name_addr",
    "parse_name_addrs",
    "parse_params",
    "parse_quoted",
    "parse_via",
    "parse_vias",
    "split_list",
    "unquote_param",
]

#: RFC 3261 §7.3.3 and later RFCs' compact forms -> full lower-case name.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",  # RFC 3841
    "b": "referred-by",  # RFC 3892
    "c": "content-type",
    "d": "request-disposition",  # RFC 3841
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",  # RFC 3841
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "s": "subject",
    "t": "to",
    "u": "allow-events",  # RFC 6665
    "v": "via",
    "x": "session-expires",  # RFC 4028
    "y": "identity",  # RFC 8224
}

_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info",
        "Allow", "Allow-Events", "Authentication-Info", "Authorization", "Call-ID",
        "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
        "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info",
        "Event", "Expires", "From", "Identity", "In-Reply-To", "Max-Forwards",
        "MIME-Version", "Min-Expires", "Min-SE", "Organization", "P-Asserted-Identity",
        "Path", "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require",
        "RAck", "Reason", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact",
        "Reply-To", "Request-Disposition", "Require", "Retry-After", "Route", "RSeq",
        "Server", "Service-Route", "Session-Expires", "SIP-ETag", "SIP-If-Match",
        "Subject", "Subscription-State", "Supported", "Timestamp", "To", "Unsupported",
        "User-Agent", "Via", "Warning", "WWW-Authenticate",
    )
}

#: Headers whose values are comma-separated lists (RFC 3261 §7.3.1), split by get_all().
LIST_HEADERS = frozenset({
    "accept", "accept-contact", "accept-encoding", "accept-language", "alert-info",
    "allow", "allow-events", "call-info", "contact", "content-encoding",
    "content-language", "error-info", "in-reply-to", "p-asserted-identity", "path",
    "proxy-require", "record-route", "reject-contact", "require", "route",
    "service-route", "supported", "unsupported", "via", "warning",
})

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_WS = " \t"

_KEY_CACHE: Final[dict[str, str]] = {}


def key_index(keys: list[str], key: str) -> int:
    """The index of the first ``key`` in ``keys``, or -1.

    Header keys are compared many times per message. ``list.index`` and ``in``
    go through the generic rich comparison for every other name on the way;
    compiled, this loop compares the strings directly (identity, then length
    and bytes).
    """
    i = 0
    for k in keys:
        if k == key:
            return i
        i += 1
    return -1


def key_count(keys: list[str], key: str) -> int:
    """How many times ``key`` is in ``keys`` (see :func:`key_index`)."""
    count = 0
    for k in keys:
        if k == key:
            count += 1
    return count


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_TOKEN_WS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t]*")
_PARAM_NAME_CACHE: Final[dict[str, str]] = {}


def _is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def _param_name(raw: str, what: str) -> str:
    """Stripped, validated, lower-cased parameter name (cached)."""
    name = _PARAM_NAME_CACHE.get(raw)
    if name is not None:
        return name
    stripped = raw.strip(_WS)
    if not stripped:
        raise ParseError(f"empty parameter in {what}")
    if not _is_token(stripped):
        raise ParseError(f"invalid parameter name {stripped!r} in {what}")
    name = stripped.lower()
    if len(_PARAM_NAME_CACHE) > 4096:
        _PARAM_NAME_CACHE.clear()
    _PARAM_NAME_CACHE[raw] = name
    return name


def header_key(name: str) -> str:
    """The lookup key of a header name: stripped, lower-case, compact form expanded.

    Raises :class:`ParseError` if ``name`` is not a token (RFC 3261 §25.1).
    """
    key = _KEY_CACHE.get(name)
    if key is not None:
        return key
    stripped = name.strip(_WS)
    if not _is_token(stripped):
        raise ParseError(f"invalid header name {name!r}")
    lower = stripped.lower()
    key = COMPACT_FORMS.get(lower, lower)
    # A name written with leading whitespace is never cached: the message
    # parser's fast path relies on every cached name being a plain token, so
    # that a continuation line (which starts with SP or HT) always misses.
    if name[0] not in _WS:
        if len(_KEY_CACHE) > 4096:
            _KEY_CACHE.clear()
        _KEY_CACHE[name] = key
    return key


def canonical_name(name: str) -> str:
    """Full header name, usual capitalisation: ``v`` -> ``Via``, ``call-id`` -> ``Call-ID``."""
    key = header_key(name)
    known = _CANONICAL.get(key)
    if known is not None:
        return known
    written = name.strip(_WS)
    if written.islower() or written.isupper():
        return "-".join(part[:1].upper() + part[1:] for part in key.split("-"))
    return written


# --------------------------------------------------------------------------- grammar helpers


def parse_quoted(text: str, start: int) -> tuple[str, int]:
    """Parse the quoted-string at ``text[start]`` (a '"'), RFC 3261 §25.1.

    Returns the unescaped content and the index just past the closing quote.
    """
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt in "\r\n":
                raise ParseError("invalid quoted-pair in quoted string")
            out.append(nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    raise ParseError("unterminated quoted string")


def _split_scan(text: str, sep: str, angle: bool) -> list[str]:
    items: list[str] = []
    start = 0
    i = 0
    n = len(text)
    in_angle = False
    while i < n:
        ch = text[i]
        if ch == '"':
            _, i = parse_quoted(text, i)
            continue
        if angle:
            if ch == "<":
                in_angle = True
            elif ch == ">":
                in_angle = False
        if ch == sep and not in_angle:
            items.append(text[start:i])
            start = i + 1
        i += 1
    if in_angle:
        raise ParseError("unterminated '<' in header value")
    items.append(text[start:])
    return items


def split_list(text: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas in quotes and <URI> (§7.3.1)."""
    if '"' not in text:
        if "<" not in text:
            return text.split(",")
        if "," not in text:
            # one value (a Contact, a Route): the scan below would find what
            # these two searches find, a character at a time
            if text.rfind("<") > text.rfind(">"):
                raise ParseError("unterminated '<' in header value")
            return [text]
    return _split_scan(text, ",", True)


def _split_semis(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    return _split_scan(text, ";", False)


def parse_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` (RFC 3261 §25.1); ``text`` starts after the first ';'.

    Names are lower-cased (parameter names are case-insensitive, §7.3.1);
    values are kept as written (a quoted-string keeps its quotes, see
    :func:`unquote_param`). A parameter without a value maps to ``None``.
    """
    params: dict[str, str | None] = {}
    for item in _split_semis(text):
        raw_name, eq, value = item.partition("=")
        name = _PARAM_NAME_CACHE.get(raw_name) or _param_name(raw_name, what)
        if eq:
            value = value.strip(_WS)
            if not value:
                raise ParseError(f"empty value of parameter {name!r} in {what}")
            if value[0] == '"':
                _, end = parse_quoted(value, 0)
                if end != len(value):
                    raise ParseError(f"text after quoted value of {name!r} in {what}")
            elif " " in value or "\t" in value:
                raise ParseError(f"whitespace in value of parameter {name!r} in {what}")
            params[name] = value
        else:
            params[name] = None
    return params


def _params_fast(text: str) -> dict[str, str | None] | None:
    """:func:`parse_params` for text known to hold no whitespace and no quote.

    Returns ``None`` when a parameter name has not been seen before or a value
    is empty: the caller then runs :func:`parse_params`, which validates the
    name (and caches it) or raises the exact error.
    """
    params: dict[str, str | None] = {}
    # the dict in a typed local: compiled, ``names.get`` is a direct lookup, while
    # a stored bound method (``get = d.get``) is a generic call per parameter
    names = _PARAM_NAME_CACHE
    for item in text.split(";"):
        raw_name, eq, value = item.partition("=")
        name = names.get(raw_name)
        if name is None:
            return None
        if eq:
            if not value:
                return None
            params[name] = value
        else:
            params[name] = None
    return params


def unquote_param(value: str | None) -> str | None:
    """Strip the quotes and quoted-pairs of a parameter value, if it is quoted."""
    if value is None or not value.startswith('"'):
        return value
    return parse_quoted(value, 0)[0]


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# --------------------------------------------------------------------------- Via


_TRANSPORTS = frozenset({"UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp", "tcp", "tls"})
_UPPER_TRANSPORTS = frozenset({"UDP", "TCP", "TLS", "SCTP", "WS", "WSS"})


class Via:
    """One Via header field value (RFC 3261 §20.42, §18.2.1; RFC 3581 rport; RFC 5118).

    ``host`` is stored without IPv6 brackets. To change the top Via of a
    message, remove it with ``headers.remove_first("Via")`` and
    ``headers.prepend("Via", str(via))``.
    """

    __slots__ = ("host", "params", "port", "protocol", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        protocol: str = "SIP/2.0",
    ) -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = {} if params is None else params

    @property
    def branch(self) -> str | None:
        """The branch parameter (§8.1.1.7), ``None`` when absent."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The received parameter, brackets removed (RFC 5118 §4.5 allows both forms)."""
        value = self.params.get("received")
        if value is not None and value.startswith("[") and value.endswith("]"):
            return value[1:-1]
        return value

    @property
    def rport(self) -> int | None:
        """The numeric rport value (RFC 3581), ``None`` when absent or empty."""
        value = self.params.get("rport")
        if value is None or not value.isdigit():
            return None
        return int(value)

    @property
    def wants_rport(self) -> bool:
        """True when the rport parameter is present without a value (RFC 3581 §4)."""
        return "rport" in self.params and self.params["rport"] is None

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as written in the Via."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{_format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def parse_via(text: str) -> Via:
    """Parse one via-parm (RFC 3261 §25.1): ``sent-protocol LWS sent-by *( SEMI via-params )``.

    The usual shape -- ``SIP/2.0/<known transport> host[:port]`` with a host of
    letters, digits, dots and dashes, then parameters without whitespace or
    quotes -- is read with a few string operations; anything else (brackets,
    whitespace around the port colon or in the sent-protocol, other versions,
    quoted parameter values) goes through the full grammar, which gives the
    same result or raises.
    """
    s = text.strip(_WS)
    if s.startswith("SIP/2.0/"):
        sp = s.find(" ", 8)
        transport = s[8:sp]
        if sp != -1 and transport in _TRANSPORTS:
            semi = s.find(";", sp)
            sent_by = s[sp + 1 :] if semi == -1 else s[sp + 1 : semi]
            host, colon, port_text = sent_by.partition(":")
            if (
                host
                and host.isascii()
                and host.replace(".", "").replace("-", "").isalnum()
                and (not colon or (0 < len(port_text) <= 5 and port_text.isdigit()
                                   and port_text.isascii()))
            ):
                port = int(port_text) if colon else None
                if port is None or port <= 65535:
                    if semi == -1:
                        return Via(transport, host, port, {})
                    ptext = s[semi + 1 :]
                    if " " not in ptext and "\t" not in ptext and '"' not in ptext:
                        params = _params_fast(ptext)
                        if params is not None:
                            return Via(transport, host, port, params)
    return _parse_via_full(s)


def _parse_via_full(s: str) -> Via:
    """The whole via-parm grammar of :func:`parse_via` on stripped text."""
    semi = s.find(";")
    sent = s if semi == -1 else s[:semi]
    if sent.startswith("SIP/2.0/") and "\t" not in sent and sent.count(" ") == 1:
        protocol = "SIP/2.0"
        transport, _, sent_by = sent[8:].partition(" ")
    else:
        parts = sent.split("/", 2)
        if len(parts) != 3:
            raise ParseError(f"malformed Via sent-protocol in {s!r}")
        name = parts[0].strip(_WS)
        version = parts[1].strip(_WS)
        if not _is_token(name) or not _is_token(version):
            raise ParseError(f"malformed Via sent-protocol in {s!r}")
        protocol = f"{name}/{version}"
        tail = parts[2].strip(_WS).split(None, 1)
        if len(tail) != 2:
            raise ParseError(f"Via without sent-by in {s!r}")
        transport = tail[0]
        # COLON = SWS ":" SWS: whitespace may surround the port's colon only
        sent_by = " ".join(tail[1].split()).replace(" :", ":").replace(": ", ":")
        if " " in sent_by:
            raise ParseError(f"whitespace inside Via sent-by in {s!r}")
    if transport not in _TRANSPORTS and not _is_token(transport):
        raise ParseError(f"invalid Via transport {transport!r}")
    host, port = parse_hostport(sent_by.rstrip(_WS), "Via sent-by")
    params = parse_params(s[semi + 1 :], "Via") if semi != -1 else {}
    return Via(transport, host, port, params, protocol)


def parse_vias(values: Iterable[str]) -> list[Via]:
    """Parse every Via value of every Via header line, in order."""
    out: list[Via] = []
    for line in values:
        for item in split_list(line):
            if not item.strip(_WS):
                raise ParseError("empty Via value")
            out.append(parse_via(item))
    return out


# --------------------------------------------------------------------------- NameAddr


class NameAddr:
    """A name-addr / addr-spec with header parameters: From, To, Contact, Route ... (§20.10).

    ``uri`` is the URI text as written (``"*"`` for the Contact wildcard);
    :attr:`sip_uri` parses it on first use. ``display_name`` is unquoted.
    """

    __slots__ = ("_parsed", "display_name", "params", "uri")

    def __init__(
        self,
        uri: str,
        display_name: str | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.uri = uri
        self.display_name = display_name
        self.params: dict[str, str | None] = {} if params is None else params
        self._parsed: SipUri | None = None

    @property
    def tag(self) -> str | None:
        """The tag parameter (§19.3), ``None`` when absent."""
        return self.params.get("tag")

    @property
    def is_star(self) -> bool:
        """True for the ``Contact: *`` wildcard of a REGISTER (§10.2.2)."""
        return self.uri == "*"

    @property
    def sip_uri(self) -> SipUri:
        """The parsed URI (cached); raises :class:`ParseError` when malformed."""
        if self._parsed is None:
            self._parsed = parse_uri(self.uri)
        return self._parsed

    def __str__(self) -> str:
        if self.uri == "*":
            return "*"
        if self.display_name is not None:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{escaped}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        return head + _format_params(self.params)

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (self.uri, self.display_name, self.params) == (
            other.uri,
            other.display_name,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.uri, self.display_name))


def _check_display_tokens(text: str) -> None:
    if _TOKEN_WS_RE.fullmatch(text) is None:
        raise ParseError(f"invalid character in unquoted display name {text[:40]!r}")


# The usual shape of an address: an optional token display name, ``<uri>``
# without whitespace, then parameters without whitespace or quotes. Quoted
# display names and everything else take the general path.
_NAME_ADDR_FAST_RE = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~ \t]*)<([^> \t\"]+)>(?:;([^ \t\"]*))?"
)


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI generic-param )`` (RFC 3261 §25.1).

    Tolerates a token display name directly followed by ``<`` (RFC 4475 §3.1.1.6).
    The common shape ``[token display] <uri>[;params]`` without quotes or
    whitespace after the ``>`` takes a short path; the rest the full grammar.
    """
    s = text.strip(_WS)
    if s.startswith("<"):
        # no display name: what _NAME_ADDR_FAST_RE matches then, found by
        # searches instead of the pattern (From, To, Contact, Route ...)
        gt = s.find(">")
        if gt > 1:
            uri = s[1:gt]
            rest = s[gt + 1:]
            if not _has_ws_or_quote(uri) and not _has_ws_or_quote(rest):
                if not rest:
                    return NameAddr(uri, None, {})
                if rest[0] == ";":
                    params = _params_fast(rest[1:])
                    if params is not None:
                        return NameAddr(uri, None, params)
    m = _NAME_ADDR_FAST_RE.fullmatch(s)
    if m is not None:
        display, uri, ptext = m.groups()
        params = {} if ptext is None else _params_fast(ptext)
        if params is not None:
            return NameAddr(uri, display.rstrip(_WS) or None, params)
    return _parse_name_addr_full(s)


def _has_ws_or_quote(text: str) -> bool:
    return " " in text or "\t" in text or '"' in text


def _parse_name_addr_full(s: str) -> NameAddr:
    """The whole grammar of :func:`parse_name_addr` on stripped text."""
    if not s:
        raise ParseError("empty address")
    display: str | None = None
    if s[0] == '"':
        display, pos = parse_quoted(s, 0)
        lt = s.find("<", pos)
        if lt == -1 or s[pos:lt].strip(_WS):
            raise ParseError("expected <URI> after quoted display name")
    else:
        lt = s.find("<")
        if lt != -1:
            name = s[:lt].strip(_WS)
            _check_display_tokens(name)
            display = name or None
    if lt != -1:
        gt = s.find(">", lt)
        if gt == -1:
            raise ParseError("unterminated '<' in address")
        uri = s[lt + 1 : gt]
        rest = s[gt + 1 :]
        if not uri:
            raise ParseError("empty URI in address")
        if " " in uri or "\t" in uri:
            raise ParseError("whitespace inside addr-spec")
    else:
        semi = s.find(";")
        uri = s if semi == -1 else s[:semi]
        rest = "" if semi == -1 else s[semi:]
        uri = uri.rstrip(_WS)
        if " " in uri or "\t" in uri:
            raise ParseError("whitespace inside addr-spec")
        if uri != "*" and ("?" in uri or "," in uri):
            raise ParseError("URI with headers or commas must be enclosed in <> (§20)")
    rest = rest.strip(_WS)
    if not rest:
        return NameAddr(uri, display)
    if rest[0] != ";":
        raise ParseError(f"unexpected text {rest[:20]!r} after address")
    return NameAddr(uri, display, parse_params(rest[1:], "address"))


def parse_name_addrs(values: Iterable[str]) -> list[NameAddr]:
    """Parse every comma-separated address of every header line (Contact, Route ...)."""
    out: list[NameAddr] = []
    for line in values:
        for item in split_list(line):
            if not item.strip(_WS):
                raise ParseError("empty address in list")
            out.append(parse_name_addr(item))
    return out


# --------------------------------------------------------------------------- CSeq


_COMMON_METHODS = frozenset({
    "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK",
    "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
})


class CSeq:
    """The CSeq header value (RFC 3261 §20.16, §8.1.1.5): a number below 2**31 and a method."""

    __slots__ = ("method", "number")

    def __init__(self, number: int, method: str) -> None:
        self.number = number
        self.method = method

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.number}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.number == other.number and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.number, self.method))


def parse_scalar(text: str, what: str, limit: int) -> int:
    """Parse ``1*DIGIT`` and check it is below ``limit`` (RFC 4475 §3.1.2.4)."""
    if len(text) < 10 and text.isdigit() and text.isascii():
        value = int(text)
        if value < limit:
            return value
    if not text or not text.isdigit() or not text.isascii():
        raise ParseError(f"invalid {what} value {text[:30]!r}")
    stripped = text.lstrip("0") or "0"
    if len(stripped) > len(str(limit)):
        raise ParseError(f"{what} value too large")
    value = int(stripped)
    if value >= limit:
        raise ParseError(f"{what} value {value} out of range")
    return value


def parse_cseq(text: str) -> CSeq:
    """Parse ``CSeq = 1*DIGIT LWS Method`` (RFC 3261 §20.16)."""
    digits, sp, method = text.partition(" ")
    if sp and method in _COMMON_METHODS and len(digits) < 10 and digits.isdigit():
        if digits.isascii():
            return CSeq(int(digits), method)
    parts = text.split()
    if len(parts) != 2:
        raise ParseError(f"malformed CSeq {text[:40]!r}")
    number = parse_scalar(parts[0], "CSeq sequence number", 2**31)
    if parts[1] not in _COMMON_METHODS and not _is_token(parts[1]):
        raise ParseError(f"invalid CSeq method {parts[1][:40]!r}")
    return CSeq(number, parts[1])


# --------------------------------------------------------------------------- Headers


class Headers:
    """Ordered, case-insensitive multi-map of raw header fields (RFC 3261 §7.3).

    Iteration yields ``(name, value)`` with the name as written and the value
    unfolded (line folding replaced by a single space) and stripped. Untouched
    lines keep their original text for byte-exact serialisation.

    A parsed header section without folding keeps each line's text and the
    position of its first colon (``_colons``, set by the message parser) and
    builds the lists of names and values only when something needs all of
    them; a single lookup slices and strips just the value it returns.
    """

    __slots__ = ("_cache", "_colons", "_dirty", "_keys", "_names_list", "_raws", "_unfolded",
                 "_values_list")

    _colons: list[int] | None

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._names_list: list[str] = []
        self._keys: list[str] = []
        self._values_list: list[str] = []
        # the text of each line: as received, or "Name: value" as written
        self._raws: list[str | None] = []
        self._colons = None
        self._cache: dict[str, Any] = {}
        self._dirty = True
        # lines written in code cannot fold (add() refuses CR and LF); the
        # message parser clears this for a section with continuation lines
        self._unfolded = True
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _from_parsed(
        cls, names: list[str], keys: list[str], values: list[str], raws: list[str | None]
    ) -> Headers:
        self = cls()
        self._names_list = names
        self._keys = keys
        self._values_list = values
        self._raws = raws
        self._colons = None
        self._cache = {}
        self._dirty = False
        return self

    def _materialise(self) -> None:
        """Build the name and value lists of a lazily split header section."""
        colons = self._colons
        if colons is not None:
            raws = cast("list[str]", self._raws)
            self._names_list = [raws[i][:c] for i, c in enumerate(colons)]
            self._values_list = [raws[i][c + 1 :].strip(_WS) for i, c in enumerate(colons)]
            self._colons = None

    def _value(self, index: int) -> str:
        """The value of line ``index``, stripped (a lazily split line is sliced)."""
        colons = self._colons
        if colons is None:
            return self._values_list[index]
        return cast(str, self._raws[index])[colons[index] + 1 :].strip(_WS)

    @property
    def _names(self) -> list[str]:
        if self._colons is not None:
            self._materialise()
        return self._names_list

    @property
    def _values(self) -> list[str]:
        if self._colons is not None:
            self._materialise()
        return self._values_list

    @property
    def unfolded(self) -> bool:
        """True when no header line is folded (§7.3.1), and so none of the
        serialised form either: a parsed section without continuation lines,
        or lines written in code."""
        return self._unfolded

    def _changed(self) -> None:
        self._dirty = True
        if self._cache:
            self._cache.clear()

    # ---- reading

    def get(self, name: str) -> str | None:
        """The value of the first header line called ``name``, or ``None``."""
        return self._first(header_key(name))

    def _first(self, key: str) -> str | None:
        index = key_index(self._keys, key)
        if index < 0:
            return None
        return self._value(index)

    def _lines(self, key: str) -> list[str]:
        if self._colons is not None:
            return [self._value(i) for i, k in enumerate(self._keys) if k == key]
        return [v for k, v in zip(self._keys, self._values_list, strict=True) if k == key]

    def get_lines(self, name: str) -> list[str]:
        """The value of every header line called ``name``, not comma-split."""
        return self._lines(header_key(name))

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``: each line, comma-split for list headers (§7.3.1)."""
        key = header_key(name)
        lines = self._lines(key)
        if key not in LIST_HEADERS:
            return lines
        out: list[str] = []
        for line in lines:
            out.extend(item.strip(_WS) for item in split_list(line))
        return out

    def count(self, name: str) -> int:
        """How many header lines are called ``name``."""
        return key_count(self._keys, header_key(name))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return key_index(self._keys, header_key(name)) >= 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for name, value in zip(self._names, self._values, strict=True):
            yield name.strip(_WS), value

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> list[tuple[str, str]]:
        """All ``(name, value)`` pairs in order."""
        return list(self)

    def normalised(self) -> list[tuple[str, str]]:
        """All pairs with full canonical names (``v`` -> ``Via``), in order."""
        return [(canonical_name(n), v) for n, v in self]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._keys == other._keys and self._values == other._values

    __hash__ = None  # type: ignore[assignment]

    # ---- writing

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        # Runs for every header of every message built in code: the name's key
        # and written form come from a cache, the line text is made once here
        # so that serialising only joins lines.
        entry = _ADD_NAMES.get(name)
        if entry is None:
            entry = _add_name(name)
        key, written = entry
        if "\r" in value or "\n" in value:
            raise ParseError("header value must not contain CR or LF")
        value = value.strip(_WS)
        self._insert_line(len(self._keys), key, written, value)
        self._dirty = True
        if self._cache:
            self._cache.clear()

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before the first line of the same name (or at the top).

        This is how a proxy adds its Via or Record-Route (RFC 3261 §16.6).
        """
        key = header_key(name)
        checked = _check_value(value)
        index = max(key_index(self._keys, key), 0)
        written = _CANONICAL.get(key) or name.strip(_WS)
        self._insert_line(index, key, written, checked)
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Replace every line called ``name`` by one line, at the first one's position."""
        key = header_key(name)
        index = key_index(self._keys, key)
        if index < 0:
            self.add(name, value)
            return
        checked = _check_value(value)
        self._remove_where(key, start=index + 1)
        written = _CANONICAL.get(key) or name.strip(_WS)
        self._set_line(index, written, checked)
        self._changed()

    def remove(self, name: str) -> int:
        """Remove every line called ``name``; return how many were removed."""
        key = header_key(name)
        removed = self._remove_where(key, start=0)
        if removed:
            self._changed()
        return removed

    def remove_first(self, name: str) -> str | None:
        """Remove the first value of ``name`` and return it (``None`` if absent).

        For list headers only the first comma-separated value of the first
        line goes: a proxy pops its own Via this way (RFC 3261 §16.7 step 3).
        """
        key = header_key(name)
        index = key_index(self._keys, key)
        if index < 0:
            return None
        value = self._value(index)
        if key in LIST_HEADERS:
            items = split_list(value)
            if len(items) > 1:
                rest = ",".join(items[1:]).strip(_WS)
                self._set_line(index, self._name_at(index), rest)
                self._changed()
                return items[0].strip(_WS)
        self._delete_line(index)
        self._changed()
        return value

    def _remove_where(self, key: str, start: int) -> int:
        """Delete the lines called ``key`` from ``start`` on."""
        keys = self._keys
        removed = 0
        i = start
        while i < len(keys):
            if keys[i] == key:
                self._delete_line(i)
                removed += 1
            else:
                i += 1
        return removed

    # The line edits below keep a lazily split section lazy: its lines stay
    # text with the colon's position, so an edit before forwarding (a popped
    # Route, a new Via) does not split every other line.

    def _name_at(self, index: int) -> str:
        """The name of line ``index`` as written."""
        colons = self._colons
        if colons is None:
            return self._names_list[index]
        return cast(str, self._raws[index])[: colons[index]]

    def _insert_line(self, index: int, key: str, written: str, value: str) -> None:
        self._keys.insert(index, key)
        self._raws.insert(index, f"{written}: {value}")
        colons = self._colons
        if colons is not None:
            colons.insert(index, len(written))
        else:
            self._names_list.insert(index, written)
            self._values_list.insert(index, value)

    def _set_line(self, index: int, written: str, value: str) -> None:
        self._raws[index] = f"{written}: {value}"
        colons = self._colons
        if colons is not None:
            colons[index] = len(written)
        else:
            self._names_list[index] = written
            self._values_list[index] = value

    def _delete_line(self, index: int) -> None:
        del self._keys[index], self._raws[index]
        colons = self._colons
        if colons is not None:
            del colons[index]
        else:
            del self._names_list[index], self._values_list[index]

    def copy(self) -> Headers:
        """An independent copy (raw texts kept)."""
        new = Headers._from_parsed(
            list(self._names), list(self._keys), list(self._values), list(self._raws)
        )
        new._dirty = self._dirty
        new._unfolded = self._unfolded
        return new

    # ---- serialising

    def _serialise_into(self, out: list[str], content_length: int | None) -> None:
        """Append ``name: value`` lines; when ``content_length`` is given, write it once.

        Every line keeps its text (as received, or as made by the method that
        wrote it), so only Content-Length is formatted here.
        """
        keys = self._keys
        raws = self._raws
        if content_length is not None and key_index(keys, "content-length") >= 0:
            cl_done = False
            for i, key in enumerate(keys):
                if key == "content-length":
                    if cl_done:
                        continue
                    cl_done = True
                    out.append(f"{self._name_at(i).strip(_WS)}: {content_length}\r\n")
                    continue
                out.append(f"{raws[i]}\r\n")
            return
        if raws:
            out.append("\r\n".join(cast("list[str]", raws)))
            out.append("\r\n")
        if content_length is not None:
            out.append(f"Content-Length: {content_length}\r\n")


#: Header name as passed to :meth:`Headers.add` -> (lookup key, name as written).
_ADD_NAMES: dict[str, tuple[str, str]] = {}


def _add_name(name: str) -> tuple[str, str]:
    key = header_key(name)
    entry = (key, _CANONICAL.get(key) or name.strip(_WS))
    if len(_ADD_NAMES) > 4096:
        _ADD_NAMES.clear()
    _ADD_NAMES[name] = entry
    return entry


def _check_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ParseError("header value must not contain CR or LF")
    return value.strip(_WS)
