"""T-Library sessions, both roles, sans-I/O (docs/tlib.md, "Session").

Modelled on aioquic's connection: the owner feeds received bytes with
:meth:`receive_data` (passing ``now``), sends what :meth:`data_to_send`
returns, reads session events from :meth:`next_event`, and calls
:meth:`handle_timer` when the time from :meth:`next_timer` has come.
``now`` is a monotonic clock in seconds; ``time_offset`` turns it into Unix
time for the ``AttributeTimeinSecs`` / ``AttributeTimeinuSecs`` stamps
(pass ``time.time() - time.monotonic()``).

A session is in one :class:`SessionState`; :data:`TRANSITIONS` is its one
(state, :class:`SessionInput`) -> state table and :meth:`_Session.apply` the
only place that moves it. The events it reports are in
:mod:`protocols.tlib.events` (re-exported here).

Rules (docs/tlib.md):

* Handshake: the first frame a client sends is ``RequestRegisterClient``
  (``AttributeApplicationName``, ``AttributeClientType`` smart|legacy,
  ``AttributeProtocolVersion``); the server answers ``EventServerInfo``.
  Anything else first is answered with ``EventError`` (43) and the server
  closes.
* Correlation: every request carries ``AttributeReferenceID``; the event that
  answers it carries the same value.
* Sequence: every event a server sends is stamped with a per-connection
  ``AttributeEventSequenceNumber`` (1, 2, 3 ...) and the time.
* ADDP: the client sends ``RequestKeepAlive`` whenever it has sent nothing
  for ``addp-timeout`` seconds; the server answers ``EventKeepAlive``. Each
  side declares the peer lost (:class:`PeerLost`) when nothing at all has
  arrived for ``addp-timeout + addp-remote-timeout`` seconds. The client
  announces both values in the handshake (``AttributeExtensions``
  ``addp-timeout`` / ``addp-remote-timeout``) so that the server applies the
  same rule.
* A frame over the maximum size: ``EventError`` (47) and the server closes;
  a malformed frame or an unknown / invalid request: ``EventError`` with the
  code, and the session goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from enum import Enum
from typing import Any, Final

from protocols.tlib.catalogue import (
    CLIENT_TYPES,
    MAX_UINT32,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    validate,
)
from protocols.tlib.errors import (
    ERROR_TEXT,
    ErrorCode,
    FrameTooLarge,
    MalformedFrame,
    SessionError,
    TLibError,
    ValidationError,
)
from protocols.tlib.events import (
    ClientRegistered,
    EventReceived,
    HandshakeFailed,
    PeerLost,
    ProtocolViolation,
    RequestReceived,
    RequestRejected,
    ServerInfoReceived,
    SessionClosed,
    SessionEvent,
)
from protocols.tlib.framing import MAX_FRAME_SIZE, FrameDecoder, TMap, encode_frame

__all__ = [
    "ADDP_REMOTE_TIMEOUT_KEY",
    "ADDP_TIMEOUT_KEY",
    "DEFAULT_ADDP_REMOTE_TIMEOUT",
    "DEFAULT_ADDP_TIMEOUT",
    "DEFAULT_REGISTRATION_TIMEOUT",
    "MAX_ADDP_SECONDS",
    "TRANSITIONS",
    "ClientRegistered",
    "ClientSession",
    "EventReceived",
    "HandshakeFailed",
    "PeerLost",
    "ProtocolViolation",
    "RequestReceived",
    "RequestRejected",
    "ServerInfoReceived",
    "ServerSession",
    "SessionClosed",
    "SessionEvent",
    "SessionInput",
    "SessionState",
]

#: Defaults from the SIP Cluster Node DN options (guide: addp-timeout, addp-remote-timeout).
DEFAULT_ADDP_TIMEOUT: Final = 7.0
DEFAULT_ADDP_REMOTE_TIMEOUT: Final = 11.0
#: Seconds a server waits for RequestRegisterClient on a new connection.
DEFAULT_REGISTRATION_TIMEOUT: Final = 10.0
#: Largest ADDP value accepted from a client announcement, in seconds.
MAX_ADDP_SECONDS: Final = 3600.0

ADDP_TIMEOUT_KEY: Final = "addp-timeout"
ADDP_REMOTE_TIMEOUT_KEY: Final = "addp-remote-timeout"


class SessionState(Enum):
    """Where a session is: waiting for the handshake, registered, or closed."""

    AWAITING_REGISTRATION = "awaiting-registration"
    REGISTERED = "registered"
    CLOSED = "closed"


class SessionInput(Enum):
    """What moves a session between :class:`SessionState` values (docs/tlib.md, "Session")."""

    #: server: a valid ``RequestRegisterClient`` accepted; client: ``EventServerInfo``
    #: answering it
    HANDSHAKE_ACCEPTED = "handshake-accepted"
    #: server: a first frame that is not a valid, acceptable ``RequestRegisterClient``
    #: (``EventError`` 43, 44, 45, 46 ...); client: ``EventError`` answering it
    HANDSHAKE_REFUSED = "handshake-refused"
    #: a frame over the maximum size: the stream cannot be resynchronised (47)
    FRAME_TOO_LARGE = "frame-too-large"
    #: server: no ``RequestRegisterClient`` within the registration timeout
    REGISTRATION_TIMEOUT = "registration-timeout"
    #: nothing arrived for ``addp-timeout + addp-remote-timeout`` seconds (ADDP)
    ADDP_TIMEOUT = "addp-timeout"
    #: the transport closed under the session
    CONNECTION_LOST = "connection-lost"
    #: the owner closed the session
    CLOSE = "close"


_AWAITING: Final = SessionState.AWAITING_REGISTRATION
_REGISTERED: Final = SessionState.REGISTERED
_CLOSED: Final = SessionState.CLOSED

#: The session's transitions, both roles: (state, input) -> next state. ``CLOSED``
#: is final: a closed session ignores bytes, timers and a second close, so no input
#: is applied to it, and an input missing here raises :class:`SessionError`.
TRANSITIONS: Final[Mapping[tuple[SessionState, SessionInput], SessionState]] = {
    (_AWAITING, SessionInput.HANDSHAKE_ACCEPTED): _REGISTERED,
    (_AWAITING, SessionInput.HANDSHAKE_REFUSED): _CLOSED,
    (_AWAITING, SessionInput.FRAME_TOO_LARGE): _CLOSED,
    (_AWAITING, SessionInput.REGISTRATION_TIMEOUT): _CLOSED,
    (_AWAITING, SessionInput.ADDP_TIMEOUT): _CLOSED,
    (_AWAITING, SessionInput.CONNECTION_LOST): _CLOSED,
    (_AWAITING, SessionInput.CLOSE): _CLOSED,
    (_REGISTERED, SessionInput.FRAME_TOO_LARGE): _CLOSED,
    (_REGISTERED, SessionInput.ADDP_TIMEOUT): _CLOSED,
    (_REGISTERED, SessionInput.CONNECTION_LOST): _CLOSED,
    (_REGISTERED, SessionInput.CLOSE): _CLOSED,
}


def _reference_id(message: Mapping[str, Any]) -> int | None:
    value = message.get("AttributeReferenceID")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UINT32:
        return value
    return None


def _name_of(message: Mapping[str, Any]) -> str | None:
    name = message.get("message")
    return name[:64] if isinstance(name, str) else None


class _Session:
    """What both roles share: framing, output buffer, event queue, ADDP clock."""

    def __init__(self, *, now: float, max_frame_size: int) -> None:
        self._decoder = FrameDecoder(max_frame_size)
        self.max_frame_size = max_frame_size
        self._out = bytearray()
        self._events: deque[SessionEvent] = deque()
        self._state = SessionState.AWAITING_REGISTRATION
        self._last_received = now
        self._last_sent = now
        self.frames_received = 0
        self.frames_sent = 0

    @property
    def state(self) -> SessionState:
        """Where the session is; only :meth:`apply` moves it (:data:`TRANSITIONS`)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is SessionState.CLOSED

    def apply(self, trigger: SessionInput) -> SessionState:
        """Move the session by one input through :data:`TRANSITIONS`; the new state.

        Raises :class:`SessionError` (the session is left as it was) when the
        table has no transition for ``trigger`` in the current state.
        """
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise SessionError(
                f"Session {self._state.value}: {trigger.value} is not allowed"
            ) from None
        return self._state

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport (the buffer is emptied)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> SessionEvent | None:
        """The next session event, or ``None``."""
        return self._events.popleft() if self._events else None

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the transport; decoded frames become session events."""
        if self.closed or not data:
            return
        self._last_received = now
        self._decoder.feed(data)
        while not self.closed:
            try:
                frame = self._decoder.next_frame()
            except FrameTooLarge as exc:
                self._on_frame_too_large(exc, now)
                return
            except MalformedFrame as exc:
                self.frames_received += 1
                self._on_malformed(exc, now)
                continue
            if frame is None:
                return
            self.frames_received += 1
            self._on_frame(frame, now)

    def connection_lost(self, now: float) -> None:
        """The transport closed under the session."""
        if not self.closed:
            self.apply(SessionInput.CONNECTION_LOST)
            self._events.append(PeerLost("connection-closed"))

    def close(self, now: float) -> None:
        """Close locally; pending output is still returned by :meth:`data_to_send`."""
        if not self.closed:
            self.apply(SessionInput.CLOSE)

    def _write(self, message: TMap, now: float) -> None:
        self._out += encode_frame(message, max_frame_size=self.max_frame_size)
        self._last_sent = now
        self.frames_sent += 1

    def _lost_deadline(self) -> float | None:
        timeout, remote = self._addp()
        if timeout is None or remote is None:
            return None
        return self._last_received + timeout + remote

    def _addp(self) -> tuple[float | None, float | None]:
        raise NotImplementedError

    def _on_frame(self, frame: TMap, now: float) -> None:
        raise NotImplementedError

    def _on_malformed(self, exc: MalformedFrame, now: float) -> None:
        raise NotImplementedError

    def _on_frame_too_large(self, exc: FrameTooLarge, now: float) -> None:
        raise NotImplementedError


class ServerSession(_Session):
    """The server end of one T-Library connection (TCport, SmartProxy port ...).

    Handles the handshake, ``RequestKeepAlive`` and ``RequestQueryServer``
    itself; every other valid request is a :class:`RequestReceived` for the
    daemon, which answers with :meth:`answer` / :meth:`answer_error` and sends
    unsolicited events with :meth:`send_event`.

    ``accepted_client_types`` restricts the port (the Smart Proxy port takes
    ``{"legacy"}`` only). ``addp_timeout`` / ``addp_remote_timeout`` apply
    when a client does not announce its own values; ``None`` disables peer
    loss detection for such clients.
    """

    def __init__(
        self,
        *,
        application_name: str,
        server_version: str,
        now: float,
        protocol_version: int = PROTOCOL_VERSION,
        accepted_client_types: frozenset[str] = CLIENT_TYPES,
        addp_timeout: float | None = None,
        addp_remote_timeout: float | None = None,
        registration_timeout: float | None = DEFAULT_REGISTRATION_TIMEOUT,
        max_frame_size: int = MAX_FRAME_SIZE,
        time_offset: float = 0.0,
    ) -> None:
        super().__init__(now=now, max_frame_size=max_frame_size)
        self.application_name = application_name
        self.server_version = server_version
        self.protocol_version = protocol_version
        self.accepted_client_types = accepted_client_types
        self.addp_timeout = addp_timeout
        self.addp_remote_timeout = addp_remote_timeout
        self.time_offset = time_offset
        self._registration_deadline = (
            now + registration_timeout if registration_timeout is not None else None
        )
        self._sequence = 0
        #: set by the handshake
        self.client_application: str | None = None
        self.client_type: str | None = None
        self.negotiated_version: int | None = None
        #: ``AttributeExtensions`` of the client's RequestRegisterClient
        self.client_extensions: dict[str, Any] = {}

    @property
    def last_sequence(self) -> int:
        """``AttributeEventSequenceNumber`` of the last event sent (0 before any)."""
        return self._sequence

    def set_next_sequence(self, number: int) -> None:
        """Stamp the next event ``number`` when that is above the last one sent:
        for a port that numbers events per client application across
        reconnections. Numbers never go backwards on a connection."""
        if number - 1 > self._sequence:
            self._sequence = number - 1

    # -- API for the daemon ---------------------------------------------------

    def send_event(
        self, name: str, now: float, attributes: Mapping[str, Any] | None = None, /, **attrs: Any
    ) -> int:
        """Validate, stamp (sequence number, time) and queue one event.

        Returns its ``AttributeEventSequenceNumber``. Raises
        :class:`ValidationError` / :class:`FrameTooLarge` for an event the
        catalogue refuses (nothing is sent) and :class:`SessionError` when the
        session is closed.
        """
        if self.closed:
            raise SessionError(f"Session closed: cannot send {name}")
        message: TMap = {"message": name}
        if attributes:
            message.update(attributes)
        message.update(attrs)
        return self._send_event(message, now)

    def send_trusted_event(self, name: str, now: float, attributes: Mapping[str, Any]) -> int:
        """Stamp and queue an event the daemon built itself, without validating it.

        For hot paths (call events to every monitoring client) whose attributes
        come from the daemon's own state, not from a peer: the catalogue check
        of :meth:`send_event` is skipped. Raises :class:`FrameTooLarge` and
        :class:`SessionError` like :meth:`send_event`.
        """
        if self.closed:
            raise SessionError(f"Session closed: cannot send {name}")
        message: TMap = {"message": name}
        message.update(attributes)
        return self._send_event(message, now, trusted=True)

    def answer(
        self,
        request: RequestReceived,
        name: str,
        now: float,
        attributes: Mapping[str, Any] | None = None,
        /,
        **attrs: Any,
    ) -> int:
        """Send the event answering ``request`` (same ``AttributeReferenceID``)."""
        merged = dict(attributes or {})
        merged.update(attrs)
        merged["AttributeReferenceID"] = request.reference_id
        return self.send_event(name, now, merged)

    def answer_error(
        self,
        request: RequestReceived,
        code: ErrorCode,
        now: float,
        text: str | None = None,
        /,
        **attrs: Any,
    ) -> int:
        """Answer ``request`` with ``EventError`` (code, text defaulting to the table)."""
        return self.answer(
            request,
            "EventError",
            now,
            {
                "AttributeErrorCode": int(code),
                "AttributeErrorMessage": text if text is not None else ERROR_TEXT[code],
            },
            **attrs,
        )

    def handle_timer(self, now: float) -> None:
        """Registration deadline and ADDP peer-loss rule."""
        if self.closed:
            return
        if (
            self.state is SessionState.AWAITING_REGISTRATION
            and self._registration_deadline is not None
            and now >= self._registration_deadline
        ):
            self.apply(SessionInput.REGISTRATION_TIMEOUT)
            self._events.append(PeerLost("registration-timeout"))
            return
        deadline = self._lost_deadline()
        if deadline is not None and now >= deadline:
            self.apply(SessionInput.ADDP_TIMEOUT)
            self._events.append(PeerLost("addp-timeout"))

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next, or ``None``."""
        if self.closed:
            return None
        deadlines = [self._lost_deadline()]
        if self.state is SessionState.AWAITING_REGISTRATION:
            deadlines.append(self._registration_deadline)
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    # -- internals ------------------------------------------------------------

    def _addp(self) -> tuple[float | None, float | None]:
        return self.addp_timeout, self.addp_remote_timeout

    def _send_event(self, message: TMap, now: float, *, trusted: bool = False) -> int:
        sequence = self._sequence + 1
        stamp = now + self.time_offset
        seconds = int(stamp)
        message["AttributeEventSequenceNumber"] = sequence
        message["AttributeTimeinSecs"] = seconds
        message["AttributeTimeinuSecs"] = min(int((stamp - seconds) * 1_000_000), 999_999)
        if not trusted:
            validate(message, kind="event")
        self._write(message, now)
        self._sequence = sequence
        return sequence

    def _error(self, reference_id: int | None, code: ErrorCode, text: str, now: float) -> None:
        message: TMap = {
            "message": "EventError",
            "AttributeErrorCode": int(code),
            "AttributeErrorMessage": text,
        }
        if reference_id is not None:
            message["AttributeReferenceID"] = reference_id
        self._send_event(message, now)

    def _reject(self, frame: TMap | None, exc: TLibError, now: float) -> None:
        name = _name_of(frame) if frame is not None else None
        ref = _reference_id(frame) if frame is not None else None
        self._error(ref, exc.code, exc.text, now)
        self._events.append(RequestRejected(name, ref, exc.code, exc.text))

    def _fail(
        self, frame: TMap | None, exc: TLibError, trigger: SessionInput, now: float
    ) -> None:
        """Refuse and close (handshake errors, oversized frames)."""
        self._reject(frame, exc, now)
        self.apply(trigger)
        self._events.append(SessionClosed(exc.code, exc.text))

    def _on_frame_too_large(self, exc: FrameTooLarge, now: float) -> None:
        self._fail(None, exc, SessionInput.FRAME_TOO_LARGE, now)

    def _on_malformed(self, exc: MalformedFrame, now: float) -> None:
        if self.state is SessionState.AWAITING_REGISTRATION:
            self._fail(None, exc, SessionInput.HANDSHAKE_REFUSED, now)
        else:
            self._reject(None, exc, now)

    def _on_frame(self, frame: TMap, now: float) -> None:
        if self.state is SessionState.AWAITING_REGISTRATION:
            self._on_handshake(frame, now)
            return
        try:
            validate(frame, kind="request")
        except ValidationError as exc:
            self._reject(frame, exc, now)
            return
        name: str = frame["message"]
        reference_id: int = frame["AttributeReferenceID"]
        if name == "RequestKeepAlive":
            self._send_event(
                {"message": "EventKeepAlive", "AttributeReferenceID": reference_id}, now
            )
        elif name == "RequestQueryServer":
            self._send_server_info(reference_id, now)
        elif name == "RequestRegisterClient":
            self._reject(frame, TLibError(code=ErrorCode.ALREADY_REGISTERED), now)
        else:
            self._events.append(RequestReceived(name, reference_id, frame))

    def _on_handshake(self, frame: TMap, now: float) -> None:
        name = _name_of(frame)
        if name != "RequestRegisterClient":
            self._fail(
                frame,
                TLibError(
                    f"Client not registered: {name} before RequestRegisterClient",
                    code=ErrorCode.CLIENT_NOT_REGISTERED,
                ),
                SessionInput.HANDSHAKE_REFUSED,
                now,
            )
            return
        try:
            validate(frame, kind="request")
            client_type: str = frame["AttributeClientType"]
            if client_type not in self.accepted_client_types:
                raise TLibError(
                    f"Client type not accepted on this port: {client_type}",
                    code=ErrorCode.CLIENT_TYPE_NOT_ACCEPTED,
                )
            version: int = frame["AttributeProtocolVersion"]
            if version < MIN_PROTOCOL_VERSION:
                raise TLibError(
                    f"Unsupported protocol version: {version}, oldest supported "
                    f"{MIN_PROTOCOL_VERSION}",
                    code=ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
                )
            timeout, remote = _announced_addp(frame.get("AttributeExtensions") or {})
        except TLibError as exc:
            self._fail(frame, exc, SessionInput.HANDSHAKE_REFUSED, now)
            return
        if timeout is not None and remote is not None:
            self.addp_timeout, self.addp_remote_timeout = timeout, remote
        self.client_application = frame["AttributeApplicationName"]
        self.client_extensions = dict(frame.get("AttributeExtensions") or {})
        self.client_type = client_type
        self.negotiated_version = min(version, self.protocol_version)
        self.apply(SessionInput.HANDSHAKE_ACCEPTED)
        self._send_server_info(frame["AttributeReferenceID"], now)
        self._events.append(
            ClientRegistered(
                self.client_application or "",
                client_type,
                self.negotiated_version,
                self.addp_timeout,
                self.addp_remote_timeout,
            )
        )

    def _send_server_info(self, reference_id: int, now: float) -> None:
        self._send_event(
            {
                "message": "EventServerInfo",
                "AttributeReferenceID": reference_id,
                "AttributeApplicationName": self.application_name,
                "AttributeServerVersion": self.server_version,
                "AttributeProtocolVersion": self.negotiated_version or self.protocol_version,
            },
            now,
        )


