"""What the sip-proxy core keeps: its settings and one :class:`Forward` per request
being proxied (RFC 3261 §16), and the §16.6 step 8 loop hash of a request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from daemons.cluster.model import NODE_HEADER
from daemons.sip_proxy.registrar import Binding
from daemons.sip_proxy.routing import NodeTarget
from protocols.sip.message import Request
from protocols.sip.transaction import TransactionKey

__all__ = ["NODE_HEADER", "Forward", "ProxySettings", "loop_hash"]


Address = tuple[str, int]


@dataclass(frozen=True)
class ProxySettings:
    """What the core needs from the cluster file and the command line."""

    name: str
    host: str
    port: int
    geo_location: str
    domain: str
    registrar_default_timeout: int = 140
    feature_server: tuple[str, int] | None = None
    #: other proxies of the cluster: name -> (host, sip-port)
    peers: dict[str, Address] = field(default_factory=dict)
    sync_retry_after: int = 5
    #: names that stand for every proxy of the cluster: the SIP Outbound Proxy
    #: DN's contact / external-contact host (the SRV FQDN). A Route naming one
    #: of them without a port is this proxy (RFC 3261 §16.4, RFC 3263 §4.2).
    own_names: frozenset[str] = frozenset()
    #: ``sip-tls-port``: SIP over TLS for phones (RFC 3261 §26.2); None: no TLS
    tls_port: int | None = None

    def port_for(self, transport: str) -> int:
        """The port of our listener for ``transport`` (a Via sent-by, a Record-Route)."""
        if transport == "TLS" and self.tls_port is not None:
            return self.tls_port
        return self.port


@dataclass(slots=True)
class Forward:
    """A request being proxied: its server transaction and current branch (§16)."""

    server_key: TransactionKey
    request: Request  # as received; the forwarded copy once ``applied``
    source: Address
    from_endpoint: bool
    client_key: TransactionKey | None = None
    targets: list[tuple[Address, str, NodeTarget | None]] = field(default_factory=list)
    node: NodeTarget | None = None
    final_sent: bool = False
    got_provisional: bool = False
    cancelled: bool = False
    had_credentials: bool = False
    delay: float = 0.0
    register: list[Binding] | None = None
    path_supported: bool = False
    loop_hash: str = ""  # §16.6 step 8, of the request as received
    in_transport: str = "UDP"
    # §16.6 edits of the forwarded copy, kept aside so that a datagram can be
    # spliced from the received bytes; ``applied``: made on ``request`` instead,
    # our Via included (protocols.sip.splice)
    mf: str = "69"
    strip_node: bool = False
    prepend: list[tuple[str, str]] = field(default_factory=list)
    applied: bool = False


def loop_hash(request: Request) -> str:
    """§16.6 step 8: a hash of what a looping request would keep unchanged."""
    h = request.headers
    parts = [request.uri, request.from_.tag or "", request.to.tag or "", request.call_id,
             str(request.cseq.number)]
    for name in ("Route", "Proxy-Require", "Proxy-Authorization"):
        if name in h:
            parts.extend(h.get_lines(name))
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=5).hexdigest()
