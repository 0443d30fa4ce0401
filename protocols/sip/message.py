"""SIP messages: parse, lazy typed access, serialise, answer (RFC 3261 §7, §8.1.1, §8.2.6, §18.3).

:func:`parse_message` reads one datagram (or one framed stream message). It
parses the start line and splits the header section once: each line is cut
at its first colon and its name checked against the names already seen, and
a value is stripped only when it is read. Via, From, To, CSeq and the other
typed values are parsed only when read and then cached, so a proxy pays only
for what it looks at; their common shapes take short paths that give the
same answer as the full grammar. :func:`validate` is the deeper check an
element runs before acting on a request (RFC 3261 §8.1.1, §8.2, RFC 4475
§3.1.2): it raises the :class:`ParseError` whose ``status`` and ``reason`` are
the answer to send.

An unmodified parsed message serialises back to the bytes it came from.
"""

from __future__ import annotations

import re
from typing import Any, cast

from protocols.sip.errors import (
    LineTooLong,
    MessageTooLarge,
    ParseError,
    TooManyHeaders,
    VersionNotSupported,
)
from protocols.sip.headers import (
    _KEY_CACHE,
    CSeq,
    Headers,
    NameAddr,
    Via,
    _is_token,
    header_key,
    key_count,
    key_index,
    parse_cseq,
    parse_name_addr,
    parse_name_addrs,
    parse_scalar,
    parse_via,
    parse_vias,
    split_list,
)
from protocols.sip.uri import SipUri, normalise_ipv6, parse_uri

__all__ = [
    "KNOWN_METHODS",
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "make_response",
    "parse_message",
    "validate",
]

SIP_VERSION = "SIP/2.0"

#: Methods of RFC 3261 and its common extensions (3262, 3311, 3428, 3515, 3903, 6086, 6665).
KNOWN_METHODS = frozenset({
    "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK",
    "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
})

#: RFC 3261 §21 reason phrases, plus the codes later RFCs registered.
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
_COMMON_SCHEMES = frozenset({"sip", "sips", "tel", "SIP", "SIPS", "TEL"})
_VERSION_RE = re.compile(r"SIP/\d+\.\d+", re.ASCII | re.IGNORECASE)
_WS = " \t"


