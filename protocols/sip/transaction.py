"""SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" states).

A sans-I/O transaction layer in the style of aioquic's ``QuicConnection``: the
glue feeds it messages with :meth:`TransactionLayer.receive`, asks it to start
client transactions with :meth:`TransactionLayer.send_request`, hands it the
TU's responses with :meth:`TransactionLayer.send_response`, calls
:meth:`TransactionLayer.handle_timer` when :meth:`TransactionLayer.next_timer`
is due, and drains :meth:`TransactionLayer.messages_to_send` (what to put on
the wire) and :meth:`TransactionLayer.next_event` (what the TU must know).
Time is always passed in as ``now`` (seconds, monotonic).

The four machines (INVITE client §17.1.1, non-INVITE client §17.1.2, INVITE
server §17.2.1, non-INVITE server §17.2.2) are explicit state tables
(:data:`TRANSITIONS`); each entry says which input is legal in which state and
where it leads. Inputs missing from a table are absorbed (network input, with
a counter) or refused with :class:`TransactionStateError` (TU input).

RFC 6026 is applied: a 2xx to INVITE moves both INVITE machines to
``ACCEPTED`` (timers L and M, 64*T1) instead of ``TERMINATED``, so retransmitted
INVITEs are absorbed rather than seen as new requests, and retransmitted 2xx
responses still reach the TU (which resends its ACK, §13.2.2.4).
"""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Mapping
from typing import ClassVar, Final, NamedTuple

from protocols.sip.errors import SipError
from protocols.sip.headers import Headers, Via
from protocols.sip.message import Request, Response, make_response, parse_message
from protocols.sip.rules import response_destination
from protocols.sip.timers import IdentityEnum, TimerName, TimerQueue, TimerSettings, is_reliable

__all__ = [
    "MAGIC_COOKIE",
    "TRANSITIONS",
    "AckFor2xx",
    "Address",
    "CancelReceived",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "Event",
    "Input",
    "NoSuchTransaction",
    "RequestReceived",
    "ResponseReceived",
    "Role",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "StrayResponse",
    "Transaction",
    "TransactionError",
    "TransactionKey",
    "TransactionKind",
    "TransactionLayer",
    "TransactionState",
    "TransactionStateError",
    "TransactionTerminated",
    "TransactionTimeout",
    "Transmit",
    "TransportFailed",
    "client_key",
    "make_ack",
    "make_branch",
    "make_cancel",
    "response_destination",
    "server_key",
]

#: RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with this cookie.
MAGIC_COOKIE: Final = "z9hG4bK"

Address = tuple[str, int]


# --------------------------------------------------------------------------- errors


class TransactionError(SipError):
    """A request or response cannot be handled by the transaction layer."""


class NoSuchTransaction(TransactionError):
    """No live transaction has the given key (it never existed or has terminated)."""


class TransactionStateError(TransactionError):
    """The TU asked for something the transaction's state does not allow (§17.2)."""


# --------------------------------------------------------------------------- keys


class Role(IdentityEnum):
    """Which side of the transaction we are."""

    CLIENT = "client"
    SERVER = "server"


_CLIENT: Final = Role.CLIENT
_SERVER: Final = Role.SERVER


class TransactionKey(NamedTuple):
    """Identifies a transaction (RFC 3261 §17.1.3 client, §17.2.3 server).

    Client keys are (branch, CSeq method). Server keys for RFC 3261 requests are
    (branch, sent-by, method) with ACK mapped to INVITE. Requests from RFC 2543
    elements (no magic cookie) use ``legacy`` = (From tag, Call-ID, CSeq number,
    top Via); the Request-URI and To tag are compared on top of the key.
    An immutable named tuple: it is hashed for every message, in C.
    """

    role: Role
    method: str
    branch: str
    sent_by: str = ""
    legacy: tuple[str, ...] = ()


_tuple_new = tuple.__new__


def _key(role: Role, method: str, branch: str, sent_by: str = "") -> TransactionKey:
    # tuple.__new__ directly: the named tuple's generated __new__ costs twice as much
    return _tuple_new(TransactionKey, (role, method, branch, sent_by, ()))


def client_key(message: Request | Response) -> TransactionKey:
    """The client transaction key of a request we send or a response we get (§17.1.3)."""
    branch = message.top_via.params.get("branch") or ""
    method = message.method if isinstance(message, Request) else message.cseq.method
    return _key(_CLIENT, method, branch)


def _sent_by(via: Via) -> str:
    port = via.port
    if port is None:
        port = 5061 if via.transport.upper() in ("TLS", "TLS-SCTP", "WSS") else 5060
    return f"{via.host.lower()}:{port}"


def server_key(message: Request | Response) -> TransactionKey:
    """The server transaction key of a request we get or a response we send (§17.2.3).

    ACK maps to INVITE, so an ACK finds the INVITE transaction it acknowledges.
    """
    via = message.top_via
    method = message.method if isinstance(message, Request) else message.cseq.method
    if method == "ACK":
        method = "INVITE"
    branch = via.params.get("branch")
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return _key(_SERVER, method, branch, _sent_by(via))
    return TransactionKey(
        _SERVER,
        method,
        "",
        "",
        (message.from_.tag or "", message.call_id, str(message.cseq.number), str(via)),
    )


def make_branch(rng: random.Random | None = None) -> str:
    """A new RFC 3261 branch: the magic cookie and 64 random bits (§8.1.1.7).

    ``rng`` makes branches reproducible in tests; the default takes 64 bits
    from the operating system's CSPRNG (what ``secrets.token_hex`` does,
    without its Python-level frame: this runs for every request sent).
    """
    if rng is None:
        return MAGIC_COOKIE + os.urandom(8).hex()
    return f"{MAGIC_COOKIE}{rng.getrandbits(64):016x}"


def _copy_header(target: Headers, source: Headers, name: str) -> None:
    value = source.get(name)
    if value is not None:
        target.add(name, value)


