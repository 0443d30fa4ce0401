"""The one glue between a sans-I/O protocol object and the event loop.

Every protocol object in ``protocols/`` says when it next needs the clock
(``next_timer() -> float | None``, in loop time) and is told it has come
(``handle_timer(now)``). :class:`TimerSlot` is the single loop timer that
follows that deadline: re-armed only when the deadline moves, cancelled when
there is none, never two at once. :class:`StreamDriver` adds what a
stream-based session (T-Library, RTM, status protocol) needs around it: write
what the session queued, close the transport when the session is closed,
re-arm the timer — after every input and every timer.

The model is aioquic's ``asyncio/protocol.py``: the connection decides, the
glue only moves bytes and time.

The module is compiled with mypyc (``daemons.runtime.COMPILED_MODULES``): a
proxy arms its timer after every message. Its classes are used from
interpreted code as they are, not subclassed, and get no attributes besides
their own.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol


class TimerSlot:
    """One loop timer kept at a sans-I/O object's next deadline.

    ``fire(now)`` runs when the deadline is reached (``now`` is loop time);
    it usually calls the object's ``handle_timer(now)`` and then the owner's
    flush, which calls :meth:`arm` again.

    ``resolution`` (seconds) rounds each deadline up to a multiple of it: an
    object with thousands of timers a second (a proxy's transactions) then
    wakes once per ``resolution`` for all that are due, instead of once per
    timer; no timer fires early, none more than ``resolution`` late.
    """

    __slots__ = ("_fire", "_handle", "_loop", "_resolution", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[float], None],
                 resolution: float = 0.0) -> None:
        self._loop = loop
        self._fire = fire
        self._resolution = resolution
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None

    @property
    def when(self) -> float | None:
        """The deadline the slot is armed for (None: disarmed)."""
        return self._when

    def arm(self, when: float | None) -> None:
        """Follow ``when`` (the object's ``next_timer()``); None disarms."""
        if when is not None and self._resolution:
            when = math.ceil(when / self._resolution) * self._resolution
        if when == self._when:  # a fired slot has no deadline, so this is the armed one
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = when
        if when is not None:
            self._handle = self._loop.call_at(when, self._on_timer)

    def cancel(self) -> None:
        self.arm(None)

    def _on_timer(self) -> None:
        self._handle = None
        self._when = None
        self._fire(self._loop.time())


class StreamSession(Protocol):
    """What :class:`StreamDriver` needs of a sans-I/O stream session."""

    @property
    def closed(self) -> bool: ...

    def data_to_send(self) -> bytes: ...

    def next_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class StreamDriver:
    """Moves one stream session's bytes to its transport and keeps its timer.

    ``on_timer(now)`` runs after the session handled a timer (the owner reads
    the session's events there) and ``on_closed()`` once, when the session has
    closed and the transport was closed for it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        session: StreamSession,
        transport: asyncio.WriteTransport,
        *,
        on_timer: Callable[[float], None] | None = None,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.session = session
        self.transport = transport
        self._on_timer = on_timer
        self._on_closed = on_closed
        self._closed = False
        self.timer = TimerSlot(loop, self._fire)

    def _fire(self, now: float) -> None:
        self.session.handle_timer(now)
        if self._on_timer is not None:
            self._on_timer(now)
        self.flush()

    def flush(self) -> None:
        """Write what the session queued; close with it; re-arm the timer."""
        if self._closed:
            return
        data = self.session.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)
        if self.session.closed:
            self.close()
            return
        self.timer.arm(self.session.next_timer())

    def close(self) -> None:
        """Stop the timer and close the transport; ``on_closed`` runs once."""
        if self._closed:
            return
        self._closed = True
        self.timer.cancel()
        if not self.transport.is_closing():
            self.transport.close()
        if self._on_closed is not None:
            self._on_closed()