def _default_reason(status: int) -> str:
    phrase = REASON_PHRASES.get(status)
    if phrase is not None:
        return phrase
    return REASON_PHRASES.get(status // 100 * 100, "Unknown")


class Message:
    """Common part of :class:`Request` and :class:`Response` (RFC 3261 §7).

    ``headers`` is the raw ordered :class:`Headers`; the properties below parse
    their header on first use, cache the result and raise :class:`ParseError`
    when it is missing or malformed. Modifying ``headers`` drops the caches.
    """

    __slots__ = ("_body", "_raw", "headers", "version")

    headers: Headers
    version: str
    _body: bytes
    _raw: bytes | None

    # ---- body and raw bytes

    @property
    def body(self) -> bytes:
        """The message body, exactly Content-Length octets of it (§18.3)."""
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = bytes(value)
        self._raw = None

    # ---- typed accessors

    def _cached(self, key: str) -> Any:
        return self.headers._cache.get(key)

    @property
    def vias(self) -> list[Via]:
        """Every Via value in order, top first (§20.42)."""
        cache = self.headers._cache
        vias = cache.get("vias")
        if vias is None:
            vias = cache["vias"] = parse_vias(self.headers._lines("via"))
        return vias

    # The five accessors below run for every message a proxy handles, so they
    # look the header up inline rather than through Headers._first.

    @property
    def top_via(self) -> Via:
        """The topmost Via value; only that one is parsed."""
        headers = self.headers
        via = headers._cache.get("top_via")
        if via is None:
            index = key_index(headers._keys, "via")
            if index < 0:
                raise ParseError("missing Via header")
            line = headers._value(index)
            if '"' in line:
                first = split_list(line)[0]
            else:
                comma = line.find(",")
                first = line if comma == -1 else line[:comma]
            via = headers._cache["top_via"] = parse_via(first)
        return via

    def _name_addr(self, key: str, label: str) -> NameAddr:
        """The parsed From or To header, cached (§20.20, §20.39)."""
        headers = self.headers
        value: NameAddr | None = headers._cache.get(key)
        if value is None:
            index = key_index(headers._keys, key)
            if index < 0:
                raise ParseError(f"missing {label} header")
            raw = headers._value(index)
            value = headers._cache[key] = parse_name_addr(raw)
        return value

    @property
    def from_(self) -> NameAddr:
        """The From address (§20.20)."""
        return self._name_addr("from", "From")

    @property
    def to(self) -> NameAddr:
        """The To address (§20.39)."""
        return self._name_addr("to", "To")

    @property
    def call_id(self) -> str:
        """The Call-ID (§20.8)."""
        headers = self.headers
        index = key_index(headers._keys, "call-id")
        if index < 0:
            raise ParseError("missing Call-ID header")
        value = headers._value(index)
        if not value:
            raise ParseError("missing Call-ID header")
        return value

    @property
    def cseq(self) -> CSeq:
        """The CSeq (§20.16); a sequence number of 2**31 or more is a ParseError (§8.1.1.5)."""
        headers = self.headers
        value = headers._cache.get("cseq")
        if value is None:
            index = key_index(headers._keys, "cseq")
            if index < 0:
                raise ParseError("missing CSeq header")
            raw = headers._value(index)
            value = headers._cache["cseq"] = parse_cseq(raw)
        return value

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0..255, §20.22) or ``None`` when absent."""
        raw = self.headers._first("max-forwards")
        if raw is None:
            return None
        return parse_scalar(raw, "Max-Forwards", 256)

    @property
    def content_length(self) -> int | None:
        """The Content-Length header value (§20.14) or ``None`` when absent."""
        raw = self.headers._first("content-length")
        if raw is None:
            return None
        return parse_scalar(raw, "Content-Length", 2**32)

    @property
    def expires(self) -> int | None:
        """The Expires header value (§20.19, below 2**32) or ``None`` when absent."""
        raw = self.headers._first("expires")
        if raw is None:
            return None
        return parse_scalar(raw, "Expires", 2**32)

    def _name_addr_list(self, key: str) -> list[NameAddr]:
        cache = self.headers._cache
        value = cache.get(key + "[]")
        if value is None:
            value = cache[key + "[]"] = parse_name_addrs(self.headers._lines(key))
        return value

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value (§20.10); ``*`` is a NameAddr whose ``is_star`` is True."""
        return self._name_addr_list("contact")

    @property
    def routes(self) -> list[NameAddr]:
        """Every Route value in order (§20.34)."""
        return self._name_addr_list("route")

    @property
    def record_routes(self) -> list[NameAddr]:
        """Every Record-Route value in order (§20.30)."""
        return self._name_addr_list("record-route")

    # ---- serialising

    def _start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """The wire form. Unmodified parsed messages give back their original bytes;
        otherwise headers are written one per line and Content-Length is set from
        the body (§18.3, §20.14)."""
        raw = self._raw
        if raw is not None and not self.headers._dirty:
            return raw + self._body
        out = [self._start_line(), "\r\n"]
        self.headers._serialise_into(out, len(self._body))
        out.append("\r\n")
        data = "".join(out).encode("utf-8", "surrogateescape")
        body = self._body
        return data + body if body else data

    def __bytes__(self) -> bytes:
        return self.serialize()

    def validate(self, *, allow_rfc2543: bool = False) -> None:
        """Run :func:`validate` on this message."""
        validate(self, allow_rfc2543=allow_rfc2543)

    def _comparable(self) -> tuple[object, ...]:
        h = self.headers
        pairs = [
            (k, v)
            for k, v in zip(h._keys, h._values, strict=True)
            if k != "content-length"
        ]
        return (self._start_line(), pairs, self._body)

    def __eq__(self, other: object) -> bool:
        """Messages are equal when start line, headers (names normalised, values
        unfolded, Content-Length ignored: it follows the body) and body are."""
        if not isinstance(other, Message):
            return NotImplemented
        return type(self) is type(other) and self._comparable() == other._comparable()

    __hash__ = None  # type: ignore[assignment]