def make_ack(request: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, only its top
    Via, the To of the response (with its tag), CSeq method ACK, and the
    INVITE's Route headers.
    """
    headers = Headers()
    headers.add("Via", request.headers.get_all("Via")[0])
    _copy_header(headers, request.headers, "Max-Forwards")
    for route in request.headers.get_all("Route"):
        headers.add("Route", route)
    _copy_header(headers, request.headers, "From")
    _copy_header(headers, response.headers, "To")
    _copy_header(headers, request.headers, "Call-ID")
    headers.add("CSeq", f"{request.cseq.number} ACK")
    return Request("ACK", request.uri, headers=headers)


def make_cancel(request: Request) -> Request:
    """The CANCEL for a client INVITE (§9.1).

    Same Request-URI, Call-ID, To, From and CSeq number as the INVITE, a single
    Via equal to its top Via (same branch, so it reaches the same server
    transaction), CSeq method CANCEL and the INVITE's Route headers.
    """
    if request.method != "INVITE":
        raise TransactionError(f"only INVITE can be cancelled, not {request.method}")
    headers = Headers()
    headers.add("Via", request.headers.get_all("Via")[0])
    _copy_header(headers, request.headers, "Max-Forwards")
    for route in request.headers.get_all("Route"):
        headers.add("Route", route)
    _copy_header(headers, request.headers, "From")
    _copy_header(headers, request.headers, "To")
    _copy_header(headers, request.headers, "Call-ID")
    headers.add("CSeq", f"{request.cseq.number} CANCEL")
    return Request("CANCEL", request.uri, headers=headers)


# --------------------------------------------------------------------------- events


class Event:
    """Base class of everything :meth:`TransactionLayer.next_event` returns.

    Events are plain classes with their ``__init__`` written out, not
    dataclasses: compiled with mypyc, a dataclass's generated ``__init__``
    stays interpreted, and the layer makes several events per message.
    Treat them as read-only; two events are equal when their type and
    fields are.
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and \
            self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.FIELDS)
        return f"{type(self).__name__}({inner})"


class RequestReceived(Event):
    """A new request created a server transaction; the TU must answer it (§17.2)."""

    __slots__ = ('key', 'request', 'source', 'transport')
    FIELDS: ClassVar[tuple[str, ...]] = ('key', 'request', 'source', 'transport')

    key: TransactionKey
    request: Request
    source: Address
    transport: str

    def __init__(
        self, key: TransactionKey, request: Request, source: Address, transport: str
    ) -> None:
        self.key = key
        self.request = request
        self.source = source
        self.transport = transport


class CancelReceived(Event):
    """A CANCEL created a non-INVITE server transaction (§9.2).

    ``invite_key`` is the INVITE server transaction it matches, or ``None``
    (the TU then answers 481). The TU answers the CANCEL itself on ``key``.
    """

    __slots__ = ('invite_key', 'key', 'request', 'source', 'transport')
    FIELDS: ClassVar[tuple[str, ...]] = ('key', 'request', 'invite_key', 'source', 'transport')

    key: TransactionKey
    request: Request
    invite_key: TransactionKey | None
    source: Address
    transport: str

    def __init__(
        self,
        key: TransactionKey,
        request: Request,
        invite_key: TransactionKey | None,
        source: Address,
        transport: str,
    ) -> None:
        self.key = key
        self.request = request
        self.invite_key = invite_key
        self.source = source
        self.transport = transport


class AckFor2xx(Event):
    """An ACK that is not part of a non-2xx INVITE transaction (§17.2.3, §13.3.1.4).

    ``invite_key`` is the accepted INVITE server transaction it matched, if any.
    """

    __slots__ = ('invite_key', 'request', 'source', 'transport')
    FIELDS: ClassVar[tuple[str, ...]] = ('request', 'invite_key', 'source', 'transport')

    request: Request
    invite_key: TransactionKey | None
    source: Address
    transport: str

    def __init__(
        self, request: Request, invite_key: TransactionKey | None, source: Address, transport: str
    ) -> None:
        self.request = request
        self.invite_key = invite_key
        self.source = source
        self.transport = transport


class ResponseReceived(Event):
    """A response matched a client transaction and is passed to the TU (§17.1)."""

    __slots__ = ('key', 'response', 'source')
    FIELDS: ClassVar[tuple[str, ...]] = ('key', 'response', 'source')

    key: TransactionKey
    response: Response
    source: Address

    def __init__(self, key: TransactionKey, response: Response, source: Address) -> None:
        self.key = key
        self.response = response
        self.source = source


class StrayResponse(Event):
    """A response that matches no client transaction (§18.1.2: passed to the core)."""

    __slots__ = ('response', 'source', 'transport')
    FIELDS: ClassVar[tuple[str, ...]] = ('response', 'source', 'transport')

    response: Response
    source: Address
    transport: str

    def __init__(self, response: Response, source: Address, transport: str) -> None:
        self.response = response
        self.source = source
        self.transport = transport


class TransactionTimeout(Event):
    """Timer B or F (no final response) or H (no ACK) fired (§17.1.1.2, §17.2.1)."""

    __slots__ = ('key', 'timer')
    FIELDS: ClassVar[tuple[str, ...]] = ('key', 'timer')

    key: TransactionKey
    timer: TimerName

    def __init__(self, key: TransactionKey, timer: TimerName) -> None:
        self.key = key
        self.timer = timer


class TransportFailed(Event):
    """The transport reported a failure for this transaction (§17.1.4, §17.2.4)."""

    __slots__ = ('key',)
    FIELDS: ClassVar[tuple[str, ...]] = ('key',)

    key: TransactionKey

    def __init__(self, key: TransactionKey) -> None:
        self.key = key


class TransactionTerminated(Event):
    """The transaction reached ``TERMINATED`` and was removed."""

    __slots__ = ('key',)
    FIELDS: ClassVar[tuple[str, ...]] = ('key',)

    key: TransactionKey

    def __init__(self, key: TransactionKey) -> None:
        self.key = key


class Transmit(NamedTuple):
    """One message to put on the wire: ``data`` to ``destination`` over ``transport``.

    ``key`` is the transaction that sent it, ``None`` for stateless sends.
    """

    data: bytes
    destination: Address
    transport: str
    message: Request | Response
    key: TransactionKey | None


# --------------------------------------------------------------------------- state tables


class TransactionKind(IdentityEnum):
    """The four transaction state machines of RFC 3261 §17."""

    INVITE_CLIENT = "invite-client"
    NON_INVITE_CLIENT = "non-invite-client"
    INVITE_SERVER = "invite-server"
    NON_INVITE_SERVER = "non-invite-server"


