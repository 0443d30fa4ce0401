"""RFC 3261 §18 transport rules that need no socket: the Via a server transport
fixes on receipt, where responses go, and the answer to unparseable input.

* :func:`fix_top_via` -- §18.2.1 and RFC 3581 §4: ``received`` and ``rport``
  on the top Via of a received request;
* :func:`response_destination` -- §18.2.2 and RFC 3581 §4: where a server
  transaction sends its responses; :func:`stateless_response_destination`
  -- the same rule without the request's packet at hand (a proxy forwarding a
  response statelessly, §16.7 step 9, or a server whose connection is gone);
* :func:`rewrite_top_via_transport` -- §18.1.1: the Via of a request moved
  from UDP to a congestion-controlled transport;
* :func:`build_error_response` -- §21.4.1 / §8.2.6: the 400 (or the parser's
  status) for a request the parser refused, from a lenient scan of its lines;
* :func:`check_received` and :func:`check_proxied` -- §18.1.2, §18.2.1 and
  §16.3 step 1: what a transport must be able to read before it passes a
  message up (the full §8.2 check, or a proxy's lighter one).

The daemons' transports (``daemons/runtime/sip_transport.py``) apply them to
real sockets; here they are plain functions of messages and addresses.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
from typing import Final

from protocols.sip.errors import ParseError
from protocols.sip.headers import Via, canonical_name
from protocols.sip.message import KNOWN_METHODS, Request, Response, validate
from protocols.sip.timers import is_reliable

__all__ = [
    "DEFAULT_PORTS",
    "build_error_response",
    "check_proxied",
    "check_received",
    "fix_top_via",
    "ip_address",
    "response_destination",
    "rewrite_top_via_transport",
    "same_host",
    "stateless_response_destination",
]

Address = tuple[str, int]

#: Default ports when a Via or URI has none (§18.2.2, §19.1.2).
DEFAULT_PORTS: Final = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
#: The headers a proxied request must not repeat (§16.3 step 1, §20).
_SINGLE_HEADERS: Final = ("to", "from", "call-id", "cseq", "max-forwards")


@functools.lru_cache(maxsize=4096)
def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``text`` stands for (brackets allowed), ``None`` for a host name.

    Cached: every message sent and every Via received asks about the same few peers.
    """
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def same_host(host: str, address: str) -> bool:
    """True when ``host`` (a Via sent-by host) is the IP address ``address``.

    A domain name never matches (§18.2.1: "If the host portion of the sent-by
    field contains a domain name ... the server MUST add a received parameter").
    """
    if host == address:  # the usual case: no address objects to compare
        return ip_address(host) is not None
    a = ip_address(host)
    b = ip_address(address)
    return a is not None and b is not None and a == b


def fix_top_via(request: Request, source: Address) -> bool:
    """Apply §18.2.1 and RFC 3581 §4 to a received request; True if the Via changed.

    ``received`` is added when the sent-by host is not the source IP; an empty
    ``rport`` is set to the source port, and then ``received`` is added even
    when it equals the sent-by host (RFC 3581 §4).
    """
    via = request.top_via
    host, port = source
    changed = False
    params = dict(via.params)
    if via.wants_rport:
        params["rport"] = str(port)
        params["received"] = host
        changed = True
    elif not same_host(via.host, host):
        params["received"] = host
        changed = True
    if changed:
        new = Via(via.transport, via.host, via.port, params, via.protocol)
        request.headers.remove_first("Via")
        request.headers.prepend("Via", str(new))
    return changed


def rewrite_top_via_transport(request: Request, transport: str, port: int | None) -> None:
    """§18.1.1: the top Via names ``transport`` (and ``port``, when given), so that
    responses come back over the transport the request now takes."""
    via = request.top_via
    new = Via(transport, via.host, port if port is not None else via.port, dict(via.params),
              via.protocol)
    request.headers.remove_first("Via")
    request.headers.prepend("Via", str(new))


def response_destination(via: Via, source: Address, transport: str) -> Address:
    """Where a server sends responses to a request (RFC 3261 §18.2.2, RFC 3581 §4).

    Reliable transports answer on the connection the request came in on, i.e.
    ``source``. Over UDP the answer goes to ``maddr`` if present, otherwise to
    the packet's source address (which is what the "received" parameter the
    server transport adds would hold) at the source port when the client asked
    for ``rport``, else at the sent-by port (default 5060).
    """
    if is_reliable(transport):
        return source
    params = via.params
    maddr = params.get("maddr")
    if maddr:
        return (maddr, via.port or 5060)
    if "rport" in params:
        return source
    return (source[0], via.port or 5060)


def stateless_response_destination(via: Via) -> Address:
    """Where a response goes from the Via alone (§18.2.2, RFC 3581 §4): ``received``
    (else the sent-by host) at ``rport`` (else the sent-by port, else the
    transport's default port)."""
    host = via.received or via.host
    port = via.rport or via.port or DEFAULT_PORTS.get(via.transport.upper(), 5060)
    return host, port