class Request(Message):
    """A SIP request (RFC 3261 §7.1). ``uri`` is the Request-URI text; ``ruri`` parses it."""

    __slots__ = ("_method", "_ruri", "_uri")

    def __init__(
        self,
        method: str,
        uri: str | SipUri,
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        version: str = SIP_VERSION,
    ) -> None:
        if method not in KNOWN_METHODS and not _is_token(method):
            raise ParseError(f"invalid method {method!r}")
        self._method = method
        self._uri = uri if type(uri) is str else str(uri)
        self._ruri: SipUri | None = uri if isinstance(uri, SipUri) else None
        self.version = version
        self.headers = Headers() if headers is None else headers
        self._body = body if type(body) is bytes else bytes(body)
        self._raw = None

    @property
    def method(self) -> str:
        """The method, case-sensitive (§7.1)."""
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        if not _is_token(value):
            raise ParseError(f"invalid method {value!r}")
        self._method = value
        self._raw = None

    @property
    def uri(self) -> str:
        """The Request-URI as written."""
        return self._uri

    @uri.setter
    def uri(self, value: str | SipUri) -> None:
        self._uri = str(value)
        self._ruri = value if isinstance(value, SipUri) else None
        self._raw = None

    @property
    def ruri(self) -> SipUri:
        """The parsed Request-URI (cached)."""
        if self._ruri is None:
            self._ruri = parse_uri(self._uri)
        return self._ruri

    def _start_line(self) -> str:
        return f"{self._method} {self._uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri}>"


class Response(Message):
    """A SIP response (RFC 3261 §7.2)."""

    __slots__ = ("_reason", "_status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        version: str = SIP_VERSION,
    ) -> None:
        if not 100 <= status <= 699:
            raise ParseError(f"status code {status} out of range")
        self._status = status
        self._reason = _default_reason(status) if reason is None else reason
        self.version = version
        self.headers = Headers() if headers is None else headers
        self._body = bytes(body)
        self._raw = None

    @property
    def status(self) -> int:
        """The status code, 100..699 (§7.2)."""
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if not 100 <= value <= 699:
            raise ParseError(f"status code {value} out of range")
        self._status = value
        self._raw = None

    @property
    def reason(self) -> str:
        """The reason phrase (may be empty, RFC 4475 §3.1.1.13)."""
        return self._reason

    @reason.setter
    def reason(self, value: str) -> None:
        self._reason = value
        self._raw = None

    def _start_line(self) -> str:
        return f"{self.version} {self._status} {self._reason}"

    def __repr__(self) -> str:
        return f"<Response {self._status} {self._reason}>"


# --------------------------------------------------------------------------- parsing


def _check_version(version: str) -> None:
    if version == SIP_VERSION:
        return
    if version.upper() == SIP_VERSION:
        return
    if _VERSION_RE.fullmatch(version):
        raise VersionNotSupported(f"SIP version {version} not supported")
    raise ParseError(f"malformed SIP version {version[:20]!r}")


def _split_headers(
    text: str, max_headers: int, max_line: int
) -> tuple[list[str], list[str], list[str], list[str | None]]:
    """Split the header section into lines once; unfold continuation lines (§7.3.1)."""
    if not text:
        return [], [], [], []
    lines = text.split("\r\n")
    nlines = len(lines)
    if nlines > max_headers:
        raise TooManyHeaders(f"more than {max_headers} header lines")
    if text.count("\n") != nlines - 1 or text.count("\r") != nlines - 1:
        raise ParseError("bare CR or LF in header section (lines end with CRLF, §7)")
    if len(text) > max_line:
        for line in lines:
            if len(line) > max_line:
                raise LineTooLong(f"header line longer than {max_line} octets")
    folded = "\r\n " in text or "\r\n\t" in text
    if folded:
        merged: list[str] = []
        for line in lines:
            if line and line[0] in _WS:
                if not merged:
                    raise ParseError("header section starts with a continuation line")
                merged[-1] = merged[-1] + "\r\n" + line
            else:
                merged.append(line)
        lines = merged
    parts = [line.partition(":") for line in lines]
    cache = _KEY_CACHE
    names = [p[0] for p in parts]
    keys = [cache.get(n) or header_key(n) for n in names]
    if folded:
        values = [
            " ".join(q for q in (r.strip(_WS) for r in p[2].split("\r\n")) if q)
            if "\r\n" in p[2]
            else p[2].strip(_WS)
            for p in parts
        ]
    else:
        values = [p[2].strip(_WS) for p in parts]
    if "" in values:
        for p in parts:
            if not p[1]:
                raise ParseError(f"malformed header line {p[0][:40]!r}")
    raws: list[str | None] = list(lines)
    return names, keys, values, raws


