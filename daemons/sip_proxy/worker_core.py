"""The proxy core of one worker of a ``workers = N`` sip-proxy (docs/sip-proxy.md,
"Workers"; the supervisor and the layout are :mod:`daemons.sip_proxy.workers`).

Its own module so that it is compiled with the core it extends (a compiled
class takes no interpreted subclass).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from daemons.runtime.management import Metrics
from daemons.runtime.sip_transport import SipTransportManager, TransportError
from daemons.sip_proxy.forwarding import ProxySettings
from daemons.sip_proxy.proxy import ProxyCore
from daemons.sip_proxy.registrar import Binding, BindingStore
from daemons.sip_proxy.routing import Router
from daemons.sip_proxy.security import AuthGuard, RateLimiter
from protocols.sip.timers import TimerSettings
from protocols.sip.transaction import Transmit

__all__ = ["WorkerCore"]


class WorkerCore(ProxyCore):
    """The proxy core of one worker (see :mod:`daemons.sip_proxy.workers`):
    ``settings.port`` is the worker's own port (Via, Record-Route, Path);
    ``shared_port`` the proxy's ``sip-port``, listened on with SO_REUSEPORT
    beside the other workers."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        shared_port: int,
        router: Router,
        store: BindingStore,
        metrics: Metrics,
        log: Any,
        on_binding: Callable[[Binding], None] = lambda b: None,
        synced: Callable[[], bool] = lambda: True,
        peer_alive: Callable[[str], bool] = lambda name: False,
        rate_limiter: RateLimiter | None = None,
        auth_guard: AuthGuard | None = None,
        timers: TimerSettings | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        # the arguments written out: compiled, a call passing **kwargs on to the
        # core's keyword-only parameters fills them in the wrong places
        super().__init__(settings, router=router, store=store, metrics=metrics, log=log,
                         on_binding=on_binding, synced=synced, peer_alive=peer_alive,
                         rate_limiter=rate_limiter, auth_guard=auth_guard, timers=timers,
                         ssl_context=ssl_context, clock=clock)
        self.shared_port = shared_port

    async def start(self) -> None:
        self.transport = SipTransportManager(self.on_message, metrics=self.metrics,
                                             logger=self.log, proxy_checks=True,
                                             ssl_context=self.ssl_context)
        host = self.settings.host
        # the shared port first: answers and stateless sends leave from it
        await self.transport.listen_pair(host, self.shared_port, reuse_port=True)
        await self.transport.listen_pair(host, self.settings.port)
        self._own = {(host, self.shared_port), (host, self.settings.port)}
        tls_port = self.settings.tls_port
        if tls_port is not None and self.ssl_context is not None:
            await self.transport.listen("TLS", host, tls_port, reuse_port=True)
            self._own.add((host, tls_port))

    def _transmit(self, tx: Transmit) -> None:
        # a request over UDP leaves from this worker's own port (its Via's), so
        # that a peer answering to the source port (rport) answers this worker
        transport = self.transport
        assert transport is not None
        data = tx.data
        if tx.transport == "UDP" and not data.startswith(b"SIP/") \
                and len(data) <= transport.udp_size_limit:
            try:
                if transport.send_datagram(data, tx.destination, self.settings.port):
                    return
            except TransportError:
                self._transport_failed(tx.key)
                return
        super()._transmit(tx)
