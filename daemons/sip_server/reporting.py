"""The Interaction Proxy: call events to the reporting clients on IPport
(guide: "Interaction Proxy"; docs/node.md, "IPport").

* Every call event of the node goes to one reporting client; all events of a
  call go to the same client, chosen round-robin over the connected clients
  when the call's first event is sent.
* Events are numbered per client application (``AttributeEventSequenceNumber``)
  across connections. Each application keeps a backlog of the events of the
  last ``backlog_window`` seconds; a client that reconnects under the same
  ``AttributeApplicationName`` within the window gets what it missed, in
  order, none twice: the events after the ``last-seq`` it names in
  ``AttributeExtensions`` at registration, or else after the last event
  written to its previous connection.
* A client gone for longer than the window is forgotten; its calls move to
  another client at their next event.
* Events of calls that have no client (none was connected when the call
  started, or its client was forgotten and no other is connected) are kept
  for ``backlog_window`` seconds (at most ``max_backlog``) and go, in order,
  to the first client that registers within that time; those calls then stay
  with that client. Older ones are dropped and counted (``events_dropped``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemons.runtime.tlib_server import TLibConnection

__all__ = ["InteractionProxy"]

#: The first event of an application gets this sequence number; 1 is the
#: EventServerInfo every connection starts with.
FIRST_SEQUENCE = 2

#: Distinct attribute-name lists kept for sharing (call events come in a few shapes).
_MAX_SHAPES = 1_000
_shapes: dict[tuple[str, ...], tuple[str, ...]] = {}

#: An event's attributes as kept in a backlog: the attribute names (one tuple shared
#: by every event of the same shape) and the values in that order. A backlog holds
#: every event of the last ``backlog_window`` seconds, and a dict per event costs
#: about twice its values.
Packed = tuple[tuple[str, ...], tuple[Any, ...]]


def _pack(attrs: Mapping[str, Any]) -> Packed:
    names = tuple(attrs)
    shared = _shapes.get(names)
    if shared is None:
        if len(_shapes) < _MAX_SHAPES:
            _shapes[names] = names
        shared = names
    return shared, tuple(attrs.values())


def _unpack(packed: Packed) -> dict[str, Any]:
    names, values = packed
    return dict(zip(names, values, strict=True))


@dataclass
class _Application:
    name: str
    last_seq: int = FIRST_SEQUENCE - 1
    delivered: int = FIRST_SEQUENCE - 1
    #: (sequence number, time, event name, attributes)
    backlog: deque[tuple[int, float, str, Packed]] = field(default_factory=deque)
    conn: TLibConnection | None = None
    disconnected_at: float | None = None


class InteractionProxy:
    """IPport distribution and backlog (see module doc); ``clock`` is monotonic."""

    def __init__(self, clock: Callable[[], float], *, backlog_window: float = 60.0,
                 max_backlog: int = 50_000) -> None:
        self.clock = clock
        self.backlog_window = backlog_window
        self.max_backlog = max_backlog
        self.apps: dict[str, _Application] = {}
        self._order: list[str] = []
        self._next = 0
        self.events_sent = 0
        self.events_replayed = 0
        self.events_dropped = 0
        self._next_expiry_check = 0.0
        #: events of calls without a client: (time, call key, name, attributes)
        self._unassigned: deque[tuple[float, str, str, Packed]] = deque()
        #: calls whose unassigned events went to a client, until their next event
        self._adopted: dict[str, tuple[str, float]] = {}

    # -- clients ------------------------------------------------------------

    def connected(self, conn: TLibConnection, last_seq: int | None) -> int:
        """A reporting client registered; replays its backlog. Returns events replayed."""
        self._forget_expired(force=True)
        app = self.apps.get(conn.application)
        if app is None:
            app = _Application(conn.application)
            self.apps[app.name] = app
        elif app.conn is not None and app.conn is not conn:
            app.conn.close()  # the same application again: the newer connection wins
        app.conn = conn
        app.disconnected_at = None
        if app.name not in self._order:
            self._order.append(app.name)
        self._adopt(app)
        start = app.delivered if last_seq is None else min(last_seq, app.last_seq)
        replayed = 0
        for seq, _when, name, attrs in app.backlog:
            if seq <= start:
                continue
            if conn.send_event(name, _unpack(attrs), sequence=seq, trusted=True) is None:
                break
            app.delivered = seq
            replayed += 1
        if not app.backlog or replayed == 0:
            conn.session.set_next_sequence(app.last_seq + 1)
        self.events_replayed += replayed
        return replayed

    def _adopt(self, app: _Application) -> None:
        """Move the events of calls without a client into ``app``'s backlog."""
        self._expire_unassigned()
        while self._unassigned:
            when, key, name, attrs = self._unassigned.popleft()
            app.last_seq += 1
            app.backlog.append((app.last_seq, when, name, attrs))
            self._adopted[key] = (app.name, when)

    def _expire_unassigned(self) -> None:
        cutoff = self.clock() - self.backlog_window
        while self._unassigned and (self._unassigned[0][0] < cutoff
                                    or len(self._unassigned) > self.max_backlog):
            self._unassigned.popleft()
            self.events_dropped += 1
        for key in [k for k, (_, when) in self._adopted.items() if when < cutoff]:
            del self._adopted[key]

    def disconnected(self, conn: TLibConnection) -> None:
        app = self.apps.get(conn.application)
        if app is None or app.conn is not conn:
            return
        app.conn = None
        app.disconnected_at = self.clock()
        if app.name in self._order:
            self._order.remove(app.name)

    # -- events -------------------------------------------------------------

    def assign(self, current: str | None, key: str = "") -> str | None:
        """The client for a call (``key``: its ConnID): its current one while
        known, the one that took its events from the unassigned backlog, else
        the next in turn."""
        self._forget_expired()
        if current is not None and current in self.apps:
            return current
        adopted = self._adopted.pop(key, None) if self._adopted else None
        if adopted is not None and adopted[0] in self.apps:
            return adopted[0]
        if not self._order:
            return None
        self._next %= len(self._order)
        name = self._order[self._next]
        self._next += 1
        return name

    def send(self, client: str | None, name: str, attrs: Mapping[str, Any],
             key: str = "") -> str | None:
        """Send one call event to ``client`` (from :meth:`assign`); keeps the backlog.

        Without a client the event waits for the next client to register
        (module doc); returns ``None`` then."""
        app = self.apps.get(client) if client is not None else None
        if app is None:
            self._unassigned.append((self.clock(), key, name, _pack(attrs)))
            self._expire_unassigned()
            return None
        now = self.clock()
        app.last_seq += 1
        app.backlog.append((app.last_seq, now, name, _pack(attrs)))
        cutoff = now - self.backlog_window
        while app.backlog and (app.backlog[0][1] < cutoff or len(app.backlog) > self.max_backlog):
            app.backlog.popleft()
        if app.conn is not None and app.conn.send_event(name, attrs, sequence=app.last_seq,
                                                        trusted=True):
            app.delivered = app.last_seq
            self.events_sent += 1
        return client

    def _forget_expired(self, *, force: bool = False) -> None:
        now = self.clock()
        if now < self._next_expiry_check and not force:
            return  # once a second is enough: the window is counted in seconds
        self._next_expiry_check = now + 1.0
        for name in [n for n, a in self.apps.items()
                     if a.conn is None and a.disconnected_at is not None
                     and now - a.disconnected_at > self.backlog_window]:
            del self.apps[name]

    def status(self) -> list[dict[str, Any]]:
        return [{"application": a.name, "connected": a.conn is not None,
                 "last_seq": a.last_seq, "delivered": a.delivered, "backlog": len(a.backlog)}
                for a in self.apps.values()] + [
                    {"application": None, "connected": False, "backlog": len(self._unassigned),
                     "dropped": self.events_dropped}]