def parse_message(
    data: bytes,
    *,
    max_size: int = 65536,
    max_headers: int = 256,
    max_line: int = 8192,
) -> Request | Response:
    """Parse one SIP message from a datagram (RFC 3261 §7, §18.3).

    The body is Content-Length octets: a shorter body is an error ("Content-Length
    larger than body", 400); extra octets are dropped (§18.3, RFC 4475 §3.1.1.8).
    Without Content-Length the body is the rest of the datagram. Leading CRLFs
    are skipped (§7.5). Raises :class:`ParseError` or a subclass.
    """
    if len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} octets exceeds {max_size}")
    if data[:1] == b"\r" or data[:1] == b"\n":
        data = data.lstrip(b"\r\n")
        if not data:
            raise ParseError("empty message")
    end = data.find(b"\r\n\r\n")
    if end == -1:
        # A datagram whose header section is not closed by an empty line: read
        # it to the end (tolerated, as RFC 5118's messages are published so).
        head_bytes = data[:-2] if data.endswith(b"\r\n") else data
        body_start = len(data)
    else:
        head_bytes = data[:end]
        body_start = end + 4
    msg, content_length = _parse_head(head_bytes, max_headers, max_line)
    if content_length is None:
        msg._body = data[body_start:]
        # rebuilt on serialise so that it carries a Content-Length
        msg._raw = None
    else:
        if content_length > len(data) - body_start:
            raise ParseError("Content-Length larger than body")
        msg._body = data[body_start : body_start + content_length]
        # the original header bytes, for byte-exact forwarding
        msg._raw = data[:body_start]
    return msg


def _parse_head(
    head_bytes: bytes, max_headers: int, max_line: int
) -> tuple[Request | Response, int | None]:
    """Parse a start line and header section (without the empty line).

    Returns the message without body and the Content-Length (``None`` if absent).

    The common case -- lines ending in CRLF, no folding, every header name
    already seen, one Content-Length at most -- takes one ``split`` and two
    passes over the lines; values are stripped only when read. Anything else
    (a bare CR or LF, a continuation line, a name not seen before or not a
    token, a line without a colon, repeated Content-Length, a section longer
    than ``max_line``) goes through :func:`_parse_head_slow`, which gives the
    exact error, so both paths answer every input alike.
    """
    head = head_bytes.decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    if len(lines) - 1 > max_headers or len(head) > max_line:
        return _parse_head_slow(head, max_headers, max_line)
    # a CR or LF left inside a line is a bare one (§7); a search for one
    # character per line (memchr) costs less than counting both over the section
    for line in lines:
        if "\r" in line or "\n" in line:
            return _parse_head_slow(head, max_headers, max_line)
    start = lines[0]
    del lines[0]
    # each line keeps its text and the position of its colon; the value is
    # sliced only when read (most are never read by a proxy)
    colons = [line.find(":") for line in lines]
    # the dict in a typed local: compiled, ``cache.get`` is a direct lookup (a
    # stored bound method would be a generic call per line)
    cache = _KEY_CACHE
    keys: list[str] = []
    cl_index = -1
    for i, line in enumerate(lines):
        colon = colons[i]
        # a line without a colon, or a name never seen (or invalid): the slow path
        k = cache.get(line[:colon]) if colon > 0 else None
        if k is None:
            return _parse_head_slow(head, max_headers, max_line)
        if k == "content-length":
            if cl_index >= 0:
                return _parse_head_slow(head, max_headers, max_line)
            cl_index = i
        keys.append(k)
    if cl_index >= 0:
        cl_text = lines[cl_index][colons[cl_index] + 1 :].strip(_WS)
        if len(cl_text) < 10 and cl_text.isdigit() and cl_text.isascii():
            content_length: int | None = int(cl_text)
        else:
            content_length = parse_scalar(cl_text, "Content-Length", 2**32)
    else:
        content_length = None
    headers = Headers()
    headers._keys = keys
    headers._colons = colons
    headers._raws = cast("list[str | None]", lines)
    headers._cache = {}
    headers._dirty = False
    return _finish_head(start, headers, content_length)


