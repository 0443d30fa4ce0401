"""The per-datagram work of the SIP UDP transport (RFC 3261 §18.1.2, §18.2.1).

:class:`DatagramPath` is what :class:`~daemons.runtime.sip_transport.SipTransportManager`
does for every UDP datagram: on receipt, a CRLF keep-alive told from a message,
the message parsed and checked (:func:`~protocols.sip.rules.check_received`, or
a proxy's :func:`~protocols.sip.rules.check_proxied`), ``received``/``rport``
set on a request's top Via, the message counted and handed to the daemon with
its flow; on sending, the datagram put on the listening socket of the
destination's family and counted.

It is compiled with mypyc (``daemons.runtime.COMPILED_MODULES``), as the SIP
stack it calls is, while the asyncio protocol and the manager stay plain
Python: ``_UdpEndpoint.datagram_received`` and ``send_datagram`` are one call
into here. What is rare goes back to the manager, which owns the sockets, the
log and the counters: malformed input and its answer, a keep-alive, a
handler's failure, a socket to choose or open, a failed send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from protocols.sip.errors import ParseError
from protocols.sip.message import Request, Response, parse_message
from protocols.sip.rules import check_proxied, check_received, fix_top_via, ip_address

__all__ = ["DatagramPath"]

Address = tuple[str, int]
#: what the daemon's handler is given: the message and its flow
Deliver = Callable[[Request | Response, Any], None]

#: The bytes a UDP keep-alive is made of (RFC 5626 §3.5.1 and what UAs send).
_KEEPALIVE_BYTES: Final = frozenset(b"\r\n\x00 ")
#: At most this many flows are kept per socket (a Flow is built once per peer).
_MAX_FLOWS: Final = 4096


class DatagramPath:
    """The receive and send path of one manager's UDP sockets (see the module docstring).

    ``manager`` is the :class:`~daemons.runtime.sip_transport.SipTransportManager`
    (its ``_malformed``, ``_count_keepalive``, ``_handler_failed``,
    ``_ready_udp_endpoint`` and ``_send_failed`` take the rare cases);
    ``make_flow(remote, local)`` builds the flow of a datagram from ``remote``
    received on the socket bound to ``local``; ``ready`` is the manager's table
    of the socket to send from per address family (IPv6 or not), which it
    clears whenever its sockets change; ``received`` and ``sent`` are the
    labelled counters (transport, kind) of messages in and out.
    """

    def __init__(
        self,
        manager: Any,
        on_message: Deliver,
        *,
        proxy_checks: bool,
        max_size: int,
        make_flow: Callable[[Address, Address], Any],
        ready: dict[bool, Any],
        received: Any,
        sent: Any,
    ) -> None:
        self.manager = manager
        self.on_message = on_message
        self.proxy_checks = proxy_checks
        self.max_size = max_size
        self.make_flow = make_flow
        self.ready = ready
        # the four labelled children counted per message, looked up once
        self.requests_in: Any = received.labels("UDP", "request")
        self.responses_in: Any = received.labels("UDP", "response")
        self.requests_out: Any = sent.labels("UDP", "request")
        self.responses_out: Any = sent.labels("UDP", "response")

    def receive(self, ep: Any, flows: dict[Address, Any], data: bytes, addr: Any) -> None:
        """One datagram ``data`` from ``addr`` on the socket ``ep`` (an ``_UdpEndpoint``),
        whose flows by remote address are ``flows``."""
        # a message starts with a token: only then is the copy of strip() needed
        if not data or (data[0] in _KEEPALIVE_BYTES and not data.strip(b"\r\n\x00 ")):
            # A CRLF "ping" over UDP (some UAs send them to keep NAT bindings).
            self.manager._count_keepalive("UDP")
            return
        host: str = addr[0]
        port: int = addr[1]
        remote = (host, port)
        flow = flows.get(remote)
        if flow is None:
            if len(flows) >= _MAX_FLOWS:
                flows.clear()
            flow = self.make_flow(remote, ep.local)
            flows[remote] = flow
        try:
            msg = parse_message(data, max_size=self.max_size)
            if self.proxy_checks:
                check_proxied(msg)
            else:
                check_received(msg)
        except ParseError as exc:
            self.manager._malformed(data, flow, exc, lambda out: ep.sendto(out, remote))
            return
        if isinstance(msg, Request):
            fix_top_via(msg, remote)
            self.requests_in.inc()
        else:
            self.responses_in.inc()
        try:
            self.on_message(msg, flow)
        except Exception:  # a bug in a handler must not stop the listener
            self.manager._handler_failed(flow)

    def endpoint(self, host: str) -> Any:
        """The socket (an ``_UdpEndpoint``) a datagram to the IP address ``host``
        leaves from at once, or None."""
        ep = self.ready.get(":" in host)
        if ep is not None:
            transport = ep.transport
            if transport is not None and not transport.is_closing():
                return ep
        return self.manager._ready_udp_endpoint(host)

    def send(self, data: bytes, addr: Address, local_port: int | None = None) -> bool:
        """Send ``data`` to ``addr`` over UDP from a listening socket at once
        (``SipTransportManager.send_datagram``); False when the host is not an IP
        address or no socket of its family is open."""
        host = addr[0]
        if ip_address(host) is None:
            return False
        ep = self.endpoint(host) if local_port is None \
            else self.manager._ready_udp_endpoint(host, local_port)
        if ep is None:
            return False
        transport = ep.transport
        try:
            if transport is None or transport.is_closing():
                ep.sendto(data, addr)  # raises the manager's TransportError (an OSError)
            else:
                transport.sendto(data, addr)
        except OSError as exc:
            self.manager._send_failed("UDP", addr, exc)  # raises
            raise
        if data.startswith(b"SIP/"):
            self.responses_out.inc()
        else:
            self.requests_out.inc()
        return True