# --------------------------------------------------------------------------- 400 for bad input

#: Lenient on purpose: whitespace inside the Request-URI (RFC 4475 §3.1.2.10
#: "lwsruri") or around it (§3.1.2.11 "lwsstart") still yields a 400.
_REQUEST_LINE: Final = re.compile(rb"^([!-~]+)[ \t]+(\S(?:.*\S)?)[ \t]+SIP/\d+\.\d+\s*$",
                                  re.IGNORECASE)
_ESSENTIAL: Final = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To",
                     "t": "To", "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}
_PRINTABLE: Final = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


def _clean_reason(reason: str) -> str:
    text = _PRINTABLE.sub(" ", reason).strip()
    return (text[:200] or "Bad Request")


def build_error_response(data: bytes, status: int, reason: str) -> bytes | None:
    """A response to malformed ``data`` if it looks like a request (§21.4.1), else ``None``.

    The scan is deliberately lenient: it only needs a request line and the
    Via, From, To, Call-ID and CSeq lines to copy (§8.2.6.2). ACKs and
    responses are never answered. The reason phrase is the parser's reason.
    """
    head = data.lstrip(b"\r\n")
    end = head.find(b"\r\n\r\n")
    if end == -1:
        end = head.find(b"\n\n")
    if end != -1:
        head = head[:end]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    match = _REQUEST_LINE.match(lines[0]) if lines else None
    if match is None or match.group(1).upper() in (b"ACK", b"SIP/2.0"):
        return None
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in lines[1:]:
        line = raw.decode("utf-8", "replace")
        if line[:1] in (" ", "\t") and current:
            current[-1] += " " + line.strip()  # folded continuation (§7.3.1)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            current = None
            continue
        canonical = _ESSENTIAL.get(name.strip().lower())
        if canonical is None:
            current = None
            continue
        current = found.setdefault(canonical, [])
        current.append(value.strip())
    if any(not found.get(name) for name in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    out = [f"SIP/2.0 {status} {_clean_reason(reason)}"]
    out.extend(f"Via: {value}" for value in found["Via"])
    out.append(f"From: {found['From'][0]}")
    to = found["To"][0]
    if ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={secrets.token_hex(6)}"  # §8.2.6.2
    out.append(f"To: {to}")
    out.append(f"Call-ID: {found['Call-ID'][0]}")
    out.append(f"CSeq: {found['CSeq'][0]}")
    out.append("Content-Length: 0")
    text = "\r\n".join(line.replace("\r", " ").replace("\n", " ") for line in out)
    return (text + "\r\n\r\n").encode("utf-8", "replace")


def check_proxied(msg: Request | Response) -> None:
    """The lighter check of a proxy (RFC 3261 §16.3 step 1, "reasonable syntax").

    Only what the server transaction and the proxy rules read must be well
    formed: the top Via, CSeq (matching the method), Call-ID, From, To,
    Max-Forwards and the Request-URI. Other headers (Contact, Date, ...) "SHOULD
    be ignored and remain unchanged when the message is forwarded"; the proxy
    parses a REGISTER's Contact itself and answers 400 when it is malformed.
    A response needs what transaction matching reads (top Via, CSeq, Call-ID);
    the proxy forwards the rest unchanged (§16.7). Raises :class:`ParseError`.
    """
    msg.top_via  # noqa: B018
    cseq = msg.cseq
    msg.call_id  # noqa: B018
    if isinstance(msg, Request):
        msg.from_  # noqa: B018
        msg.to  # noqa: B018
        keys = msg.headers._keys
        # one set of the names first: most requests repeat none of them, and five
        # list counts cost several times as much
        if len(set(keys)) != len(keys):
            for key in _SINGLE_HEADERS:
                if keys.count(key) > 1:
                    raise ParseError(f"multiple {canonical_name(key)} headers")
        msg.max_forwards  # noqa: B018
        msg.content_length  # noqa: B018
        ruri = msg.ruri
        if ruri.headers:
            raise ParseError("escaped headers are not allowed in the Request-URI (§19.1.5)")
        if cseq.method != msg.method:
            if msg.method not in KNOWN_METHODS:
                raise ParseError(
                    f"unknown method {msg.method} with CSeq method {cseq.method}", 501)
            raise ParseError(f"CSeq method {cseq.method} does not match {msg.method}")


def check_received(msg: Request | Response) -> None:
    """What a transport must be able to read before passing a message up (§18.1.2, §18.2.1).

    Requests get the full §8.2 check (tolerating a missing Max-Forwards, RFC
    4475 §3.4.1); responses need the headers transaction matching reads.
    Raises :class:`ParseError`.
    """
    if isinstance(msg, Request):
        validate(msg, allow_rfc2543=True)
        return
    msg.top_via  # noqa: B018
    msg.cseq  # noqa: B018
    msg.call_id  # noqa: B018
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