def _parse_head_slow(
    head: str, max_headers: int, max_line: int
) -> tuple[Request | Response, int | None]:
    """The general path of :func:`_parse_head`: every check, folding, exact errors."""
    nl = head.find("\r\n")
    if nl == -1:
        start, rest = head, ""
    else:
        start, rest = head[:nl], head[nl + 2 :]
    if len(start) > max_line:
        raise LineTooLong(f"start line longer than {max_line} octets")
    names, keys, values, raws = _split_headers(rest, max_headers, max_line)
    # Content-Length frames the body (§18.3); conflicting values make framing
    # impossible (RFC 4475 §3.3.9).
    cl_text: str | None = None
    if "content-length" in keys:
        if keys.count("content-length") == 1:
            cl_text = values[keys.index("content-length")]
        else:
            cl_values = {v for k, v in zip(keys, values, strict=True) if k == "content-length"}
            if len(cl_values) > 1:
                raise ParseError("conflicting Content-Length values")
            cl_text = cl_values.pop()
    content_length = (
        None if cl_text is None else parse_scalar(cl_text, "Content-Length", 2**32)
    )
    headers = Headers._from_parsed(names, keys, values, raws)
    # the lines keep their text, continuation lines included (§7.3.1)
    headers._unfolded = "\r\n " not in rest and "\r\n\t" not in rest
    return _finish_head(start, headers, content_length)


def _finish_head(
    start: str, headers: Headers, content_length: int | None
) -> tuple[Request | Response, int | None]:
    """Parse the start line and build the message (§7.1, §7.2)."""
    msg: Request | Response
    if start.startswith("SIP/") or (start[:1] in "sS" and start[:4].upper() == "SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2:
            raise ParseError("malformed Status-Line")
        if parts[0] != SIP_VERSION:
            _check_version(parts[0])
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
            raise ParseError(f"invalid status code {code[:20]!r}")
        msg = Response(int(code), parts[2] if len(parts) == 3 else "", headers)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ParseError("malformed Request-Line (Method SP Request-URI SP SIP-Version, §7.1)")
        method, uri, version = parts
        if version != SIP_VERSION:
            _check_version(version)
        if method not in KNOWN_METHODS and not _is_token(method):
            raise ParseError(f"invalid method {method[:40]!r}")
        colon = uri.find(":")
        if uri[:colon] not in _COMMON_SCHEMES:
            if colon <= 0 or not (uri[0].isascii() and uri[0].isalpha()):
                raise ParseError(f"malformed Request-URI {uri[:60]!r}")
            for ch in uri[:colon]:
                if ch not in _SCHEME_CHARS:
                    raise ParseError(f"malformed Request-URI scheme in {uri[:60]!r}")
        msg = Request(method, uri, headers)
    return msg, content_length


# --------------------------------------------------------------------------- answering


#: What a response copies from the request (§8.2.6.2), in this order, with the
#: name it is written with.
_RESPONSE_COPIED = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"),
                    ("cseq", "CSeq"))


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
) -> Response:
    """Build a response to ``request`` (RFC 3261 §8.2.6).

    Copies every Via (in order), From, To, Call-ID and CSeq (§8.2.6.2); adds
    ``to_tag`` to To when given and To has no tag yet; a 100 (Trying) also
    copies the request's Timestamp (§8.2.6.1). The reason defaults to the §21
    phrase. The header values are copied as text, without parsing them.
    """
    if not 100 <= status <= 699:
        raise ParseError(f"status code {status} out of range")
    src = request.headers
    src_keys = src._keys
    names: list[str] = []
    keys: list[str] = []
    values: list[str] = []
    raws: list[str | None] = []
    for key, name in _RESPONSE_COPIED:
        first = key_index(src_keys, key)
        if first < 0:
            continue
        if key == "via" or key_count(src_keys, key) > 1:
            indices = [i for i, k in enumerate(src_keys) if k == key]
        else:
            indices = [first]
        for i in indices:
            value = src._value(i)
            if key == "to" and to_tag is not None:
                # a tag parameter needs the letters "tag"; only then parse To
                if "tag" not in value.lower() or request.to.tag is None:
                    value = f"{value};tag={to_tag}"
            names.append(name)
            keys.append(key)
            values.append(value)
            raws.append(f"{name}: {value}")
    stamp = key_index(src_keys, "timestamp") if status == 100 else -1
    if stamp >= 0:
        value = src._value(stamp)
        names.append("Timestamp")
        keys.append("timestamp")
        values.append(value)
        raws.append(f"Timestamp: {value}")
    headers = Headers._from_parsed(names, keys, values, raws)
    headers._dirty = True
    return Response(status, reason, headers, body)


