"""The node link: the t-controller's T-Library connection to the
``default-port`` of the sip-server it sits beside (docs/node.md, "The node
link"; guide: "T-Controller").

The link registers as a *smart* client named after the t-controller, keeps
itself alive with ADDP (``addp-timeout`` / ``addp-remote-timeout`` of the SIP
Cluster Node DN) and reconnects with exponential backoff when the sip-server
goes away. Every event the sip-server sends is handed to a
:class:`NodeEventSink`; call-control requests from desktops go the other way
under a ReferenceID of the link's own, and the answer (the one message that
carries it) comes back with the :class:`ForwardedRequest` it answers, so the
sink can put the desktop's ReferenceID back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from daemons.runtime.logs import get_logger
from daemons.runtime.service import cancel_and_wait
from daemons.runtime.tlib_client import TLibClient, TLibConnectionLost, TLibHandshakeError
from protocols.tlib.catalogue import MAX_UINT32
from protocols.tlib.framing import TMap

__all__ = ["ForwardedRequest", "NodeEventSink", "NodeLink", "NodeLinkDown"]


class NodeLinkDown(ConnectionError):
    """A request cannot be forwarded: the link to the sip-server is down."""


@dataclass(frozen=True)
class ForwardedRequest:
    """A desktop request sent to the sip-server; ``origin`` is opaque to the
    link (the t-controller's connection object), ``reference_id`` is the
    desktop's own ReferenceID."""

    name: str
    this_dn: str | None
    origin: Any
    reference_id: int
    link_reference_id: int


class NodeEventSink(Protocol):
    """What the t-controller does with the link's news."""

    def on_link_up(self) -> None: ...

    def on_link_down(self, reason: str, lost: list[ForwardedRequest]) -> None: ...

    def on_node_event(self, event: TMap, answers: ForwardedRequest | None) -> None: ...


class NodeLink:
    """One link to one sip-server; :meth:`start` runs the connect loop."""

    def __init__(
        self,
        sink: NodeEventSink,
        *,
        host: str,
        port: int,
        application_name: str,
        addp_timeout: float | None,
        addp_remote_timeout: float,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        connect_timeout: float = 5.0,
        client_type: str = "smart",
        local_host: str | None = None,
        log_name: str = "node_link",
    ) -> None:
        # ``local_host``: the daemon's own address, bound for the connection so
        # that a data-centre cut by source address applies to the link
        self.sink = sink
        self.client_type = client_type
        self.local_host = local_host
        self.log_name = log_name
        self.host = host
        self.port = port
        self.application_name = application_name
        self.addp_timeout = addp_timeout
        self.addp_remote_timeout = addp_remote_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.client: TLibClient | None = None
        self.connects = 0
        self.log = get_logger(log_name, application=application_name, peer=f"{host}:{port}")
        self._pending: dict[int, ForwardedRequest] = {}
        self._next_reference = 0
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._handled: dict[int, TMap] = {}

    # -- state ------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.client is not None and not self.client.closed

    async def wait_up(self) -> None:
        await self._up.wait()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.log_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        # a reconnection loop, which may swallow one cancellation
        await cancel_and_wait(task)
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    async def _run(self) -> None:
        delay = self.backoff_initial
        local_addr = (self.local_host, 0) if self.local_host else None
        while True:
            try:
                client = await TLibClient.connect(
                    self.host,
                    self.port,
                    self.application_name,
                    self.client_type,
                    addp_timeout=self.addp_timeout,
                    addp_remote_timeout=self.addp_remote_timeout,
                    connect_timeout=self.connect_timeout,
                    local_addr=local_addr,
                )
            except (OSError, TimeoutError, TLibHandshakeError, TLibConnectionLost) as exc:
                self.log.info(f"{self.log_name}_connect_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            self.connects += 1
            self.client = client
            client.add_listener(self._on_event)
            self.log.info(f"{self.log_name}_up", connects=self.connects)
            self._up.set()
            self.sink.on_link_up()
            # The listener handles every event as it arrives, in order. Events
            # that came with the handshake, before the listener was attached,
            # wait in the unsolicited queue: they are handled here, the queued
            # copies of the others are skipped.
            async for event in client.events():
                if self._handled.pop(id(event), None) is None:
                    self._deliver(event, None)
            await client.wait_closed()
            reason = client.lost_reason or "closed"
            self.client = None
            self._handled.clear()
            self._up.clear()
            lost = list(self._pending.values())
            self._pending.clear()
            self.log.warning(f"{self.log_name}_down", reason=reason, lost_requests=len(lost))
            self.sink.on_link_down(reason, lost)
            await asyncio.sleep(delay)

    # -- traffic ------------------------------------------------------------------
    def forward(
        self, name: str, attributes: Mapping[str, Any], *, origin: Any, reference_id: int
    ) -> ForwardedRequest:
        """Send a desktop's request to the sip-server under a ReferenceID of
        the link; raises :class:`NodeLinkDown` when the link is down and the
        catalogue's ``ValidationError`` for a request it refuses."""
        client = self.client
        if client is None or client.closed:
            raise NodeLinkDown(f"node link to {self.host}:{self.port} is down")
        link_reference = self._allocate()
        attrs = {k: v for k, v in attributes.items() if k not in ("message",)}
        attrs["AttributeReferenceID"] = link_reference
        this_dn = attrs.get("AttributeThisDN")
        forwarded = ForwardedRequest(
            name, this_dn if isinstance(this_dn, str) else None, origin, reference_id,
            link_reference,
        )
        self._pending[link_reference] = forwarded
        try:
            future = client.submit(name, attrs)
        except BaseException:
            del self._pending[link_reference]
            raise
        future.add_done_callback(_consume)
        return forwarded

    def _allocate(self) -> int:
        while True:
            # the high half of the range: the client library allocates its own
            # keep-alive references from 1 upwards
            self._next_reference = self._next_reference % (MAX_UINT32 // 2) + 1
            reference = MAX_UINT32 // 2 + self._next_reference
            if reference not in self._pending:
                return reference

    def _on_event(self, event: TMap) -> None:
        reference = event.get("AttributeReferenceID")
        answers = self._pending.pop(reference, None) if reference is not None else None
        if answers is None:
            self._handled[id(event)] = event  # the client library queues it too
        self._deliver(event, answers)

    def _deliver(self, event: TMap, answers: ForwardedRequest | None) -> None:
        try:
            self.sink.on_node_event(event, answers)
        except Exception:
            self.log.exception("node_event_failed", tlib_event=event.get("message"))


def _consume(future: asyncio.Future[TMap]) -> None:
    # the listener handles answers; a lost connection is reported by the run loop
    if not future.cancelled():
        future.exception()
