"""The B2BUA call model of the Session Controller (guide: "SIP Server in
Cluster Mode", "Session Controller").

A :class:`Call` has a ConnID (16 hex digits, unique in the cluster), a
CallUUID, a call type and its parties. Each party that is a SIP endpoint is
a :class:`Leg`: one dialog between the node and that phone (RFC 3261 §12).
The node is a back-to-back user agent: every leg is its own dialog, SDP is
carried from one leg to the other unchanged and RTP never touches the node.

States are explicit enums with transition tables (:data:`CALL_TRANSITIONS`,
:data:`LEG_TRANSITIONS`); an impossible move raises
:class:`InvalidTransition`, a bug rather than bad input.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from protocols.sip.dialog import Dialog
from protocols.sip.message import Request, Response

__all__ = [
    "CALL_TRANSITIONS",
    "LEG_TRANSITIONS",
    "Call",
    "CallState",
    "InvalidTransition",
    "Leg",
    "LegState",
    "hold_sdp",
    "new_conn_id",
    "sdp_direction",
]


class InvalidTransition(RuntimeError):
    """A state change the transition table does not allow."""


class CallState(enum.Enum):
    """Where a call is, as a whole."""

    SETUP = "setup"  # the node is reaching the destination
    ROUTING = "routing"  # waiting on a routing point for RequestRouteCall
    ALERTING = "alerting"  # the destination rings
    CONNECTED = "connected"  # two parties talk (possibly one holds)
    TRANSFERRING = "transferring"  # one party is being replaced
    RELEASED = "released"


CALL_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.SETUP: frozenset({CallState.ROUTING, CallState.ALERTING, CallState.CONNECTED,
                                CallState.RELEASED}),
    CallState.ROUTING: frozenset({CallState.SETUP, CallState.RELEASED}),
    CallState.ALERTING: frozenset({CallState.CONNECTED, CallState.SETUP, CallState.RELEASED}),
    CallState.CONNECTED: frozenset({CallState.TRANSFERRING, CallState.RELEASED}),
    CallState.TRANSFERRING: frozenset({CallState.CONNECTED, CallState.RELEASED}),
    CallState.RELEASED: frozenset(),
}


class LegState(enum.Enum):
    """One party's dialog with the node."""

    CALLING = "calling"  # INVITE sent (or received), no answer yet
    RINGING = "ringing"  # a provisional response / ringback
    ESTABLISHED = "established"  # 2xx: dialog confirmed
    HELD = "held"  # this party put the call on hold (sendonly / inactive)
    RELEASED = "released"


LEG_TRANSITIONS: dict[LegState, frozenset[LegState]] = {
    LegState.CALLING: frozenset({LegState.RINGING, LegState.ESTABLISHED, LegState.RELEASED}),
    LegState.RINGING: frozenset({LegState.ESTABLISHED, LegState.RELEASED}),
    LegState.ESTABLISHED: frozenset({LegState.HELD, LegState.RELEASED}),
    LegState.HELD: frozenset({LegState.ESTABLISHED, LegState.RELEASED}),
    LegState.RELEASED: frozenset(),
}


def new_conn_id() -> str:
    """A ConnID: 16 hex digits, random so that no two nodes pick the same."""
    return secrets.token_hex(8)


def sdp_direction(body: bytes) -> str:
    """The media direction an SDP offer asks for (RFC 3264 §5.1, §8.4).

    ``sendonly`` or ``inactive`` (or a ``c=`` of 0.0.0.0, RFC 2543 hold)
    means the sender puts the call on hold.
    """
    text = body.decode("utf-8", "replace")
    direction = "sendrecv"
    for raw in text.splitlines():
        line = raw.strip()
        if line in ("a=sendonly", "a=inactive", "a=recvonly", "a=sendrecv"):
            direction = line[2:]
        elif line.startswith("c=") and line.endswith(" 0.0.0.0"):
            direction = "inactive"
    return direction


def hold_sdp(body: bytes) -> bytes:
    """``body`` as a hold offer: every media stream ``a=inactive`` and the ``o=``
    session version raised by one (RFC 3264 §8, §8.4)."""
    out: list[str] = []
    for line in body.decode("utf-8", "replace").split("\r\n"):
        if line in ("a=sendonly", "a=inactive", "a=recvonly", "a=sendrecv"):
            continue
        if line.startswith("o="):
            fields = line.split(" ")
            if len(fields) >= 6 and fields[2].isdigit():
                fields[2] = str(int(fields[2]) + 1)
            line = " ".join(fields)
        out.append(line)
    text = "\r\n".join(out).rstrip("\r\n") + "\r\n"
    # a=inactive at the end of the session section and of each media section
    parts = text.split("\r\nm=")
    parts = [p.rstrip("\r\n") + "\r\na=inactive" for p in parts]
    return ("\r\nm=".join(parts) + "\r\n").encode()