# --------------------------------------------------------------------------- validation

_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT",
    re.ASCII,
)
_SINGLE_HEADERS = ("to", "from", "call-id", "cseq", "max-forwards", "content-type", "expires")
_LABELS = {
    "to": "To", "from": "From", "call-id": "Call-ID", "cseq": "CSeq",
    "max-forwards": "Max-Forwards", "via": "Via", "content-type": "Content-Type",
    "expires": "Expires",
}


def _check_uri(text: str, what: str) -> SipUri:
    try:
        return parse_uri(text)
    except ParseError as exc:
        raise ParseError(f"bad {what}: {exc.reason}") from None


def validate(msg: Message, *, allow_rfc2543: bool = False) -> None:
    """Check what an element checks before acting on a message (RFC 3261 §8.1.1, §8.2).

    Raises :class:`ParseError` whose ``status``/``reason`` is the answer a UAS
    should send (400; 501 for an unknown method whose CSeq does not match,
    RFC 4475 §3.1.2.18). Checked: the mandatory headers (To, From, CSeq,
    Call-ID, Max-Forwards, Via for requests), single-valued headers appearing
    once, CSeq method = request method, scalar ranges (CSeq < 2**31,
    Max-Forwards 0..255, Content-Length, Expires and Contact expires < 2**32),
    the syntax of Via, From, To, Contact, Route, Record-Route and their URIs,
    the Request-URI (no escaped headers, §19.1.5) and Date (GMT only, §20.17).
    ``allow_rfc2543`` accepts a request without Max-Forwards (RFC 4475 §3.4.1).
    """
    h = msg.headers
    is_request = isinstance(msg, Request)
    mandatory = ["to", "from", "cseq", "call-id", "via"]
    if is_request and not allow_rfc2543:
        mandatory.append("max-forwards")
    for key in mandatory:
        if key_index(h._keys, key) < 0:
            raise ParseError(f"missing {_LABELS[key]} header")
    for key in _SINGLE_HEADERS:
        if key_count(h._keys, key) > 1:
            raise ParseError(f"multiple {_LABELS[key]} headers")

    def check(what: str, fn: Any) -> Any:
        try:
            return fn()
        except ParseError as exc:
            raise ParseError(f"bad {what} header: {exc.reason}", exc.status) from None

    cseq: CSeq = check("CSeq", lambda: msg.cseq)
    check("Max-Forwards", lambda: msg.max_forwards)
    check("Content-Length", lambda: msg.content_length)
    check("Expires", lambda: msg.expires)
    vias: list[Via] = check("Via", lambda: msg.vias)
    for via in vias:
        received = via.received
        if received is not None:
            _check_address("Via received parameter", received)
    addresses = [("From", [check("From", lambda: msg.from_)]),
                 ("To", [check("To", lambda: msg.to)]),
                 ("Contact", check("Contact", lambda: msg.contacts)),
                 ("Route", check("Route", lambda: msg.routes)),
                 ("Record-Route", check("Record-Route", lambda: msg.record_routes))]
    for what, items in addresses:
        for item in items:
            if item.is_star:
                if what != "Contact":
                    raise ParseError(f"'*' is not a valid {what}")
                continue
            _check_uri(item.uri, f"{what} URI")
            expires = item.params.get("expires")
            if what == "Contact" and expires is not None:
                check("Contact", lambda e=expires: parse_scalar(e, "Contact expires", 2**32))
    date = h._first("date")
    if date is not None and not _DATE_RE.fullmatch(date):
        raise ParseError("bad Date header (RFC 1123 date in GMT required, §20.17)")
    if isinstance(msg, Request):
        ruri = _check_uri(msg.uri, "Request-URI")
        if ruri.headers:
            raise ParseError("escaped headers are not allowed in the Request-URI (§19.1.5)")
        if cseq.method != msg.method:
            if msg.method not in KNOWN_METHODS:
                raise ParseError(
                    f"unknown method {msg.method} with CSeq method {cseq.method}", 501
                )
            raise ParseError(f"CSeq method {cseq.method} does not match {msg.method}")


def _check_address(what: str, text: str) -> None:
    if ":" in text:
        normalise_ipv6(text)
        return
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and int(p) < 256 for p in parts):
        return
    raise ParseError(f"bad {what} {text!r}")
