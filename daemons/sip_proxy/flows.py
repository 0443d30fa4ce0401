"""Where the sip-proxy sends a request: next hops and the phones' flows.

* :func:`uri_dest` / :func:`uri_transport` -- the next hop a SIP URI names
  (``maddr``, port, ``transport`` parameter, ``sips``; RFC 3261 §16.6 step 7
  and RFC 3263 §4.1 for numeric hosts, which is all the cluster uses inside);
* :func:`first_route` -- the first Route value (§16.4), cheaply;
* :func:`behind_nat` -- RFC 3581: a phone whose packets do not come from its
  Via's sent-by;
* :func:`flow_token` / :func:`parse_flow_token` -- the ``ft`` parameter our
  Record-Route and Path carry so that requests toward a phone reuse the flow
  its REGISTER or dialog came in on (the idea of RFC 5626 §5.3, as a plain
  token of transport, address and port);
* :func:`phone_side` -- how the proxy names itself on a phone's side of a
  dialog, and what a phone's binding records: its flow, or the data centre's
  proxy name it reached the proxy by.
"""

from __future__ import annotations

from protocols.sip.headers import NameAddr, parse_name_addr
from protocols.sip.message import Request
from protocols.sip.rules import DEFAULT_PORTS
from protocols.sip.uri import SipUri

__all__ = ["behind_nat", "first_route", "flow_token", "parse_flow_token", "phone_side",
           "split_hostport", "uri_dest", "uri_transport"]

Address = tuple[str, int]


def first_route(request: Request, top: str | None = None) -> NameAddr:
    """The first Route value (§16.4), parsing only that one when the first line
    (``top``, else the request's) holds a single value."""
    line = request.headers.get("Route") if top is None else top
    if line is not None and "," not in line:
        return parse_name_addr(line)
    return request.routes[0]


def behind_nat(request: Request, source: Address) -> bool:
    """RFC 3581: the phone's sent-by is not where its packets come from."""
    via = request.top_via
    return via.host.strip("[]") != source[0] or (via.port or 5060) != source[1]


def flow_token(transport: str, addr: Address) -> str:
    """The ``ft`` parameter naming a flow: ``udp-127.0.0.1-5060`` (IPv6 ``:`` as ``_``)."""
    return f"{transport.lower()}-{addr[0].replace(':', '_')}-{addr[1]}"


def phone_side(request: Request, source: Address, transport: str, name: str) -> tuple[str, str]:
    """``(flow, proxy name)`` for a phone's request that came from ``source`` over
    ``transport``, ``name`` being the data centre's proxy name its top Route
    named (one of the proxy's ``own_names``; empty when it named our address).

    A phone on TCP or TLS or behind NAT (RFC 3581) is reached only on the flow
    it opened to this proxy: ``(flow_token, "")``. A UDP phone whose Via is
    where its packets come from, that reached us by the name: ``("", name)``
    -- its side of a dialog is record-routed by that name (RFC 5658 double
    Record-Route), so its in-dialog requests find any proxy of the data centre
    by SRV (RFC 3263) and outlive this one. Else ``("", "")``: our address.
    The caller's INVITE and the REGISTER (what a called phone's binding
    records) are decided here alike."""
    if transport != "UDP" or behind_nat(request, source):
        return flow_token(transport, source), ""
    return "", name


def parse_flow_token(token: str) -> tuple[Address, str]:
    """The address and transport of a :func:`flow_token`."""
    transport, host, port = token.rsplit("-", 2)
    return (host.replace("_", ":"), int(port)), transport.upper()


def split_hostport(text: str) -> Address:
    """``host:port`` (IPv6 in brackets) as an address."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def uri_transport(uri: SipUri) -> str:
    """The transport a URI asks for: TLS for ``sips``, its ``transport``
    parameter when it is one we speak, else UDP (§18.1.1, RFC 3263 §4.1)."""
    tp = (uri.params.get("transport") or "").upper()
    if uri.scheme == "sips":
        return "TLS"
    return tp if tp in ("UDP", "TCP", "TLS") else "UDP"


def uri_dest(uri: SipUri) -> Address:
    """The address a URI names: ``maddr`` or host, port or the transport's default.
    :class:`ValueError` for a URI without host."""
    host = uri.params.get("maddr") or uri.host
    if not host:
        raise ValueError("URI without host")
    tp = uri_transport(uri)
    return host, uri.port or DEFAULT_PORTS.get(tp, 5060)
