"""RTM sessions, hub and site roles, sans-I/O (docs/rtm.md, "Session").

The owner feeds bytes with ``receive_data(data, now)``, writes
``data_to_send()``, reads ``next_event()`` and calls ``handle_timer(now)``
at ``next_timer()`` (the shape of :class:`daemons.runtime.driver.StreamDriver`).
Each session is in one :class:`SessionState`; :data:`TRANSITIONS` is the one
(state, :class:`SessionInput`) -> state table and ``apply`` the only place
that moves it.

Handshake: the site sends ``Hello`` (version, site id, client nonce); the hub
answers ``Challenge`` (nonce) or ``Refused`` (version mismatch); the site
sends ``Login`` (its proof, :mod:`protocols.rtm.auth`); the hub checks it
(``Refused auth-failed`` for an unknown site or a wrong password: the peer is
not told which) and reports :class:`SiteAuthenticated`; the owner then
answers ``welcome()`` or ``refuse()``. Open: ``Send``/``Accepted``/
``Rejected``/``Busy`` one way, ``Deliver``/``Ack`` the other; ``Ping`` when
nothing was sent for ``keepalive`` seconds; the peer is lost after three
silent intervals. A frame over the maximum size closes the session
(``Error frame-too-large``); any other bad frame is answered with ``Error``
and the session goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final

import msgpack

from protocols.rtm import auth
from protocols.rtm.errors import BadMessage, RtmCode
from protocols.rtm.events import (
    AcceptedReceived,
    AckReceived,
    BusyReceived,
    DeliveryReceived,
    HandshakeRefused,
    PeerLost,
    PongReceived,
    ProtocolViolation,
    RejectedReceived,
    SendInvalid,
    SendReceived,
    SessionClosed,
    SessionEvent,
    SiteAuthenticated,
    Welcomed,
)
from protocols.rtm.messages import (
    PROTOCOL_VERSION,
    Accepted,
    Ack,
    Busy,
    Challenge,
    Deliver,
    Error,
    Hello,
    Login,
    Ping,
    Pong,
    Refused,
    Rejected,
    RtmMessage,
    Send,
    Welcome,
    parse,
    to_map,
)
from protocols.tlib.errors import FrameTooLarge, MalformedFrame
from protocols.tlib.framing import MAX_FRAME_SIZE, FrameDecoder, encode_frame

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "MISSED_KEEPALIVES",
    "TRANSITIONS",
    "HubSession",
    "SessionInput",
    "SessionState",
    "SiteSession",
]

DEFAULT_KEEPALIVE: Final = 10.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
#: Silent keep-alive intervals after which the peer is lost.
MISSED_KEEPALIVES: Final = 3


class SessionState(Enum):
    AWAITING_HELLO = "awaiting-hello"  # hub: connection accepted
    AWAITING_CHALLENGE = "awaiting-challenge"  # site: Hello sent
    CHALLENGED = "challenged"  # hub: Challenge sent; site: Login sent
    AUTHENTICATED = "authenticated"  # hub: proof valid, owner to decide
    OPEN = "open"
    CLOSED = "closed"


class SessionInput(Enum):
    HELLO = "hello"  # hub: a valid Hello; site: Hello sent at start
    CHALLENGE = "challenge"  # site: Challenge received, Login sent
    PROOF_VALID = "proof-valid"  # hub
    WELCOME = "welcome"  # hub: owner welcomed; site: valid Welcome received
    REFUSE = "refuse"  # handshake refused (either side)
    FRAME_TOO_LARGE = "frame-too-large"
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    KEEPALIVE_TIMEOUT = "keepalive-timeout"
    CONNECTION_LOST = "connection-lost"
    CLOSE = "close"


_S = SessionState
_I = SessionInput

#: (state, input) -> next state, both roles. CLOSED is final: nothing is applied
#: to a closed session; a pair missing here is a bug (``RuntimeError``).
TRANSITIONS: Final[Mapping[tuple[SessionState, SessionInput], SessionState]] = {
    (_S.AWAITING_HELLO, _I.HELLO): _S.CHALLENGED,
    (_S.AWAITING_CHALLENGE, _I.CHALLENGE): _S.CHALLENGED,
    (_S.CHALLENGED, _I.PROOF_VALID): _S.AUTHENTICATED,
    (_S.AUTHENTICATED, _I.WELCOME): _S.OPEN,
    (_S.CHALLENGED, _I.WELCOME): _S.OPEN,  # site: Welcome answers its Login
    **{(state, _I.REFUSE): _S.CLOSED
       for state in (_S.AWAITING_HELLO, _S.AWAITING_CHALLENGE, _S.CHALLENGED,
                     _S.AUTHENTICATED)},
    **{(state, trigger): _S.CLOSED
       for state in (_S.AWAITING_HELLO, _S.AWAITING_CHALLENGE, _S.CHALLENGED,
                     _S.AUTHENTICATED, _S.OPEN)
       for trigger in (_I.FRAME_TOO_LARGE, _I.CONNECTION_LOST, _I.CLOSE)},
    **{(state, _I.HANDSHAKE_TIMEOUT): _S.CLOSED
       for state in (_S.AWAITING_HELLO, _S.AWAITING_CHALLENGE, _S.CHALLENGED,
                     _S.AUTHENTICATED)},
    (_S.OPEN, _I.KEEPALIVE_TIMEOUT): _S.CLOSED,
}


_ELEMENTS_KEY: Final = msgpack.packb("elements")


class _Session:
    """Framing, output buffer, events, keep-alive clock: what both roles share."""

    def __init__(self, state: SessionState, *, now: float, keepalive: float,
                 handshake_timeout: float, max_frame_size: int) -> None:
        self._state = state
        self._decoder = FrameDecoder(max_frame_size)
        self.max_frame_size = max_frame_size
        self._out = bytearray()
        self._events: deque[SessionEvent] = deque()
        self.keepalive = keepalive
        self._handshake_deadline = now + handshake_timeout
        self._last_received = now
        self._last_sent = now
        self.frames_received = 0
        self.frames_sent = 0
        self.close_reason = ""

    # -- state --------------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is SessionState.CLOSED

    @property
    def open(self) -> bool:
        return self._state is SessionState.OPEN

    def apply(self, trigger: SessionInput) -> SessionState:
        """Move by one input through :data:`TRANSITIONS`."""
        if self._state is SessionState.CLOSED:
            return self._state
        nxt = TRANSITIONS.get((self._state, trigger))
        if nxt is None:
            raise RuntimeError(f"no transition from {self._state.value} on {trigger.value}")
        self._state = nxt
        return nxt

    def _close(self, trigger: SessionInput, reason: str) -> None:
        if self.closed:
            return
        self.apply(trigger)
        self.close_reason = reason
        self._events.append(SessionClosed(reason))

    # -- owner's side -------------------------------------------------------------
    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def close(self, reason: str = "closed") -> None:
        self._close(_I.CLOSE, reason)

    def connection_lost(self) -> None:
        self._close(_I.CONNECTION_LOST, "connection-lost")

    def next_timer(self) -> float | None:
        if self.closed:
            return None
        if self._state is not SessionState.OPEN:
            return self._handshake_deadline
        return min(self._last_sent + self.keepalive,
                   self._last_received + MISSED_KEEPALIVES * self.keepalive)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._state is not SessionState.OPEN:
            if now >= self._handshake_deadline:
                self._handshake_timed_out()
            return
        if now >= self._last_received + MISSED_KEEPALIVES * self.keepalive:
            self._events.append(PeerLost())
            self._close(_I.KEEPALIVE_TIMEOUT, "keepalive-timeout")
            return
        if now >= self._last_sent + self.keepalive:
            self._send(Ping(t=now), now)

    def _handshake_timed_out(self) -> None:
        self._events.append(HandshakeRefused(None, RtmCode.HANDSHAKE_TIMEOUT.value,
                                             "no handshake in time"))
        self._close(_I.HANDSHAKE_TIMEOUT, "handshake-timeout")

    # -- bytes --------------------------------------------------------------------
    def _send(self, message: RtmMessage, now: float) -> None:
        self._send_map(to_map(message), now)

    def _send_map(self, frame: dict[str, Any], now: float) -> None:
        self._out += encode_frame(frame, max_frame_size=self.max_frame_size)
        self._last_sent = now
        self.frames_sent += 1

    def _error(self, code: RtmCode, reason: str, now: float) -> None:
        self._events.append(ProtocolViolation(code.value, reason))
        self._send(Error(code=code.value, reason=reason[:1024]), now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the transport; events and answers are queued."""
        if self.closed:
            return
        self._last_received = now
        self._decoder.feed(data)
        while not self.closed:
            try:
                frame = self._decoder.next_frame()
            except FrameTooLarge as exc:
                self._error(RtmCode.FRAME_TOO_LARGE, str(exc), now)
                self._close(_I.FRAME_TOO_LARGE, "frame-too-large")
                return
            except MalformedFrame as exc:
                self._error(RtmCode.MALFORMED_FRAME, str(exc), now)
                continue
            if frame is None:
                return
            self.frames_received += 1
            self._frame(frame, now)

    def _frame(self, frame: dict[str, Any], now: float) -> None:
        raise NotImplementedError

    def _pong(self, ping: Ping, now: float) -> None:
        self._send(Pong(t=ping.t), now)


