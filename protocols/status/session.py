"""One status-aggregator connection as a sans-I/O state machine
(docs/status-aggregator.md, "Session").

Both ends use :class:`StatusSession`. A client (publisher, consumer, or a
mirror dialling its peer) sends ``Hello`` and waits for ``Welcome``; the
aggregator's end waits for ``Hello``, reports it (:class:`HelloReceived`) and
the owner, who checks the role against the peer's certificate, calls
:meth:`StatusSession.accept` or :meth:`StatusSession.refuse`. Once open,
every valid frame is a :class:`MessageReceived`; a bad one is answered with
``Error`` by the session itself and reported (:class:`ProtocolViolation`)
so the owner logs and counts it. Keep-alive: a ``KeepAlive`` goes out after
``keep_alive_interval`` seconds without output, and a session that heard
nothing for ``keep_alive_timeout`` seconds closes (:class:`Closed`).
Time is the ``now`` argument; the owner follows :meth:`next_timer`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

import msgpack

from protocols.status.errors import ErrorCode, SessionError, StatusProtocolError
from protocols.status.framing import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    FrameTooLarge,
    MalformedFrame,
    encode,
)
from protocols.status.messages import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    KeepAlive,
    Message,
    Welcome,
    parse,
)

DEFAULT_KEEP_ALIVE_INTERVAL: Final = 10.0
DEFAULT_KEEP_ALIVE_TIMEOUT: Final = 30.0
#: seconds the aggregator waits for ``Hello`` on a new connection
DEFAULT_HELLO_TIMEOUT: Final = 10.0


class SessionState(Enum):
    AWAITING_HELLO = "awaiting-hello"
    AWAITING_WELCOME = "awaiting-welcome"
    OPEN = "open"
    CLOSED = "closed"


class SessionInput(Enum):
    HELLO_SENT = "hello-sent"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    FRAME_TOO_LARGE = "frame-too-large"
    TIMEOUT = "timeout"
    CONNECTION_LOST = "connection-lost"
    CLOSE = "close"


_HELLO: Final = SessionState.AWAITING_HELLO
_WELCOME: Final = SessionState.AWAITING_WELCOME
_OPEN: Final = SessionState.OPEN
_CLOSED: Final = SessionState.CLOSED

#: (state, input) -> next state; CLOSED is final and takes no input.
TRANSITIONS: Final[Mapping[tuple[SessionState, SessionInput], SessionState]] = {
    (_HELLO, SessionInput.HELLO_SENT): _WELCOME,
    (_HELLO, SessionInput.ACCEPTED): _OPEN,
    (_WELCOME, SessionInput.ACCEPTED): _OPEN,
    **{(s, i): _CLOSED for s in (_HELLO, _WELCOME, _OPEN)
       for i in (SessionInput.REFUSED, SessionInput.FRAME_TOO_LARGE, SessionInput.TIMEOUT,
                 SessionInput.CONNECTION_LOST, SessionInput.CLOSE)},
}


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The aggregator's end got a well-formed ``Hello``: accept or refuse it."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class Opened:
    """A client's ``Hello`` was answered by ``Welcome``."""

    welcome: Welcome


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: Message


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The session answered bad input with ``Error``: log and count it."""

    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


SessionEvent = HelloReceived | Opened | MessageReceived | ProtocolViolation | Closed

_EVENT_HEAD: Final = msgpack.packb("message") + msgpack.packb("Event") + msgpack.packb("seq")
_RECORDS_KEY: Final = msgpack.packb("records")


class StatusSession:
    """One connection of the status protocol, either end (``client=True``: the
    end that sends ``Hello``)."""

    def __init__(
        self,
        *,
        client: bool,
        now: float,
        keep_alive_interval: float = DEFAULT_KEEP_ALIVE_INTERVAL,
        keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        self.client = client
        self.keep_alive_interval = keep_alive_interval
        self.keep_alive_timeout = keep_alive_timeout
        self.hello_timeout = hello_timeout
        self.max_frame_size = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self._out = bytearray()
        self._events: deque[SessionEvent] = deque()
        self._state = _HELLO
        self._opened_at = now
        self._last_received = now
        self._last_sent = now
        self._event_seq = 0
        self.hello: Hello | None = None
        self.welcome: Welcome | None = None

    # -- state --------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is _CLOSED

    @property
    def is_open(self) -> bool:
        return self._state is _OPEN

    @property
    def events_sent(self) -> int:
        """``seq`` of the last ``Event`` sent (events are numbered from 1)."""
        return self._event_seq

    def apply(self, trigger: SessionInput) -> SessionState:
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise SessionError(
                f"session {self._state.value}: {trigger.value} not allowed") from None
        return self._state

    # -- output -------------------------------------------------------------
    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    def send(self, message: Message, now: float) -> None:
        """Queue one message (the owner's answers, events and requests)."""
        if self.closed:
            return
        self._out += encode(message.to_wire(), self.max_frame_size)
        self._last_sent = now

    def send_event(self, packed_records: bytes, now: float) -> int:
        """Queue ``Event{seq, records}`` whose records array is already msgpack
        (one encoding shared by every watcher of a change); its ``seq``."""
        if self.closed:
            return self._event_seq
        self._event_seq += 1
        body = b"\x83" + _EVENT_HEAD + msgpack.packb(self._event_seq) + _RECORDS_KEY
        size = len(body) + len(packed_records)
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        self._out += size.to_bytes(HEADER_SIZE, "big") + body + packed_records
        self._last_sent = now
        return self._event_seq

    def send_hello(self, hello: Hello, now: float) -> None:
        self.apply(SessionInput.HELLO_SENT)
        self.hello = hello
        self.send(hello, now)

    def accept(self, welcome: Welcome, now: float) -> None:
        """The aggregator takes the ``Hello`` it reported."""
        self.apply(SessionInput.ACCEPTED)
        self.welcome = welcome
        self.send(welcome, now)

    def refuse(self, code: ErrorCode, text: str, now: float) -> None:
        """Answer the ``Hello`` with ``Error`` and close."""
        self.send(Error(code=int(code), text=text), now)
        self.apply(SessionInput.REFUSED)
        self._events.append(Closed(f"refused: {text}"))

    def error(self, exc: StatusProtocolError, now: float) -> None:
        """Answer bad input that the owner found (policy) with ``Error``."""
        self.send(Error(code=int(exc.code), text=exc.text, ref=exc.ref), now)

    def close(self, now: float) -> None:
        if not self.closed:
            self.apply(SessionInput.CLOSE)

    def connection_lost(self, now: float) -> None:
        if not self.closed:
            self.apply(SessionInput.CONNECTION_LOST)
            self._events.append(Closed("connection lost"))

    # -- input --------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        if self.closed or not data:
            return
        self._last_received = now
        self._decoder.feed(data)
        while not self.closed:
            try:
                frame = self._decoder.next_frame()
            except FrameTooLarge as exc:
                self._violation(ErrorCode.FRAME_TOO_LARGE, str(exc), None, now)
                self.apply(SessionInput.FRAME_TOO_LARGE)
                self._events.append(Closed("frame too large"))
                return
            except MalformedFrame as exc:
                self._violation(ErrorCode.MALFORMED_FRAME, str(exc), None, now)
                continue
            if frame is None:
                return
            try:
                message = parse(frame)
            except StatusProtocolError as exc:
                self._violation(exc.code, exc.text, exc.ref, now)
                if self._state is not _OPEN:
                    self._fail(f"bad first frame: {exc.text}")
                continue
            self._on_message(message, now)

    def _on_message(self, message: Message, now: float) -> None:
        state = self._state
        if state is _OPEN:
            if isinstance(message, KeepAlive) and not message.publishers:
                return
            if isinstance(message, Hello | Welcome):
                self._violation(ErrorCode.UNEXPECTED_MESSAGE, f"{message.name} on an open session",
                                None, now)
                return
            self._events.append(MessageReceived(message))
        elif state is _HELLO and not self.client:
            if not isinstance(message, Hello):
                self._violation(ErrorCode.UNEXPECTED_MESSAGE,
                                f"{message.name} before Hello", None, now)
                self._fail("no Hello")
            elif message.version != PROTOCOL_VERSION:
                self.refuse(ErrorCode.UNSUPPORTED_VERSION,
                            f"version {message.version} not supported "
                            f"(this aggregator speaks {PROTOCOL_VERSION})", now)
            else:
                self.hello = message
                self._events.append(HelloReceived(message))
        elif state is _WELCOME:
            if isinstance(message, Welcome):
                self.apply(SessionInput.ACCEPTED)
                self.welcome = message
                self._events.append(Opened(message))
            elif isinstance(message, Error):
                self.apply(SessionInput.REFUSED)
                self._events.append(Closed(f"refused: {message.text}"))
            else:
                self._fail(f"{message.name} before Welcome")

    def _violation(self, code: ErrorCode, text: str, ref: int | None, now: float) -> None:
        self.send(Error(code=int(code), text=text, ref=ref), now)
        self._events.append(ProtocolViolation(code, text))

    def _fail(self, reason: str) -> None:
        self.apply(SessionInput.REFUSED)
        self._events.append(Closed(reason))

    # -- timers -------------------------------------------------------------
    def next_timer(self) -> float | None:
        if self.closed:
            return None
        if self._state is not _OPEN:
            return self._opened_at + self.hello_timeout
        return min(self._last_sent + self.keep_alive_interval,
                   self._last_received + self.keep_alive_timeout)

    def handle_timer(self, now: float) -> None:
        """Keep-alive and loss detection."""
        if self.closed:
            return
        if self._state is not _OPEN:
            if now >= self._opened_at + self.hello_timeout:
                self.apply(SessionInput.TIMEOUT)
                self._events.append(Closed("no Hello/Welcome in time"))
            return
        if now >= self._last_received + self.keep_alive_timeout:
            self.apply(SessionInput.TIMEOUT)
            self._events.append(Closed(f"nothing heard for {self.keep_alive_timeout:g} s"))
            return
        if now >= self._last_sent + self.keep_alive_interval:
            self.send(KeepAlive(), now)