class TransactionState(IdentityEnum):
    """States of Figures 5-8 of RFC 3261 and Figures 5-6 of RFC 6026."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(IdentityEnum):
    """Inputs of the machines besides timers (which are :class:`TimerName`)."""

    RECV_1XX = "receive 1xx"
    RECV_2XX = "receive 2xx"
    RECV_FINAL = "receive 300-699"
    RECV_REQUEST = "receive request retransmission"
    RECV_ACK = "receive ACK"
    SEND_1XX = "TU sends 1xx"
    SEND_2XX = "TU sends 2xx"
    SEND_FINAL = "TU sends 300-699"
    TRANSPORT_ERROR = "transport error"


_S = TransactionState
_I = Input
_T = TimerName

#: (state, input) -> next state, per machine. A missing entry means the input is
#: not valid in that state.
TRANSITIONS: Final[Mapping[TransactionKind, Mapping[tuple[TransactionState, Input | TimerName],
                                                    TransactionState]]] = {
    # §17.1.1, Figure 5 (RFC 6026 Figure 5 for ACCEPTED)
    TransactionKind.INVITE_CLIENT: {
        (_S.CALLING, _T.A): _S.CALLING,
        (_S.CALLING, _T.B): _S.TERMINATED,
        (_S.CALLING, _I.RECV_1XX): _S.PROCEEDING,
        (_S.PROCEEDING, _I.RECV_1XX): _S.PROCEEDING,
        (_S.CALLING, _I.RECV_2XX): _S.ACCEPTED,
        (_S.PROCEEDING, _I.RECV_2XX): _S.ACCEPTED,
        (_S.ACCEPTED, _I.RECV_2XX): _S.ACCEPTED,
        (_S.ACCEPTED, _T.M): _S.TERMINATED,
        (_S.CALLING, _I.RECV_FINAL): _S.COMPLETED,
        (_S.PROCEEDING, _I.RECV_FINAL): _S.COMPLETED,
        (_S.COMPLETED, _I.RECV_FINAL): _S.COMPLETED,
        (_S.COMPLETED, _T.D): _S.TERMINATED,
        (_S.CALLING, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.ACCEPTED, _I.TRANSPORT_ERROR): _S.TERMINATED,
    },
    # §17.1.2, Figure 6
    TransactionKind.NON_INVITE_CLIENT: {
        (_S.TRYING, _T.E): _S.TRYING,
        (_S.PROCEEDING, _T.E): _S.PROCEEDING,
        (_S.TRYING, _T.F): _S.TERMINATED,
        (_S.PROCEEDING, _T.F): _S.TERMINATED,
        (_S.TRYING, _I.RECV_1XX): _S.PROCEEDING,
        (_S.PROCEEDING, _I.RECV_1XX): _S.PROCEEDING,
        (_S.TRYING, _I.RECV_2XX): _S.COMPLETED,
        (_S.TRYING, _I.RECV_FINAL): _S.COMPLETED,
        (_S.PROCEEDING, _I.RECV_2XX): _S.COMPLETED,
        (_S.PROCEEDING, _I.RECV_FINAL): _S.COMPLETED,
        (_S.COMPLETED, _I.RECV_1XX): _S.COMPLETED,
        (_S.COMPLETED, _I.RECV_2XX): _S.COMPLETED,
        (_S.COMPLETED, _I.RECV_FINAL): _S.COMPLETED,
        (_S.COMPLETED, _T.K): _S.TERMINATED,
        (_S.TRYING, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _S.TERMINATED,
    },
    # §17.2.1, Figure 7 (RFC 6026 Figure 7 for ACCEPTED)
    TransactionKind.INVITE_SERVER: {
        (_S.PROCEEDING, _T.TRYING): _S.PROCEEDING,
        (_S.PROCEEDING, _I.RECV_REQUEST): _S.PROCEEDING,
        (_S.PROCEEDING, _I.SEND_1XX): _S.PROCEEDING,
        (_S.PROCEEDING, _I.SEND_2XX): _S.ACCEPTED,
        (_S.PROCEEDING, _I.SEND_FINAL): _S.COMPLETED,
        (_S.ACCEPTED, _I.SEND_2XX): _S.ACCEPTED,
        (_S.ACCEPTED, _I.RECV_REQUEST): _S.ACCEPTED,
        (_S.ACCEPTED, _I.RECV_ACK): _S.ACCEPTED,
        (_S.ACCEPTED, _T.L): _S.TERMINATED,
        (_S.COMPLETED, _I.RECV_REQUEST): _S.COMPLETED,
        (_S.COMPLETED, _T.G): _S.COMPLETED,
        (_S.COMPLETED, _T.H): _S.TERMINATED,
        (_S.COMPLETED, _I.RECV_ACK): _S.CONFIRMED,
        (_S.CONFIRMED, _I.RECV_ACK): _S.CONFIRMED,
        (_S.CONFIRMED, _I.RECV_REQUEST): _S.CONFIRMED,
        (_S.CONFIRMED, _T.I): _S.TERMINATED,
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.ACCEPTED, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.CONFIRMED, _I.TRANSPORT_ERROR): _S.TERMINATED,
    },
    # §17.2.2, Figure 8
    TransactionKind.NON_INVITE_SERVER: {
        (_S.TRYING, _I.RECV_REQUEST): _S.TRYING,
        (_S.TRYING, _I.SEND_1XX): _S.PROCEEDING,
        (_S.TRYING, _I.SEND_2XX): _S.COMPLETED,
        (_S.TRYING, _I.SEND_FINAL): _S.COMPLETED,
        (_S.PROCEEDING, _I.RECV_REQUEST): _S.PROCEEDING,
        (_S.PROCEEDING, _I.SEND_1XX): _S.PROCEEDING,
        (_S.PROCEEDING, _I.SEND_2XX): _S.COMPLETED,
        (_S.PROCEEDING, _I.SEND_FINAL): _S.COMPLETED,
        (_S.COMPLETED, _I.RECV_REQUEST): _S.COMPLETED,
        (_S.COMPLETED, _T.J): _S.TERMINATED,
        (_S.TRYING, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.PROCEEDING, _I.TRANSPORT_ERROR): _S.TERMINATED,
        (_S.COMPLETED, _I.TRANSPORT_ERROR): _S.TERMINATED,
    },
}

#: The state each machine starts in.
INITIAL_STATE: Final[Mapping[TransactionKind, TransactionState]] = {
    TransactionKind.INVITE_CLIENT: _S.CALLING,
    TransactionKind.NON_INVITE_CLIENT: _S.TRYING,
    TransactionKind.INVITE_SERVER: _S.PROCEEDING,
    TransactionKind.NON_INVITE_SERVER: _S.TRYING,
}



# Members used on every message, as module constants: compiled code reads a
# Final module constant directly instead of looking the member up on its enum.
_ACCEPTED: Final = TransactionState.ACCEPTED
_CALLING: Final = TransactionState.CALLING
_COMPLETED: Final = TransactionState.COMPLETED
_PROCEEDING: Final = TransactionState.PROCEEDING
_TERMINATED: Final = TransactionState.TERMINATED
_TRYING: Final = TransactionState.TRYING
_RECV_1XX: Final = Input.RECV_1XX
_RECV_2XX: Final = Input.RECV_2XX
_RECV_ACK: Final = Input.RECV_ACK
_RECV_FINAL: Final = Input.RECV_FINAL
_RECV_REQUEST: Final = Input.RECV_REQUEST
_SEND_1XX: Final = Input.SEND_1XX
_SEND_2XX: Final = Input.SEND_2XX
_SEND_FINAL: Final = Input.SEND_FINAL
_TRANSPORT_ERROR: Final = Input.TRANSPORT_ERROR
_TIMER_A: Final = TimerName.A
_TIMER_B: Final = TimerName.B
_TIMER_D: Final = TimerName.D
_TIMER_E: Final = TimerName.E
_TIMER_F: Final = TimerName.F
_TIMER_G: Final = TimerName.G
_TIMER_H: Final = TimerName.H
_TIMER_I: Final = TimerName.I
_TIMER_J: Final = TimerName.J
_TIMER_K: Final = TimerName.K
_TIMER_L: Final = TimerName.L
_TIMER_M: Final = TimerName.M
_TIMER_TRYING: Final = TimerName.TRYING
#: Timers that retransmit; every other timer ends a state (see Transaction).
_RETRANSMIT_TIMERS: Final = frozenset({TimerName.A, TimerName.E, TimerName.G, TimerName.TRYING})


def _received_input(status: int) -> Input:
    if status < 200:
        return _RECV_1XX
    if status < 300:
        return _RECV_2XX
    return _RECV_FINAL


def _send_input(status: int) -> Input:
    if status < 200:
        return _SEND_1XX
    if status < 300:
        return _SEND_2XX
    return _SEND_FINAL


# --------------------------------------------------------------------------- transactions


class Transaction:
    """State shared by the four machines; subclasses implement the actions.

    ``request`` is the request that created the transaction; it is ``None``
    once the transaction is Completed, Confirmed or Accepted, when only the
    serialised bytes are needed. ``last_response`` is the last response sent
    (server) and ``destination``/``transport`` where messages go.

    A finished transaction waiting out timer D, I, J or K holds only bytes,
    its key and its address: a UDP element keeps tens of thousands of them for
    64*T1, and every object they keep alive is rescanned by the garbage
    collector.
    """

    kind: ClassVar[TransactionKind]
    _table: ClassVar[Mapping[tuple[TransactionState, Input | TimerName], TransactionState]]

    __slots__ = (
        "_ack",
        "_interval",
        "_last_response",
        "_layer",
        "_request_data",
        "_response_data",
        "_retransmit_seq",
        "_retransmit_timer",
        "_timeout_seq",
        "_timeout_timer",
        "destination",
        "key",
        "legacy_match",
        "pending_cancel",
        "reliable",
        "request",
        "state",
        "transport",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        key: TransactionKey,
        request: Request,
        destination: Address,
        transport: str,
    ) -> None:
        self._layer = layer
        # At most two timers run at once: one that retransmits (A, E, G, 100
        # Trying) and one that ends a state (B, D, F, H, I, J, K, L, M). Each is
        # kept as its name and the sequence number of its timer queue entry
        # (0: none); two fields cost less than a dictionary per transaction.
        self._retransmit_timer: TimerName | None = None
        self._retransmit_seq = 0
        self._timeout_timer: TimerName | None = None
        self._timeout_seq = 0
        self._interval = 0.0
        self.key = key
        self.request: Request | None = request
        # RFC 2543 matching needs the Request-URI and To tag beyond the key (§17.2.3).
        self.legacy_match: tuple[str, str | None] | None = (
            (request.uri, request.to.tag) if key.legacy else None
        )
        self.destination = destination
        self.transport = transport
        self.reliable = is_reliable(transport)
        self.state = INITIAL_STATE[self.kind]
        self._request_data = b""
        self._response_data = b""
        self._last_response: Response | None = None
        self._ack = b""
        self.pending_cancel = False

    @property
    def last_response(self) -> Response | None:
        """The last response sent (server transactions), ``None`` before any.

        Once the transaction only absorbs retransmissions, the response is kept
        as bytes and parsed again when asked for.
        """
        response = self._last_response
        if response is None and self._response_data:
            parsed = parse_message(self._response_data)
            assert isinstance(parsed, Response)
            return parsed
        return response

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key.method} {self.state.value}>"

    @property
    def timers(self) -> frozenset[TimerName]:
        """Timers currently running."""
        return frozenset(
            t for t in (self._retransmit_timer, self._timeout_timer) if t is not None
        )

    def _request(self) -> Request:
        request = self.request
        if request is None:
            raise TransactionStateError(f"{self!r} no longer holds its request")
        return request

    def _release(self) -> None:
        # Once Completed, Confirmed or Accepted the request is not needed any more
        # (only bytes are retransmitted); a proxy holds tens of thousands of such
        # transactions for 64*T1, so the parsed request is let go.
        self.request = None

    def _next(self, what: Input | TimerName) -> TransactionState | None:
        return self._table.get((self.state, what))

    def _start(self, timer: TimerName, delay: float, now: float) -> None:
        self._layer._start_timer(self, timer, delay, now)

    def _stop(self, *timers: TimerName) -> None:
        for timer in timers:
            if timer is self._retransmit_timer:
                self._clear_timer(True)
            elif timer is self._timeout_timer:
                self._clear_timer(False)

    def _clear_timer(self, retransmits: bool) -> None:
        """Stop the retransmission (or the timeout) timer if it runs: its queue
        entry is left behind and skipped when it comes up (see TimerQueue)."""
        if retransmits:
            seq = self._retransmit_seq
            if seq:
                layer = self._layer
                del layer._timer_owners[seq]
                if seq == layer._earliest_seq:
                    layer._earliest_seq = -1
                self._retransmit_timer = None
                self._retransmit_seq = 0
        else:
            seq = self._timeout_seq
            if seq:
                layer = self._layer
                del layer._timer_owners[seq]
                if seq == layer._earliest_seq:
                    layer._earliest_seq = -1
                self._timeout_timer = None
                self._timeout_seq = 0

    def on_timer(self, timer: TimerName, now: float) -> None:
        """A timer of this transaction fired."""
        new = self._next(timer)
        if new is None:
            return
        self.state = new
        self._timer_action(timer, now)

    def _timer_action(self, timer: TimerName, now: float) -> None:
        raise NotImplementedError

    def on_transport_error(self) -> None:
        """§17.1.4 / §17.2.4: tell the TU and terminate."""
        if self._next(_TRANSPORT_ERROR) is None:
            return
        self._layer._emit(TransportFailed(self.key))
        self._layer._terminate(self)


class ClientTransaction(Transaction):
    """Common part of the two client machines: the request goes out at once,
    is retransmitted over unreliable transports from T1 on, and the
    transaction times out after 64*T1 (§17.1.1.2, §17.1.2.2)."""

    #: the retransmission timer (A or E) and the timeout timer (B or F)
    retransmit_timer: ClassVar[TimerName]
    timeout_timer: ClassVar[TimerName]
    __slots__ = ()

    def start(self, now: float) -> None:
        layer = self._layer
        if self._request_data:
            # the TU made the wire form itself (TransactionLayer.send_request_data)
            layer._transmit_data(self, self._request_data, self._request())
        else:
            self._request_data = layer._transmit(self, self._request())
        settings = layer.settings
        if not self.reliable:
            self._interval = settings.t1
            self._start(self.retransmit_timer, self._interval, now)
        self._start(self.timeout_timer, settings.timeout, now)

    def on_response(self, response: Response, source: Address, now: float) -> None:
        """A response matched this transaction (§17.1.3)."""
        raise NotImplementedError


class ClientInviteTransaction(ClientTransaction):
    """INVITE client transaction (RFC 3261 §17.1.1, RFC 6026 §8.4)."""

    kind = TransactionKind.INVITE_CLIENT
    _table = TRANSITIONS[TransactionKind.INVITE_CLIENT]
    retransmit_timer = TimerName.A
    timeout_timer = TimerName.B
    __slots__ = ()

    def on_response(self, response: Response, source: Address, now: float) -> None:
        what = _received_input(response.status)
        old = self.state
        new = self._next(what)
        if new is None:
            self._layer.counters["response_absorbed"] += 1
            return
        self.state = new
        layer = self._layer
        if what is _RECV_FINAL and old is _COMPLETED:
            # §17.1.1.2: a retransmitted final response is answered with the ACK again.
            if self._ack:
                ack = parse_message(self._ack)
                layer._transmit_data(self, self._ack, ack)
            layer.counters["response_absorbed"] += 1
            return
        self._stop(_TIMER_A, _TIMER_B)
        layer._events.append(ResponseReceived(self.key, response, source))
        if what is _RECV_1XX:
            if self.pending_cancel:
                self.pending_cancel = False
                layer._start_cancel(self, now)
            return
        if self.pending_cancel:
            # §9.1: a final response arrived before any provisional, nothing to cancel.
            self.pending_cancel = False
            layer._emit(TransactionTerminated(layer._cancel_key(self.key)))
        if what is _RECV_2XX:
            if old is not _ACCEPTED:
                self._release()
                self._request_data = b""
                self._start(_TIMER_M, layer.settings.timeout, now)
            return
        ack = make_ack(self._request(), response)
        # only the bytes are kept for retransmitted final responses
        self._ack = layer._transmit(self, ack)
        self._release()
        self._request_data = b""
        self._start(_TIMER_D, layer.settings.timer_d(self.reliable), now)

    def _timer_action(self, timer: TimerName, now: float) -> None:
        if timer is _TIMER_A:
            self._layer._transmit_data(self, self._request_data, self._request())
            self._layer.counters["retransmissions"] += 1
            self._interval *= 2
            self._start(_TIMER_A, self._interval, now)
            return
        if timer is _TIMER_B:
            self._layer._emit(TransactionTimeout(self.key, timer))
        self._layer._terminate(self)


class ClientNonInviteTransaction(ClientTransaction):
    """Non-INVITE client transaction (RFC 3261 §17.1.2)."""

    kind = TransactionKind.NON_INVITE_CLIENT
    _table = TRANSITIONS[TransactionKind.NON_INVITE_CLIENT]
    retransmit_timer = TimerName.E
    timeout_timer = TimerName.F
    __slots__ = ()

    def on_response(self, response: Response, source: Address, now: float) -> None:
        what = _received_input(response.status)
        old = self.state
        new = self._next(what)
        if new is None or old is _COMPLETED:
            # §17.1.2.2: retransmissions of the final response are absorbed in Completed.
            self._layer.counters["response_absorbed"] += 1
            return
        self.state = new
        layer = self._layer
        layer._events.append(ResponseReceived(self.key, response, source))
        if new is _COMPLETED:
            self.request = None
            self._request_data = b""
            self._stop(_TIMER_E, _TIMER_F)
            settings = layer.settings
            layer._start_timer(self, _TIMER_K, settings.timer_k(self.reliable), now)

    def _timer_action(self, timer: TimerName, now: float) -> None:
        layer = self._layer
        if timer is _TIMER_E:
            layer._transmit_data(self, self._request_data, self._request())
            layer.counters["retransmissions"] += 1
            t2 = layer.settings.t2
            # Trying doubles up to T2; Proceeding retransmits every T2 (§17.1.2.2).
            self._interval = min(2 * self._interval, t2) if self.state is _TRYING else t2
            self._start(_TIMER_E, self._interval, now)
            return
        if timer is _TIMER_F:
            layer._emit(TransactionTimeout(self.key, timer))
        layer._terminate(self)


class ServerTransaction(Transaction):
    """Common part of the two server machines: responses come from the TU."""

    __slots__ = ()

    def start(self, now: float) -> None:
        """Called once the request has been passed to the TU."""

    def _send(self, response: Response, data: bytes | None = None) -> None:
        self._last_response = response
        if data is None:
            self._response_data = self._layer._transmit(self, response)
        else:
            self._layer._transmit_data(self, data, response)
            self._response_data = data

    def _resend(self) -> None:
        if self._response_data:
            response = self.last_response
            assert response is not None
            self._layer._transmit_data(self, self._response_data, response)
            self._layer.counters["retransmissions"] += 1

    def on_request(self, request: Request, now: float) -> None:
        """A retransmission of the request that created the transaction arrived."""
        raise NotImplementedError

    def send_response(self, response: Response, now: float, data: bytes | None = None) -> None:
        """The TU passes a response down (§17.2.1, §17.2.2); ``data`` is its wire
        form when the TU made it (see :meth:`TransactionLayer.send_response`)."""
        raise NotImplementedError


class ServerInviteTransaction(ServerTransaction):
    """INVITE server transaction (RFC 3261 §17.2.1, RFC 6026 §8.5-8.7)."""

    kind = TransactionKind.INVITE_SERVER
    _table = TRANSITIONS[TransactionKind.INVITE_SERVER]
    __slots__ = ()

    def start(self, now: float) -> None:
        delay = self._layer.settings.trying_delay
        if delay is not None:
            self._start(_TIMER_TRYING, delay, now)

    def on_request(self, request: Request, now: float) -> None:
        new = self._next(_RECV_REQUEST)
        if new is None:
            return
        self.state = new
        if new is _PROCEEDING or new is _COMPLETED:
            # §17.2.1: resend the most recent provisional, or the final response.
            self._resend()
        else:
            self._layer.counters["request_absorbed"] += 1

    def on_ack(self, request: Request, source: Address, transport: str, now: float) -> None:
        """An ACK matched this transaction (§17.2.1, RFC 6026 §8.7)."""
        old = self.state
        new = self._next(_RECV_ACK)
        if new is None:
            self._layer.counters["ack_absorbed"] += 1
            return
        self.state = new
        if old is _ACCEPTED:
            self._layer._emit(AckFor2xx(request, self.key, source, transport))
        elif old is _COMPLETED:
            self._last_response = None
            self._stop(_TIMER_G, _TIMER_H)
            self._start(_TIMER_I, self._layer.settings.timer_i(self.reliable), now)
        else:
            self._layer.counters["ack_absorbed"] += 1

    def send_response(self, response: Response, now: float, data: bytes | None = None) -> None:
        what = _send_input(response.status)
        old = self.state
        new = self._next(what)
        if new is None:
            raise TransactionStateError(
                f"cannot send {response.status} in INVITE server state {old.value}"
            )
        self.state = new
        self._stop(_TIMER_TRYING)
        self._send(response, data)
        if new is not _PROCEEDING:
            self._release()
            if new is _ACCEPTED:
                self._last_response = None
        settings = self._layer.settings
        if what is _SEND_2XX and old is _PROCEEDING:
            self._start(_TIMER_L, settings.timeout, now)
        elif what is _SEND_FINAL:
            if not self.reliable:
                self._interval = settings.t1
                self._start(_TIMER_G, self._interval, now)
            self._start(_TIMER_H, settings.timeout, now)

    def _timer_action(self, timer: TimerName, now: float) -> None:
        layer = self._layer
        if timer is _TIMER_TRYING:
            if not self._response_data:
                self._send(make_response(self._request(), 100))
            return
        if timer is _TIMER_G:
            self._resend()
            self._interval = min(2 * self._interval, layer.settings.t2)
            self._start(_TIMER_G, self._interval, now)
            return
        if timer is _TIMER_H:
            layer._emit(TransactionTimeout(self.key, timer))
        layer._terminate(self)


class ServerNonInviteTransaction(ServerTransaction):
    """Non-INVITE server transaction (RFC 3261 §17.2.2)."""

    kind = TransactionKind.NON_INVITE_SERVER
    _table = TRANSITIONS[TransactionKind.NON_INVITE_SERVER]
    __slots__ = ()

    def on_request(self, request: Request, now: float) -> None:
        new = self._next(_RECV_REQUEST)
        if new is None:
            return
        self.state = new
        if new is _TRYING:
            # §17.2.2: retransmissions in Trying are discarded.
            self._layer.counters["request_absorbed"] += 1
        else:
            self._resend()

    def send_response(self, response: Response, now: float, data: bytes | None = None) -> None:
        what = _send_input(response.status)
        new = self._next(what)
        if new is None:
            # §17.2.2: further final responses in Completed are not sent.
            raise TransactionStateError(
                f"cannot send {response.status} in non-INVITE server state {self.state.value}"
            )
        self.state = new
        layer = self._layer
        if data is None:
            self._response_data = layer._transmit(self, response)
        else:
            layer._transmit_data(self, data, response)
            self._response_data = data
        if new is _COMPLETED:
            # Only the bytes are kept to answer retransmissions for 64*T1.
            self.request = None
            self._last_response = None
            layer._start_timer(self, _TIMER_J, layer.settings.timer_j(self.reliable), now)
        else:
            self._last_response = response

    def _timer_action(self, timer: TimerName, now: float) -> None:
        self._layer._terminate(self)


# --------------------------------------------------------------------------- layer


class TransactionLayer:
    """All transactions of one SIP element, driven by the glue (RFC 3261 §17).

    ``settings`` holds T1/T2/T4 and the 100 Trying delay. ``rng`` is used by
    :meth:`new_branch` (tests inject a seeded :class:`random.Random`).
    ``counters`` counts absorbed retransmissions and discarded input so that
    nothing is dropped without a trace.
    """

    def __init__(
        self, settings: TimerSettings | None = None, *, rng: random.Random | None = None
    ) -> None:
        self.settings = settings if settings is not None else TimerSettings()
        self.counters: collections.Counter[str] = collections.Counter()
        self._rng = rng
        self._transactions: dict[TransactionKey, Transaction] = {}
        self._events: collections.deque[Event] = collections.deque()
        self._outgoing: list[Transmit] = []
        # Timers: a queue of (deadline, sequence number) and the transaction owning
        # each running timer by sequence number. A stopped timer leaves its queue
        # entry behind (two numbers, which the garbage collector does not track)
        # and is skipped when it comes up: stopping is a dict deletion, and a
        # finished transaction is not kept alive by its stale entries.
        self._timer_queue = TimerQueue()
        self._timer_owners: dict[int, Transaction] = {}
        self._seq = 0
        # The earliest running timer, kept between calls of next_timer() (which
        # the glue makes after every message): its sequence number (-1: not
        # known, look in the queue; 0: no timer runs) and deadline.
        self._earliest_seq = 0
        self._earliest = 0.0

    # ---------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self._transactions)

    def __contains__(self, key: object) -> bool:
        return key in self._transactions

    def get(self, key: TransactionKey) -> Transaction | None:
        """The live transaction with this key, if any."""
        return self._transactions.get(key)

    def state(self, key: TransactionKey) -> TransactionState:
        """The state of a transaction; ``TERMINATED`` once it is gone."""
        txn = self._transactions.get(key)
        return _TERMINATED if txn is None else txn.state

    def new_branch(self) -> str:
        """A fresh branch for a Via we are about to add (§8.1.1.7)."""
        return make_branch(self._rng)

    def find_invite_for_cancel(self, cancel: Request) -> TransactionKey | None:
        """The INVITE server transaction a CANCEL refers to (§9.2, §17.2.3).

        Same matching rules as for any request, but with the method INVITE.
        """
        key = server_key(cancel)
        key = TransactionKey(key.role, "INVITE", key.branch, key.sent_by, key.legacy)
        txn = self._transactions.get(key)
        if txn is None or not self._legacy_match(txn, cancel):
            return None
        return key

    # ---------------------------------------------------------------- output

    def next_event(self) -> Event | None:
        """The next event for the TU, or ``None``."""
        events = self._events
        return events.popleft() if events else None

    def messages_to_send(self) -> list[Transmit]:
        """Everything queued for the wire since the last call, in order."""
        out = self._outgoing
        self._outgoing = []
        return out

    # ---------------------------------------------------------------- timers

    def next_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work to do, or ``None``."""
        seq = self._earliest_seq
        if seq < 0:
            first = self._timer_queue.first(self._timer_owners)
            if first is None:
                self._earliest_seq = 0
                return None
            self._earliest, self._earliest_seq = first
            return first[0]
        return None if seq == 0 else self._earliest

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        owners = self._timer_owners
        pop_due = self._timer_queue.pop_due
        self._earliest_seq = -1
        while (seq := pop_due(now, owners)) is not None:
            txn = owners[seq]
            retransmits = txn._retransmit_seq == seq
            timer = txn._retransmit_timer if retransmits else txn._timeout_timer
            assert timer is not None
            txn._clear_timer(retransmits)
            txn.on_timer(timer, now)
        self._earliest_seq = -1

    # ---------------------------------------------------------------- input

    def receive(
        self,
        message: Request | Response | bytes,
        source: Address,
        now: float,
        transport: str = "UDP",
    ) -> None:
        """A message arrived from ``source`` over ``transport`` (§17.1.3, §17.2.3).

        Bytes are parsed first; :class:`~protocols.sip.errors.ParseError` from the
        parser or from a missing Via/CSeq/Call-ID propagates and nothing changes.
        """
        if isinstance(message, bytes):
            message = parse_message(message)
        if isinstance(message, Response):
            self._receive_response(message, source, transport, now)
        else:
            self._receive_request(message, source, transport, now)

    def _receive_response(
        self, response: Response, source: Address, transport: str, now: float
    ) -> None:
        txn = self._transactions.get(client_key(response))
        if txn is None:
            self._events.append(StrayResponse(response, source, transport))
            return
        assert isinstance(txn, ClientTransaction)
        txn.on_response(response, source, now)

    def _receive_request(
        self, request: Request, source: Address, transport: str, now: float
    ) -> None:
        key = server_key(request)
        # Touch the headers the TU and the transaction rely on, so that a
        # malformed request fails here, before any state changes.
        request.call_id  # noqa: B018
        request.cseq  # noqa: B018
        method = request.method
        txn = self._transactions.get(key)
        if txn is not None and txn.legacy_match is not None and not self._legacy_match(
            txn, request
        ):
            txn = None
        if method == "ACK":
            if isinstance(txn, ServerInviteTransaction):
                txn.on_ack(request, source, transport, now)
            else:
                self._events.append(AckFor2xx(request, None, source, transport))
            return
        if txn is not None:
            assert isinstance(txn, ServerTransaction)
            txn.on_request(request, now)
            return
        if key in self._transactions:
            # An RFC 2543 key collision with a different Request-URI or To tag.
            raise TransactionError("request matches no transaction but its key is in use")
        destination = response_destination(request.top_via, source, transport)
        # each class named in its own call: compiled, a call through a variable
        # holding a class goes through the generic (interpreted) constructor
        new: ServerTransaction
        if method == "INVITE":
            new = ServerInviteTransaction(self, key, request, destination, transport)
        else:
            new = ServerNonInviteTransaction(self, key, request, destination, transport)
        self._transactions[key] = new
        if method == "CANCEL":
            invite = self.find_invite_for_cancel(request)
            self._events.append(CancelReceived(key, request, invite, source, transport))
        else:
            self._events.append(RequestReceived(key, request, source, transport))
        new.start(now)

    def _legacy_match(self, txn: Transaction, request: Request) -> bool:
        """RFC 2543 matching beyond the key: Request-URI and To tag (§17.2.3)."""
        match = txn.legacy_match
        if match is None:
            return True
        uri, request_tag = match
        if request.uri != uri:
            return False
        tag = request.to.tag
        if request.method == "ACK":
            sent = txn.last_response
            expected = sent.to.tag if sent is not None else request_tag
            return tag == expected
        return tag == request_tag

    # ---------------------------------------------------------------- TU commands

    def send_request(
        self,
        request: Request,
        destination: Address,
        now: float,
        *,
        transport: str | None = None,
    ) -> TransactionKey:
        """Start a client transaction for ``request`` (§17.1).

        The request must already carry its top Via with an RFC 3261 branch
        (see :meth:`new_branch`). ``transport`` defaults to the Via's.
        """
        method = request.method
        if method == "ACK":
            raise TransactionError("ACK is not sent in a client transaction; use send_stateless")
        via = request.top_via
        branch = via.params.get("branch")
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise TransactionError("the top Via of a request we send needs a z9hG4bK branch")
        key = _key(_CLIENT, method, branch)
        if key in self._transactions:
            raise TransactionError(f"a client transaction with branch {branch} exists")
        transport = via.transport if transport is None else transport
        txn: ClientTransaction
        if method == "INVITE":
            txn = ClientInviteTransaction(self, key, request, destination, transport)
        else:
            txn = ClientNonInviteTransaction(self, key, request, destination, transport)
        self._transactions[key] = txn
        txn.start(now)
        return key

    def send_response(
        self,
        response: Response,
        now: float,
        *,
        key: TransactionKey | None = None,
        data: bytes | None = None,
    ) -> TransactionKey:
        """Pass a TU response to the server transaction it answers (§17.2).

        The transaction is found from the response's top Via and CSeq (§17.2.3),
        or is ``key`` when the TU passes the one it got with the request (which
        saves parsing the Via again). Raises :class:`NoSuchTransaction` if the
        transaction is gone and :class:`TransactionStateError` if its state
        does not allow the response.

        ``data`` is the response's wire form when the TU already has it (a proxy
        that pops its Via from the received bytes, §16.7 step 3, see
        :mod:`protocols.sip.splice`); it is sent and retransmitted as given.
        ``response`` then only drives the machine and is what the transaction
        reports as its last response: it must have the status, To tag and CSeq
        of ``data``, and may still hold headers the TU removed on the bytes.
        """
        if key is None:
            key = server_key(response)
        txn = self._transactions.get(key)
        if not isinstance(txn, ServerTransaction):
            raise NoSuchTransaction(f"no server transaction for {response.status} response")
        txn.send_response(response, now, data)
        return key

    def send_request_data(
        self,
        request: Request,
        data: bytes,
        branch: str,
        destination: Address,
        now: float,
        *,
        transport: str = "UDP",
    ) -> TransactionKey:
        """Start a non-INVITE client transaction whose wire form the TU made (§17.1.2).

        ``data`` is ``request`` as it goes out, with a top Via carrying
        ``branch`` that ``request`` itself need not hold: a proxy adds its Via
        and its §16.6 edits to the received bytes instead of serialising an
        edited copy (see :mod:`protocols.sip.splice`). The transaction sends
        and retransmits ``data`` and behaves as one started by
        :meth:`send_request`. INVITE is refused: its CANCEL and ACK are built
        from the request object, which must then hold the Via.
        """
        method = request.method
        if method == "INVITE" or method == "ACK":
            raise TransactionError(f"{method} needs send_request (its Via on the request)")
        if not branch.startswith(MAGIC_COOKIE):
            raise TransactionError("the top Via of a request we send needs a z9hG4bK branch")
        key = _key(_CLIENT, method, branch)
        if key in self._transactions:
            raise TransactionError(f"a client transaction with branch {branch} exists")
        txn = ClientNonInviteTransaction(self, key, request, destination, transport)
        txn._request_data = data
        self._transactions[key] = txn
        txn.start(now)
        return key

    def send_stateless(
        self, message: Request | Response, destination: Address, transport: str = "UDP"
    ) -> None:
        """Queue a message outside any transaction (2xx ACK §13.2.2.4, stateless proxy)."""
        data = message.serialize()
        self._outgoing.append(
            _tuple_new(Transmit, (data, destination, transport, message, None))
        )

    def send_cancel(self, invite_key: TransactionKey, now: float) -> TransactionKey | None:
        """Cancel a pending client INVITE (§9.1); returns the CANCEL's key.

        The CANCEL goes out at once if a provisional response has arrived, and
        otherwise when the first one does. ``None`` when there is nothing left
        to cancel (a final response has arrived). If the INVITE ends without a
        provisional response, :class:`TransactionTerminated` is reported for the
        returned key without a CANCEL being sent.
        """
        txn = self._transactions.get(invite_key)
        if not isinstance(txn, ClientInviteTransaction):
            return None
        cancel_key = self._cancel_key(invite_key)
        if txn.state is _CALLING:
            txn.pending_cancel = True
        elif txn.state is _PROCEEDING:
            if cancel_key not in self._transactions:
                self._start_cancel(txn, now)
        else:
            return None
        return cancel_key

    def transport_error(self, key: TransactionKey, now: float) -> None:
        """The glue could not deliver a message of this transaction (§17.1.4, §17.2.4)."""
        txn = self._transactions.get(key)
        if txn is not None:
            txn.on_transport_error()

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _cancel_key(invite_key: TransactionKey) -> TransactionKey:
        return _key(_CLIENT, "CANCEL", invite_key.branch)

    def _start_cancel(self, invite: ClientInviteTransaction, now: float) -> None:
        cancel = make_cancel(invite._request())
        key = self._cancel_key(invite.key)
        if key in self._transactions:
            return
        txn = ClientNonInviteTransaction(self, key, cancel, invite.destination, invite.transport)
        self._transactions[key] = txn
        txn.start(now)

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _transmit(self, txn: Transaction, message: Request | Response) -> bytes:
        data = message.serialize()
        self._outgoing.append(
            _tuple_new(Transmit, (data, txn.destination, txn.transport, message, txn.key))
        )
        return data

    def _transmit_data(self, txn: Transaction, data: bytes, message: Request | Response) -> None:
        self._outgoing.append(
            _tuple_new(Transmit, (data, txn.destination, txn.transport, message, txn.key))
        )

    def _start_timer(self, txn: Transaction, timer: TimerName, delay: float, now: float) -> None:
        # a timer of the same kind still running is replaced
        retransmits = timer in _RETRANSMIT_TIMERS
        txn._clear_timer(retransmits)
        if delay <= 0:
            # Zero timers (D, I, J, K over reliable transports) fire at once.
            txn.on_timer(timer, now)
            return
        seq = self._seq = self._seq + 1
        if retransmits:
            txn._retransmit_timer = timer
            txn._retransmit_seq = seq
        else:
            txn._timeout_timer = timer
            txn._timeout_seq = seq
        self._timer_owners[seq] = txn
        deadline = now + delay
        self._timer_queue.push(delay, deadline, seq)
        earliest = self._earliest_seq
        if earliest == 0 or (earliest > 0 and deadline < self._earliest):
            self._earliest_seq = seq
            self._earliest = deadline

    def _terminate(self, txn: Transaction) -> None:
        if isinstance(txn, ClientInviteTransaction) and txn.pending_cancel:
            # §9.1: the INVITE ended before any provisional; the CANCEL is never sent.
            txn.pending_cancel = False
            self._events.append(TransactionTerminated(self._cancel_key(txn.key)))
        txn.state = _TERMINATED
        txn._clear_timer(True)
        txn._clear_timer(False)
        if self._transactions.get(txn.key) is txn:
            del self._transactions[txn.key]
        self._events.append(TransactionTerminated(txn.key))