class HubSession(_Session):
    """The hub's side of one site connection.

    ``passwords(site)`` gives a configured site's password (None: unknown site).
    """

    def __init__(self, *, hub: str, passwords: Callable[[int], str | None], now: float,
                 keepalive: float = DEFAULT_KEEPALIVE, window: int = 256,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_frame_size: int = MAX_FRAME_SIZE, nonce: bytes | None = None) -> None:
        super().__init__(SessionState.AWAITING_HELLO, now=now, keepalive=keepalive,
                         handshake_timeout=handshake_timeout, max_frame_size=max_frame_size)
        self.hub = hub
        self._passwords = passwords
        self.window = window
        self._nonce = nonce if nonce is not None else auth.new_nonce()
        self._cnonce = b""
        self.site: int | None = None
        self.mode = "site"
        self._raw: dict[str, Any] = {}

    # owner's answers to SiteAuthenticated
    def welcome(self, last_seq: int, now: float,
                status: Mapping[str, Any] | None = None) -> None:
        assert self.site is not None
        password = self._passwords(self.site) or ""
        self._send(Welcome(site=self.site, hub=self.hub,
                           proof=auth.hub_proof(password, self._nonce, self._cnonce, self.site),
                           last_seq=last_seq, keepalive=self.keepalive, window=self.window,
                           status=status), now)
        self.apply(_I.WELCOME)

    def refuse(self, code: RtmCode, reason: str, now: float) -> None:
        """Refuse the session (``Refused``) and close."""
        if self.closed:
            return
        self._send(Refused(code=code.value, reason=reason), now)
        self._events.append(HandshakeRefused(self.site, code.value, reason))
        self._close(_I.CLOSE if self._state is SessionState.OPEN else _I.REFUSE, code.value)

    # open session
    def accept(self, seq: int, now: float) -> None:
        self._send_map({"message": "Accepted", "seq": seq}, now)

    def reject(self, seq: int, code: RtmCode, reason: str, now: float) -> None:
        self._send(Rejected(seq=seq, code=code.value, reason=reason[:1024]), now)

    def busy(self, seq: int, retry_ms: int, now: float) -> None:
        self._send(Busy(seq=seq, retry_ms=retry_ms), now)

    def deliver(self, fields: dict[str, Any], elements: bytes, now: float) -> None:
        """Send one ``Deliver``: ``fields`` as :class:`Deliver` names them (at most
        14), ``elements`` the msgpack body of the element list as the hub stored it
        (spliced in, not decoded again)."""
        fields["message"] = "Deliver"
        head = msgpack.packb(fields, use_bin_type=True)
        body = bytes((head[0] + 1,)) + head[1:] + _ELEMENTS_KEY + elements
        if len(body) > self.max_frame_size:
            raise FrameTooLarge(len(body), self.max_frame_size)
        self._out += len(body).to_bytes(4, "big") + body
        self._last_sent = now
        self.frames_sent += 1

    def _frame(self, frame: dict[str, Any], now: float) -> None:
        self._raw = frame
        try:
            message = parse(frame)
        except BadMessage as exc:
            seq = frame.get("seq")
            if (self._state is SessionState.OPEN and frame.get("message") == "Send"
                    and isinstance(seq, int) and not isinstance(seq, bool) and seq > 0):
                self._events.append(SendInvalid(seq, exc.code.value, exc.text))
                return
            self._error(exc.code, exc.text, now)
            if self._state is not SessionState.OPEN:
                self._events.append(HandshakeRefused(self.site, exc.code.value, exc.text))
                self._close(_I.REFUSE, exc.code.value)
            return
        handler = _HUB_HANDLERS.get((self._state, type(message)))
        if handler is None:
            self._unexpected(message, now)
            return
        handler(self, message, now)

    def _unexpected(self, message: RtmMessage, now: float) -> None:
        reason = f"{message.NAME} not expected in state {self._state.value}"
        self._error(RtmCode.UNEXPECTED_MESSAGE, reason, now)
        if self._state is not SessionState.OPEN:
            self._events.append(HandshakeRefused(self.site, RtmCode.UNEXPECTED_MESSAGE.value,
                                                 reason))
            self._close(_I.REFUSE, RtmCode.UNEXPECTED_MESSAGE.value)

    def _refuse_handshake(self, code: RtmCode, reason: str, now: float) -> None:
        self._send(Refused(code=code.value, reason=reason), now)
        self._events.append(HandshakeRefused(self.site, code.value, reason))
        self._close(_I.REFUSE, code.value)

    def _hello(self, hello: Hello, now: float) -> None:
        if hello.version != PROTOCOL_VERSION:
            self._refuse_handshake(
                RtmCode.VERSION_MISMATCH,
                f"site speaks RTM/{hello.version}, this hub speaks RTM/{PROTOCOL_VERSION}", now)
            return
        self.site = hello.site
        self.mode = hello.mode
        self._cnonce = hello.cnonce
        self._send(Challenge(version=PROTOCOL_VERSION, nonce=self._nonce, hub=self.hub), now)
        self.apply(_I.HELLO)

    def _login(self, login: Login, now: float) -> None:
        assert self.site is not None
        password = self._passwords(self.site) if auth.valid_site_id(self.site) else None
        if password is None:
            self._events.append(HandshakeRefused(self.site, RtmCode.AUTH_FAILED.value,
                                                 "unknown site id"))
            self._send(Refused(code=RtmCode.AUTH_FAILED.value,
                               reason="site id or password not accepted"), now)
            self._close(_I.REFUSE, RtmCode.AUTH_FAILED.value)
            return
        expected = auth.site_proof(password, self._nonce, self._cnonce, self.site)
        if not auth.verify(expected, login.proof):
            self._events.append(HandshakeRefused(self.site, RtmCode.AUTH_FAILED.value,
                                                 "wrong password"))
            self._send(Refused(code=RtmCode.AUTH_FAILED.value,
                               reason="site id or password not accepted"), now)
            self._close(_I.REFUSE, RtmCode.AUTH_FAILED.value)
            return
        self.apply(_I.PROOF_VALID)
        self._events.append(SiteAuthenticated(self.site, self.mode))

    def _on_send(self, send: Send, now: float) -> None:
        # the element list as received, checked by parse(): packed again as it
        # came, not rebuilt from the decoded elements
        self._events.append(SendReceived(send, msgpack.packb(self._raw["elements"],
                                                             use_bin_type=True)))

    def _on_ack(self, ack: Ack, now: float) -> None:
        self._events.append(AckReceived(ack.id))

    def _on_pong(self, pong: Pong, now: float) -> None:
        self._events.append(PongReceived(max(0.0, now - pong.t)))

    def _on_error(self, error: Error, now: float) -> None:
        self._events.append(ProtocolViolation(error.code, f"peer: {error.reason}"))