def _announced_addp(extensions: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """ADDP values a client announces in RequestRegisterClient's extensions."""
    values: list[float | None] = []
    for key in (ADDP_TIMEOUT_KEY, ADDP_REMOTE_TIMEOUT_KEY):
        value = extensions.get(key)
        if value is None:
            values.append(None)
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value <= MAX_ADDP_SECONDS
        ):
            raise ValidationError(
                f"Invalid attribute: AttributeExtensions {key} must be a number of seconds "
                f"in (0, {MAX_ADDP_SECONDS:g}]",
                attribute="AttributeExtensions",
            )
        values.append(float(value))
    if (values[0] is None) != (values[1] is None):
        raise ValidationError(
            f"Invalid attribute: AttributeExtensions needs both {ADDP_TIMEOUT_KEY} and "
            f"{ADDP_REMOTE_TIMEOUT_KEY}",
            attribute="AttributeExtensions",
        )
    return values[0], values[1]


class ClientSession(_Session):
    """The client end of one T-Library connection.

    Creating it queues ``RequestRegisterClient``; :class:`ServerInfoReceived`
    reports the completed handshake and :class:`HandshakeFailed` a refusal.
    Requests may be queued before the handshake completes (the server takes
    them in order). ``addp_timeout=None`` disables keep-alives and peer-loss
    detection.
    """

    def __init__(
        self,
        *,
        application_name: str,
        now: float,
        client_type: str = "legacy",
        protocol_version: int = PROTOCOL_VERSION,
        addp_timeout: float | None = DEFAULT_ADDP_TIMEOUT,
        addp_remote_timeout: float = DEFAULT_ADDP_REMOTE_TIMEOUT,
        extensions: Mapping[str, Any] | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        super().__init__(now=now, max_frame_size=max_frame_size)
        if client_type not in CLIENT_TYPES:
            raise ValueError(f"client_type must be one of {sorted(CLIENT_TYPES)}")
        if addp_timeout is not None and not (
            0 < addp_timeout <= MAX_ADDP_SECONDS and 0 < addp_remote_timeout <= MAX_ADDP_SECONDS
        ):
            raise ValueError("ADDP timeouts must be in (0, 3600] seconds")
        self.application_name = application_name
        self.client_type = client_type
        self.addp_timeout = addp_timeout
        self.addp_remote_timeout = addp_remote_timeout
        self._next_reference = 0
        self._last_sequence = 0
        self.server_info: TMap | None = None
        ext: dict[str, Any] = dict(extensions or {})
        if addp_timeout is not None:
            ext[ADDP_TIMEOUT_KEY] = float(addp_timeout)
            ext[ADDP_REMOTE_TIMEOUT_KEY] = float(addp_remote_timeout)
        attrs: dict[str, Any] = {
            "AttributeApplicationName": application_name,
            "AttributeClientType": client_type,
            "AttributeProtocolVersion": protocol_version,
        }
        if ext:
            attrs["AttributeExtensions"] = ext
        self.registration_reference_id = self._request("RequestRegisterClient", attrs, now)

    def next_reference_id(self) -> int:
        """Allocate the next ``AttributeReferenceID`` (1, 2, ... wrapping at 2**32-1)."""
        self._next_reference = self._next_reference % MAX_UINT32 + 1
        return self._next_reference

    def send_request(
        self, name: str, now: float, attributes: Mapping[str, Any] | None = None, /, **attrs: Any
    ) -> int:
        """Validate and queue one request; returns its ``AttributeReferenceID``.

        A caller-supplied ``AttributeReferenceID`` is kept; otherwise one is
        allocated. Raises :class:`ValidationError` for a request the catalogue
        refuses, :class:`FrameTooLarge` for one over the size limit, and
        :class:`SessionError` once closed.
        """
        merged = dict(attributes or {})
        merged.update(attrs)
        if name == "RequestRegisterClient":
            raise SessionError("RequestRegisterClient is sent by the session itself")
        return self._request(name, merged, now)

    def handle_timer(self, now: float) -> None:
        """ADDP: declare the server lost, or send a keep-alive when idle."""
        if self.closed or self.addp_timeout is None:
            return
        deadline = self._lost_deadline()
        if deadline is not None and now >= deadline:
            self.apply(SessionInput.ADDP_TIMEOUT)
            self._events.append(PeerLost("addp-timeout"))
            return
        if now >= self._last_sent + self.addp_timeout:
            self._request("RequestKeepAlive", {}, now)

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next, or ``None``."""
        if self.closed or self.addp_timeout is None:
            return None
        lost = self._lost_deadline()
        keepalive = self._last_sent + self.addp_timeout
        return keepalive if lost is None else min(lost, keepalive)

    # -- internals ------------------------------------------------------------

    def _addp(self) -> tuple[float | None, float | None]:
        if self.addp_timeout is None:
            return None, None
        return self.addp_timeout, self.addp_remote_timeout

    def _request(self, name: str, attrs: dict[str, Any], now: float) -> int:
        if self.closed:
            raise SessionError(f"Session closed: cannot send {name}")
        reference_id = attrs.get("AttributeReferenceID")
        if reference_id is None:
            reference_id = self.next_reference_id()
        message: TMap = {"message": name, **attrs, "AttributeReferenceID": reference_id}
        validate(message, kind="request")
        self._write(message, now)
        return int(reference_id)

    def _violation(self, code: ErrorCode, text: str) -> None:
        self._events.append(ProtocolViolation(code, text))

    def _on_frame_too_large(self, exc: FrameTooLarge, now: float) -> None:
        self.apply(SessionInput.FRAME_TOO_LARGE)
        self._events.append(SessionClosed(exc.code, exc.text))

    def _on_malformed(self, exc: MalformedFrame, now: float) -> None:
        self._violation(exc.code, exc.text)

    def _on_frame(self, frame: TMap, now: float) -> None:
        try:
            validate(frame, kind="event")
        except ValidationError as exc:
            self._violation(exc.code, exc.text)
            return
        name: str = frame["message"]
        sequence = frame.get("AttributeEventSequenceNumber")
        if sequence is None or sequence <= self._last_sequence:
            self._violation(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"Event sequence number {sequence} after {self._last_sequence} in {name}",
            )
        else:
            self._last_sequence = sequence
        reference_id = _reference_id(frame)
        if self.state is SessionState.AWAITING_REGISTRATION:
            self._on_handshake_answer(frame, name, reference_id)
            return
        if name == "EventKeepAlive":
            return  # ADDP answer: its arrival already refreshed the peer-loss clock
        self._events.append(EventReceived(name, reference_id, sequence, frame))

    def _on_handshake_answer(self, frame: TMap, name: str, reference_id: int | None) -> None:
        if reference_id != self.registration_reference_id or name not in (
            "EventServerInfo",
            "EventError",
        ):
            if name != "EventKeepAlive":
                self._violation(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"Unexpected message: {name} before the handshake completed",
                )
            return
        if name == "EventError":
            self.apply(SessionInput.HANDSHAKE_REFUSED)
            self._events.append(
                HandshakeFailed(frame["AttributeErrorCode"], frame["AttributeErrorMessage"])
            )
            return
        self.server_info = frame
        self.apply(SessionInput.HANDSHAKE_ACCEPTED)
        self._events.append(
            ServerInfoReceived(
                frame["AttributeApplicationName"],
                frame["AttributeServerVersion"],
                frame["AttributeProtocolVersion"],
                frame,
            )
        )