@dataclass(eq=False, slots=True)
class Leg:
    """One party of a call and its dialog with the node.

    ``incoming`` is the INVITE the party sent (the node answers it as UAS);
    ``invite`` is the INVITE the node sent to the party (UAC). ``local_tag``
    is the node's tag in this dialog: the key of in-dialog requests.
    """

    call: Call
    dn: str | None
    number: str
    outbound: bool
    state: LegState = LegState.CALLING
    incoming: Any = None  # daemons.runtime.sip_endpoint.IncomingRequest
    invite: Request | None = None
    dialog: Dialog | None = None
    early_dialog: Dialog | None = None
    early_response: Response | None = None  # the 1xx that makes the early dialog
    sdp: bytes = b""
    call_id: str = ""
    local_tag: str = ""
    pending_response: Response | None = None  # a 2xx from the party not yet ACKed
    cti: frozenset[str] = frozenset()
    #: the node gave up on this leg's INVITE (no answer, caller gone): a late 2xx gets BYE
    abandoned: bool = False
    #: this party transferred the call away: its hang-up does not end the call
    transferred: bool = False
    #: the same phone's dialog in the other call of a consultation (RequestInitiateTransfer)
    shared_with: Leg | None = None
    #: the node itself put this party on hold (RequestInitiateTransfer), not its phone
    held_by_node: bool = False
    #: reliable provisional responses on this leg (daemons.sip_server.prack), None: none
    reliable: Any = None
    #: this leg's session timer (daemons.sip_server.session_timer), None: none
    session_timer: Any = None

    def move(self, new: LegState) -> None:
        if new is self.state:
            return
        if new not in LEG_TRANSITIONS[self.state]:
            raise InvalidTransition(f"leg {self.number}: {self.state.value} -> {new.value}")
        self.state = new

    def settle(self) -> None:
        """Let go of the setup messages once the dialog is confirmed and ACKed: in-dialog
        requests need only :attr:`dialog` (RFC 3261 §12.2), so an active call keeps no
        INVITE, provisional response or server-transaction handle."""
        if self.pending_response is None:
            self.invite = None
        self.incoming = None
        self.early_response = None
        self.early_dialog = None

    @property
    def alive(self) -> bool:
        return self.state is not LegState.RELEASED

    @property
    def connected(self) -> bool:
        return self.state in (LegState.ESTABLISHED, LegState.HELD)


@dataclass(eq=False, slots=True)
class Call:
    """One call on this node (ConnID, CallUUID, type, parties, attached data)."""

    conn_id: str
    ani: str
    dnis: str
    call_type: str = "Internal"
    call_uuid: str = field(default_factory=lambda: str(uuid.uuid4()).upper())
    state: CallState = CallState.SETUP
    legs: list[Leg] = field(default_factory=list)
    user_data: dict[str, Any] = field(default_factory=dict)
    routing_point: str | None = None
    visited_routing_points: list[str] = field(default_factory=list)
    created: float = 0.0
    #: when a request or answer of the call was last seen (call cleanup)
    last_activity: float = 0.0
    ipport_client: str | None = None
    #: the consultation call of a held call (RequestInitiateTransfer), and back
    consult: Call | None = None
    consult_of: Call | None = None

    def move(self, new: CallState) -> None:
        if new is self.state:
            return
        if new not in CALL_TRANSITIONS[self.state]:
            raise InvalidTransition(f"call {self.conn_id}: {self.state.value} -> {new.value}")
        self.state = new

    def add_leg(self, dn: str | None, number: str, *, outbound: bool,
                cti: frozenset[str] = frozenset()) -> Leg:
        leg = Leg(self, dn, number, outbound, cti=cti)
        self.legs.append(leg)
        return leg

    def live_legs(self) -> list[Leg]:
        return [leg for leg in self.legs if leg.alive]

    def other(self, leg: Leg) -> Leg | None:
        """The live party on the other side of ``leg`` (two-party calls)."""
        for other in self.legs:
            if other is not leg and other.alive:
                return other
        return None

    def leg_of(self, dn: str) -> Leg | None:
        for leg in self.legs:
            if leg.dn == dn and leg.alive:
                return leg
        return None

    @property
    def released(self) -> bool:
        return self.state is CallState.RELEASED