_HubHandler = Callable[[HubSession, Any, float], None]
_HUB_HANDLERS: Final[dict[tuple[SessionState, type[RtmMessage]], _HubHandler]] = {
    (_S.AWAITING_HELLO, Hello): HubSession._hello,
    (_S.CHALLENGED, Login): HubSession._login,
    (_S.OPEN, Send): HubSession._on_send,
    (_S.OPEN, Ack): HubSession._on_ack,
    (_S.OPEN, Ping): HubSession._pong,
    (_S.OPEN, Pong): HubSession._on_pong,
    (_S.OPEN, Error): HubSession._on_error,
}


class SiteSession(_Session):
    """A site's side of its connection to the hub; sends ``Hello`` at once."""

    def __init__(self, *, site: int, password: str, now: float, mode: str = "site",
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_frame_size: int = MAX_FRAME_SIZE, version: int = PROTOCOL_VERSION,
                 cnonce: bytes | None = None) -> None:
        super().__init__(SessionState.AWAITING_CHALLENGE, now=now, keepalive=DEFAULT_KEEPALIVE,
                         handshake_timeout=handshake_timeout, max_frame_size=max_frame_size)
        if not auth.valid_site_id(site):
            raise ValueError(f"site id must be {auth.MIN_SITE_ID}-{auth.MAX_SITE_ID}, got {site}")
        self.site = site
        self._password = password
        self._cnonce = cnonce if cnonce is not None else auth.new_nonce(auth.CNONCE_SIZE)
        self._nonce = b""
        self.hub = ""
        self.welcome: Welcome | None = None
        self._send(Hello(version=version, site=site, cnonce=self._cnonce, mode=mode), now)

    def send(self, message: Send, now: float) -> None:
        self._send(message, now)

    def send_map(self, frame: dict[str, Any], now: float) -> None:
        """Send a prepared ``Send`` map (the outbox stores them so)."""
        self._send_map(frame, now)

    def ack(self, delivery_id: int, now: float) -> None:
        self._send(Ack(id=delivery_id), now)

    def _frame(self, frame: dict[str, Any], now: float) -> None:
        try:
            message = parse(frame)
        except BadMessage as exc:
            self._error(exc.code, exc.text, now)
            return
        handler = _SITE_HANDLERS.get((self._state, type(message)))
        if handler is None:
            self._error(RtmCode.UNEXPECTED_MESSAGE,
                        f"{message.NAME} not expected in state {self._state.value}", now)
            return
        handler(self, message, now)

    def _challenge(self, challenge: Challenge, now: float) -> None:
        self._nonce = challenge.nonce
        self.hub = challenge.hub
        self._send(Login(proof=auth.site_proof(self._password, self._nonce, self._cnonce,
                                               self.site)), now)
        self.apply(_I.CHALLENGE)

    def _welcome(self, welcome: Welcome, now: float) -> None:
        expected = auth.hub_proof(self._password, self._nonce, self._cnonce, self.site)
        if not auth.verify(expected, welcome.proof) or welcome.site != self.site:
            self._events.append(HandshakeRefused(self.site, RtmCode.AUTH_FAILED.value,
                                                 "the hub did not prove the password"))
            self._close(_I.REFUSE, RtmCode.AUTH_FAILED.value)
            return
        self.welcome = welcome
        if welcome.keepalive > 0:
            self.keepalive = float(welcome.keepalive)
        self.apply(_I.WELCOME)
        self._events.append(Welcomed(welcome))

    def _refused(self, refused: Refused, now: float) -> None:
        self._events.append(HandshakeRefused(self.site, refused.code, refused.reason))
        if self._state is SessionState.OPEN:
            self._close(_I.CLOSE, refused.code)
        else:
            self._close(_I.REFUSE, refused.code)

    def _accepted(self, accepted: Accepted, now: float) -> None:
        self._events.append(AcceptedReceived(accepted.seq))

    def _rejected(self, rejected: Rejected, now: float) -> None:
        self._events.append(RejectedReceived(rejected.seq, rejected.code, rejected.reason))

    def _busy(self, busy: Busy, now: float) -> None:
        self._events.append(BusyReceived(busy.seq, busy.retry_ms))

    def _deliver(self, deliver: Deliver, now: float) -> None:
        self._events.append(DeliveryReceived(deliver))

    def _on_pong(self, pong: Pong, now: float) -> None:
        self._events.append(PongReceived(max(0.0, now - pong.t)))

    def _on_error(self, error: Error, now: float) -> None:
        self._events.append(ProtocolViolation(error.code, f"hub: {error.reason}"))


_SiteHandler = Callable[[SiteSession, Any, float], None]
_SITE_HANDLERS: Final[dict[tuple[SessionState, type[RtmMessage]], _SiteHandler]] = {
    (_S.AWAITING_CHALLENGE, Challenge): SiteSession._challenge,
    (_S.AWAITING_CHALLENGE, Refused): SiteSession._refused,
    (_S.CHALLENGED, Welcome): SiteSession._welcome,
    (_S.CHALLENGED, Refused): SiteSession._refused,
    (_S.OPEN, Refused): SiteSession._refused,
    (_S.OPEN, Accepted): SiteSession._accepted,
    (_S.OPEN, Rejected): SiteSession._rejected,
    (_S.OPEN, Busy): SiteSession._busy,
    (_S.OPEN, Deliver): SiteSession._deliver,
    (_S.OPEN, Ping): SiteSession._pong,
    (_S.OPEN, Pong): SiteSession._on_pong,
    (_S.OPEN, Error): SiteSession._on_error,
    (_S.AWAITING_CHALLENGE, Error): SiteSession._on_error,
    (_S.CHALLENGED, Error): SiteSession._on_error,
}
