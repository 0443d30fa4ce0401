"""What the sip-proxy answers or sends on its own, outside a server/client
transaction pair (RFC 3261 §16): CANCEL (§16.10: answered here, then sent on the
pending branch), ACK for a 2xx (§16.11: forwarded statelessly, the same branch
for every copy), stray responses (§16.7, §18.1.2: a late 2xx forwarded
statelessly when the top Via is ours), and the OPTIONS probes of the
oos-check. :class:`HopByHop` is that part of
:class:`~daemons.sip_proxy.proxy.ProxyCore`.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from daemons.runtime.sip_transport import SipTransportManager
from daemons.sip_proxy.flows import first_route, parse_flow_token, uri_dest, uri_transport
from daemons.sip_proxy.forwarding import NODE_HEADER, Forward, ProxySettings
from daemons.sip_proxy.routing import NodeTarget, Router
from daemons.sip_proxy.traits import trait
from protocols.sip.errors import ParseError
from protocols.sip.headers import Via
from protocols.sip.message import Request, Response
from protocols.sip.rules import stateless_response_destination
from protocols.sip.transaction import (
    AckFor2xx,
    CancelReceived,
    StrayResponse,
    TransactionError,
    TransactionKey,
    TransactionLayer,
)
from protocols.sip.uri import format_host

__all__ = ["HopByHop"]

Address = tuple[str, int]


@trait
class HopByHop:
    """CANCEL, 2xx ACK, stray responses and OPTIONS probes (see the module)."""

    settings: ProxySettings
    router: Router
    layer: TransactionLayer
    transport: SipTransportManager | None
    synced: Callable[[], bool]
    requests: Any
    _by_server: dict[TransactionKey, Forward]
    _probes: dict[TransactionKey, Callable[[int | None], None]]
    _peer_hosts: set[str]

    # provided by ProxyCore
    @abstractmethod
    def _now(self) -> float:
        ...

    @abstractmethod
    def _flush(self) -> None:
        ...

    @abstractmethod
    def _respond(self, key: TransactionKey, request: Request, status: int,
                 reason: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        ...

    @abstractmethod
    def _pop_own_routes(self, request: Request, pins: dict[str, str]) -> None:
        ...

    @abstractmethod
    def _send_udp(self, data: bytes, dest: Address) -> None:
        ...

    @abstractmethod
    def send_stateless(self, message: Request | Response, transport: str,
                       destination: Address) -> None:
        ...

    @abstractmethod
    def is_own(self, host: str | None, port: int | None) -> bool:
        ...

    def _on_cancel(self, event: CancelReceived) -> None:
        """§16.10: 200 to the CANCEL, then CANCEL every pending branch."""
        fwd = self._by_server.get(event.invite_key) if event.invite_key else None
        if fwd is None:
            self._respond(event.key, event.request, 481)
            return
        self._respond(event.key, event.request, 200)
        fwd.cancelled = True
        fwd.targets = []
        if fwd.client_key is not None and not fwd.final_sent:
            self.layer.send_cancel(fwd.client_key, self._now())

    def _on_ack(self, event: AckFor2xx) -> None:
        """ACK for a 2xx: forwarded statelessly along the route (§16.6, §13.2.2.4)."""
        ack, source = event.request, event.source
        if not self.synced():
            return
        mf = ack.max_forwards
        if mf is not None and mf <= 0:
            return
        top = ack.top_via.branch or ""
        pins: dict[str, str] = {}
        self._pop_own_routes(ack, pins)
        from_endpoint = not self.router.is_node_host(source[0]) and \
            source[0] not in self._peer_hosts
        dest: Address
        tp: str
        if "Route" in ack.headers:
            nxt = first_route(ack).sip_uri
            dest, tp = uri_dest(nxt), uri_transport(nxt)
        elif from_endpoint:
            if NODE_HEADER in ack.headers:
                ack.headers.remove(NODE_HEADER)
            node = self.router.pinned(pins["sc-node"]) if "sc-node" in pins else None
            if node is None and ack.ruri.host:
                node = self.router.node_at(ack.ruri.host, ack.ruri.port or 5060)
            if node is None:
                self.requests.labels("ACK", "no_node").inc()
                return
            dest, tp = (node.host, node.port), node.transport
        else:
            if "ft" in pins:
                dest, tp = parse_flow_token(pins["ft"])
            else:
                dest, tp = uri_dest(ack.ruri), uri_transport(ack.ruri)
            if NODE_HEADER in ack.headers:
                ack.headers.remove(NODE_HEADER)
        ack.headers.set("Max-Forwards", str(69 if mf is None else mf - 1))
        # the same branch for every copy of this ACK (§16.11: stateless forwarding)
        branch = "z9hG4bKsa" + hashlib.blake2b(top.encode(), digest_size=8).hexdigest()
        ack.headers.prepend("Via", f"SIP/2.0/{tp} {format_host(self.settings.host)}:"
                                   f"{self.settings.port_for(tp)};branch={branch};rport")
        self.requests.labels("ACK", "forwarded").inc()
        if tp == "UDP":
            assert self.transport is not None
            data = ack.serialize()
            if len(data) <= self.transport.udp_size_limit:
                self._send_udp(data, dest)
                return
        self.send_stateless(ack, tp, dest)

    def _forward_stray(self, event: StrayResponse) -> None:
        """A response matching no client transaction (a late 2xx): forward it
        statelessly if the top Via is ours (§16.7, §18.1.2)."""
        response = event.response
        try:
            vias = response.vias
        except ParseError:
            return
        if len(vias) < 2 or not self.is_own(vias[0].host, vias[0].port):
            return
        response.headers.remove_first("Via")
        nxt = vias[1]
        dest = stateless_response_destination(nxt)
        if self.router.is_node_host(dest[0]) is False:
            response.headers.remove(NODE_HEADER)
        self.send_stateless(response, nxt.transport, dest)

    def probe(self, target: NodeTarget, done: Callable[[int | None], None]) -> None:
        """Send one OPTIONS to ``target`` (oos-check); ``done(status or None)``."""
        uri = f"sip:{format_host(target.host)}:{target.port}"
        tag = hashlib.blake2b(f"{self.settings.name}{self._now()}".encode(),
                              digest_size=5).hexdigest()
        req = Request("OPTIONS", uri)
        h = req.headers
        h.add("Via", str(Via(target.transport, self.settings.host, self.settings.port,
                             {"branch": self.layer.new_branch(), "rport": None})))
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{self.settings.name}@{format_host(self.settings.host)}>;tag={tag}")
        h.add("To", f"<{uri}>")
        h.add("Call-ID", f"oos-{tag}@{self.settings.host}")
        h.add("CSeq", "1 OPTIONS")
        h.add("User-Agent", "sipcluster-sip-proxy")
        try:
            key = self.layer.send_request(req, (target.host, target.port), self._now(),
                                          transport=target.transport)
        except TransactionError:
            done(None)
            return
        self._probes[key] = done
        self._flush()
