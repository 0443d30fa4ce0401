"""The T-Library message catalogue: every request and event with its required
and optional attributes, and every attribute with its type
(docs/tlib.md, "Catalogue" and "Attributes").

Names are the classic T-Library ones (``RequestAgentLogin``,
``EventAgentReady``, ``AttributeThisDN`` ...) so that contact-centre engineers
recognise them. A message on the wire is one map: ``"message"`` holds the
name, every other key is an attribute.

Validation rules (docs/tlib.md, "Validation"):

* ``message`` missing, not a string or unknown -> :class:`UnknownMessage` (40);
* a required attribute absent -> :class:`MissingAttribute` (42);
* an attribute of the wrong type, outside its enumeration, or not listed for
  a request -> :class:`InvalidAttribute` (41). Events may carry any attribute
  of the registry (the daemons add context), requests only those listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from protocols.tlib.errors import (
    InvalidAttribute,
    MissingAttribute,
    UnexpectedMessage,
    UnknownMessage,
)

#: ``AttributeTreatmentType`` values the cluster plays (RequestApplyTreatment;
#: docs/node.md, "Treatments"). The attribute itself takes any string: a type
#: outside this list is the node's ``EventError`` 41, logged and counted.
TREATMENT_TYPES: Final = ("Music", "RingBack", "Silence", "Busy", "FastBusy",
                          "PlayAnnouncement", "PlayApplication")

#: The protocol version this implementation speaks (``AttributeProtocolVersion``).
PROTOCOL_VERSION: Final = 1
#: The oldest protocol version a server accepts.
MIN_PROTOCOL_VERSION: Final = 1

#: Deepest nesting of maps and lists accepted inside a KVList attribute.
MAX_KVLIST_DEPTH: Final = 16

#: Largest integer an attribute may hold (unsigned 32-bit counters and codes).
MAX_UINT32: Final = 2**32 - 1


class Kind(Enum):
    """The type of an attribute's value."""

    STRING = "string"
    INT = "int"  # unsigned, 0 .. 2**32-1
    KVLIST = "kvlist"  # map of string keys to string/int/float/bytes/bool/None/list/map


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute: its name, value type, allowed values and meaning."""

    name: str
    kind: Kind
    doc: str
    values: frozenset[str] | None = None

    def check(self, value: Any, message: str) -> None:
        """Raise :class:`InvalidAttribute` unless ``value`` fits this attribute."""
        # fast paths on the exact types msgpack decodes to; subclasses take the slow path
        kind = self.kind
        if kind is Kind.STRING:
            if value.__class__ is str and (self.values is None or value in self.values):
                return
        elif kind is Kind.INT:
            if value.__class__ is int and 0 <= value <= MAX_UINT32:
                return
        elif value.__class__ is dict:
            _check_kvlist(value, self.name, message)
            return
        self._check_slow(value, message)

    def _check_slow(self, value: Any, message: str) -> None:
        if self.kind is Kind.STRING:
            ok = isinstance(value, str)
        elif self.kind is Kind.INT:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UINT32
        else:
            ok = isinstance(value, dict)
        if not ok:
            raise InvalidAttribute(
                f"Invalid attribute: {self.name} in {message} must be {self.kind.value}, "
                f"got {type(value).__name__}",
                message=message,
                attribute=self.name,
            )
        if self.values is not None and value not in self.values:
            raise InvalidAttribute(
                f"Invalid attribute: {self.name}={value!r} in {message}; "
                f"one of {', '.join(sorted(self.values))}",
                message=message,
                attribute=self.name,
            )
        if self.kind is Kind.KVLIST:
            _check_kvlist(value, self.name, message)


_SCALAR_TYPES: Final = frozenset({str, int, float, bytes, bool, type(None)})


def _check_kvlist(value: Any, name: str, message: str) -> None:
    # the usual KVList is flat: string keys, scalar values
    for key, sub in value.items():
        if key.__class__ is not str or sub.__class__ not in _SCALAR_TYPES:
            break
    else:
        return
    # iterative walk: a hostile frame may nest deeper than Python's recursion limit
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_KVLIST_DEPTH:
            raise InvalidAttribute(
                f"Invalid attribute: {name} in {message} nests deeper than "
                f"{MAX_KVLIST_DEPTH} levels",
                message=message,
                attribute=name,
            )
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidAttribute(
                        f"Invalid attribute: {name} in {message} has a non-string key",
                        message=message,
                        attribute=name,
                    )
                stack.append((sub, depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, depth + 1) for sub in item)
        elif item is not None and not isinstance(item, str | int | float | bytes | bool):
            raise InvalidAttribute(
                f"Invalid attribute: {name} in {message} holds a {type(item).__name__}",
                message=message,
                attribute=name,
            )


def _enum(*values: str) -> frozenset[str]:
    return frozenset(values)


WORK_MODES: Final = _enum(
    "Unknown",
    "ManualIn",
    "AutoIn",
    "AfterCallWork",
    "AuxWork",
    "NoCallDisconnect",
    "WalkAway",
    "ReturnBack",
)
DN_ROLES: Final = _enum(
    "Unknown",
    "Origination",
    "Destination",
    "ConferenceMember",
    "NewParty",
    "AddedParty",
    "DeletedParty",
    "TransferredParty",
    "Observer",
)
CALL_TYPES: Final = _enum("Unknown", "Internal", "Inbound", "Outbound", "Consult")
CLIENT_TYPES: Final = _enum("smart", "legacy")
REGISTER_MODES: Final = _enum("ModeShare", "ModePrivate", "ModeMonitor")
ADDRESS_TYPES: Final = _enum("DN", "Position", "Queue")
ROUTE_TYPES: Final = _enum(
    "Default", "Label", "OverwriteDNIS", "DDD", "IDDD", "Direct", "Reject",
    "Announcement", "PostFeature", "DirectAgent", "Priority", "DirectPriority",
    "AgentID", "CallDisconnect",
)  # fmt: skip
MAKE_CALL_TYPES: Final = _enum(
    "Regular", "DirectAgent", "SupervisorAssist", "Priority", "DirectPriority"
)
ADDRESS_INFO_TYPES: Final = _enum(
    "DNStatus",
    "AgentStatus",
    "QueueLength",
    "NumberOfAgentsInQueue",
    "NumberOfAvailableAgentsInQueue",
)


def _a(name: str, kind: Kind, doc: str, values: frozenset[str] | None = None) -> AttributeSpec:
    return AttributeSpec(name, kind, doc, values)


S, N, KV = Kind.STRING, Kind.INT, Kind.KVLIST

#: Every attribute the protocol knows, by name.
ATTRIBUTES: Final[Mapping[str, AttributeSpec]] = {
    a.name: a
    for a in (
        _a("AttributeThisDN", S, "The DN the request or event is about"),
        _a("AttributeOtherDN", S, "The other party's DN (destination of a call, transfer, route)"),
        _a("AttributeThirdPartyDN", S, "A third party (transfer target, conference member)"),
        _a("AttributeThisDNRole", S, "Role of ThisDN in the call", DN_ROLES),
        _a("AttributeOtherDNRole", S, "Role of OtherDN in the call", DN_ROLES),
        _a("AttributeThisQueue", S, "ACD queue or routing point the agent or call is on"),
        _a("AttributeConnID", S, "Call identifier, 16 hex digits, unique in the cluster"),
        _a("AttributeTransferConnID", S, "ConnID of the other call of a transfer"),
        _a("AttributePreviousConnID", S, "ConnID the call had before a merge"),
        _a("AttributeCallUUID", S, "Globally unique call identifier"),
        _a("AttributeCallType", S, "Internal, Inbound, Outbound or Consult", CALL_TYPES),
        _a("AttributeANI", S, "Calling number"),
        _a("AttributeDNIS", S, "Dialled number"),
        _a("AttributeAgentID", S, "Agent login identifier"),
        _a("AttributePassword", S, "Agent password"),
        _a("AttributeAgentWorkMode", S, "Agent work mode", WORK_MODES),
        _a("AttributeReason", KV, 'Reason codes, e.g. {"ReasonCode": "Break"}'),
        _a("AttributeExtensions", KV, "Free key-value extensions"),
        _a("AttributeUserData", KV, "Call-attached data (KVList)"),
        _a("AttributeKey", S, "One UserData key"),
        _a("AttributeRegisterMode", S, "Register mode", REGISTER_MODES),
        _a("AttributeAddressType", S, "Type of the address", ADDRESS_TYPES),
        _a("AttributeAddressInfoType", S, "What RequestQueryAddress asks", ADDRESS_INFO_TYPES),
        _a("AttributeAddressInfoStatus", N, "Answer to RequestQueryAddress (count or status)"),
        _a("AttributeRouteType", S, "How RequestRouteCall routes", ROUTE_TYPES),
        _a("AttributeMakeCallType", S, "Kind of RequestMakeCall", MAKE_CALL_TYPES),
        _a("AttributeTreatmentType", S, "What RequestApplyTreatment plays: Music, RingBack, "
           "Silence, Busy, FastBusy, PlayAnnouncement, PlayApplication ..."),
        _a("AttributeTreatmentParms", KV, 'Parameters of a treatment, e.g. {"MUSIC": "jazz"}'),
        _a("AttributePriority", N, "Priority of a reservation (agent_reservation): higher wins"),
        _a("AttributeTimeout", N, "Seconds a reservation holds if no call follows"),
        _a("AttributeReferenceID", N, "Request correlation, echoed by the answering event"),
        _a("AttributeEventSequenceNumber", N, "Per-connection event counter, from 1"),
        _a("AttributeTimeinSecs", N, "Event time, whole seconds since the Unix epoch"),
        _a("AttributeTimeinuSecs", N, "Event time, microseconds part"),
        _a("AttributeErrorCode", N, "EventError code (docs/tlib.md, Error codes)"),
        _a("AttributeErrorMessage", S, "EventError text"),
        _a("AttributeApplicationName", S, "Name of the client (or server) application"),
        _a("AttributeClientType", S, "smart or legacy", CLIENT_TYPES),
        _a("AttributeProtocolVersion", N, "T-Library protocol version"),
        _a("AttributeServerVersion", S, "Server software version"),
    )
}

#: Attributes every request may carry; AttributeReferenceID is required.
REQUEST_COMMON: Final = ("AttributeReferenceID", "AttributeExtensions")
#: Attributes every event may carry; the server session stamps the sequence and time.
EVENT_COMMON: Final = (
    "AttributeReferenceID",
    "AttributeEventSequenceNumber",
    "AttributeTimeinSecs",
    "AttributeTimeinuSecs",
    "AttributeExtensions",
)


@dataclass(frozen=True)
class MessageSpec:
    """One catalogue entry."""

    name: str
    kind: str  # "request" or "event"
    required: tuple[str, ...]
    optional: tuple[str, ...]
    doc: str
    #: for a request: the event that answers it when it succeeds
    answer: str | None = None
    allowed: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        common = REQUEST_COMMON if self.kind == "request" else EVENT_COMMON
        names = (*self.required, *self.optional, *common)
        unknown = [n for n in names if n not in ATTRIBUTES]
        if unknown:
            raise ValueError(f"{self.name}: unknown attributes {unknown}")
        object.__setattr__(self, "allowed", frozenset(names))

    @property
    def is_request(self) -> bool:
        return self.kind == "request"


def _req(
    name: str, answer: str, required: Iterable[str], optional: Iterable[str], doc: str
) -> MessageSpec:
    return MessageSpec(
        name, "request", ("AttributeReferenceID", *required), tuple(optional), doc, answer
    )


def _ev(name: str, required: Iterable[str], optional: Iterable[str], doc: str) -> MessageSpec:
    return MessageSpec(name, "event", tuple(required), tuple(optional), doc)


_DN = "AttributeThisDN"
_CONN = "AttributeConnID"
_AGENT_OPT = (
    "AttributeAgentID",
    "AttributeAgentWorkMode",
    "AttributeThisQueue",
    "AttributeReason",
)
_CALL_OPT = (
    "AttributeOtherDN",
    "AttributeThirdPartyDN",
    "AttributeThisDNRole",
    "AttributeOtherDNRole",
    "AttributeThisQueue",
    "AttributeCallUUID",
    "AttributeCallType",
    "AttributeANI",
    "AttributeDNIS",
    "AttributeAgentID",
    "AttributeUserData",
    "AttributeTransferConnID",
    "AttributePreviousConnID",
    "AttributeRouteType",
    "AttributeReason",
)

_MESSAGES: tuple[MessageSpec, ...] = (
    # -- session --------------------------------------------------------------
    _req("RequestRegisterClient", "EventServerInfo",
         ("AttributeApplicationName", "AttributeClientType", "AttributeProtocolVersion"), (),
         "Handshake; must be the first frame. Extensions may announce addp-timeout "
         "and addp-remote-timeout."),
    _req("RequestQueryServer", "EventServerInfo", (), (), "Ask for EventServerInfo again."),
    _req("RequestKeepAlive", "EventKeepAlive", (), (), "ADDP poll."),
    # -- DN registration ------------------------------------------------------
    _req("RequestRegisterAddress", "EventRegistered", (_DN,),
         ("AttributeRegisterMode", "AttributeAddressType"),
         "Receive events for a DN; from a dn-owner-application it takes ownership."),
    _req("RequestUnregisterAddress", "EventUnregistered", (_DN,), (),
         "Stop receiving events for a DN; releases T-Library-based ownership."),
    _req("RequestQueryAddress", "EventAddressInfo", (_DN,), ("AttributeAddressInfoType",),
         "DN or agent status."),
    # -- agent ----------------------------------------------------------------
    _req("RequestAgentLogin", "EventAgentLogin", (_DN, "AttributeAgentID"),
         ("AttributePassword", "AttributeAgentWorkMode", "AttributeThisQueue",
          "AttributeReason"),
         "Log an agent in on a DN."),
    _req("RequestAgentLogout", "EventAgentLogout", (_DN,),
         ("AttributeAgentID", "AttributeThisQueue", "AttributeReason"),
         "Log the agent out."),
    _req("RequestAgentReady", "EventAgentReady", (_DN,),
         ("AttributeAgentWorkMode", "AttributeThisQueue", "AttributeReason"),
         "Agent ready for calls (ManualIn / AutoIn)."),
    _req("RequestAgentNotReady", "EventAgentNotReady", (_DN,),
         ("AttributeAgentWorkMode", "AttributeThisQueue", "AttributeReason"),
         "Agent not ready (AuxWork, AfterCallWork, WalkAway ...); reason codes in "
         "AttributeReason or AttributeExtensions."),
    # -- calls ----------------------------------------------------------------
    _req("RequestMakeCall", "EventDialing", (_DN, "AttributeOtherDN"),
         ("AttributeMakeCallType", "AttributeUserData"), "Call OtherDN from ThisDN."),
    _req("RequestAnswerCall", "EventEstablished", (_DN, _CONN), (), "Answer a ringing call."),
    _req("RequestReleaseCall", "EventReleased", (_DN, _CONN), ("AttributeUserData",),
         "Hang up."),
    _req("RequestHoldCall", "EventHeld", (_DN, _CONN), (), "Put a call on hold."),
    _req("RequestRetrieveCall", "EventRetrieved", (_DN, _CONN), (), "Take a call off hold."),
    _req("RequestSingleStepTransfer", "EventReleased", (_DN, _CONN, "AttributeOtherDN"),
         ("AttributeUserData",), "Blind transfer to OtherDN."),
    _req("RequestInitiateTransfer", "EventHeld", (_DN, _CONN, "AttributeOtherDN"),
         ("AttributeUserData",),
         "Hold the call and dial OtherDN (consultation); EventDialing follows."),
    _req("RequestCompleteTransfer", "EventReleased", (_DN, _CONN, "AttributeTransferConnID"),
         (), "Join the held call (ConnID) with the consultation (TransferConnID)."),
    _req("RequestRouteCall", "EventRouteUsed", (_DN, _CONN, "AttributeOtherDN"),
         ("AttributeRouteType", "AttributeUserData"),
         "Answer an EventRouteRequest: send the call to OtherDN."),
    _req("RequestApplyTreatment", "EventTreatmentApplied",
         (_DN, _CONN, "AttributeTreatmentType"), ("AttributeTreatmentParms",),
         "Play a treatment (music, ringback, announcement ...) to a call waiting on the "
         "routing point ThisDN, from a media server (docs/node.md, 'Treatments')."),
    _req("RequestReserveAgent", "EventAgentReserved", (_DN,),
         ("AttributeAgentID", "AttributeConnID", "AttributePriority", "AttributeTimeout"),
         "Reserve the Ready agent of ThisDN for one routed call (guide: 'Agent "
         "Reservation'); answered by the DN's owner t-controller after "
         "request-collection-time."),
    # -- user data ------------------------------------------------------------
    _req("RequestAttachUserData", "EventAttachedDataChanged", (_DN, _CONN, "AttributeUserData"),
         (), "Add keys to the call's data."),
    _req("RequestUpdateUserData", "EventAttachedDataChanged", (_DN, _CONN, "AttributeUserData"),
         (), "Add or replace keys of the call's data."),
    _req("RequestDeleteUserData", "EventAttachedDataChanged", (_DN, _CONN), ("AttributeKey",),
         "Delete one key (AttributeKey), or all keys when it is absent."),
    # -- events: session ------------------------------------------------------
    _ev("EventServerInfo",
        ("AttributeApplicationName", "AttributeServerVersion", "AttributeProtocolVersion"), (),
        "Answer to RequestRegisterClient / RequestQueryServer."),
    _ev("EventKeepAlive", (), (), "ADDP answer."),
    _ev("EventACK", (), (_DN, _CONN), "Request accepted, no other event to report."),
    _ev("EventError", ("AttributeErrorCode", "AttributeErrorMessage"),
        (_DN, _CONN, "AttributeAgentID"), "Request refused; see the error code table."),
    # -- events: DN -----------------------------------------------------------
    _ev("EventRegistered", (_DN,), ("AttributeRegisterMode", "AttributeAddressType",
                                    *_AGENT_OPT), "DN registered."),
    _ev("EventUnregistered", (_DN,), (), "DN unregistered."),
    _ev("EventDNOutOfService", (_DN,), ("AttributeReason",), "DN out of service."),
    _ev("EventDNBackInService", (_DN,), ("AttributeReason",), "DN back in service."),
    _ev("EventAddressInfo", (_DN,),
        ("AttributeAddressInfoType", "AttributeAddressInfoStatus", "AttributeAddressType",
         *_AGENT_OPT), "Answer to RequestQueryAddress."),
    # -- events: agent --------------------------------------------------------
    _ev("EventAgentLogin", (_DN, "AttributeAgentID"), _AGENT_OPT[1:], "Agent logged in."),
    _ev("EventAgentLogout", (_DN,), _AGENT_OPT, "Agent logged out."),
    _ev("EventAgentReady", (_DN,), _AGENT_OPT, "Agent ready."),
    _ev("EventAgentNotReady", (_DN,), _AGENT_OPT, "Agent not ready (work mode, reason)."),
    _ev("EventAgentReserved", (_DN,),
        ("AttributeAgentID", "AttributeConnID", "AttributePriority", "AttributeTimeout"),
        "The agent is reserved for the requester until a call reaches the DN or "
        "AttributeTimeout passes."),
    # -- events: calls --------------------------------------------------------
    _ev("EventDialing", (_DN, _CONN), _CALL_OPT, "ThisDN dials OtherDN."),
    _ev("EventRinging", (_DN, _CONN), _CALL_OPT, "A call rings on ThisDN."),
    _ev("EventEstablished", (_DN, _CONN), _CALL_OPT, "The call is answered."),
    _ev("EventReleased", (_DN, _CONN), _CALL_OPT, "ThisDN left the call."),
    _ev("EventHeld", (_DN, _CONN), _CALL_OPT, "The call is on hold at ThisDN."),
    _ev("EventRetrieved", (_DN, _CONN), _CALL_OPT, "The call is off hold at ThisDN."),
    _ev("EventPartyChanged", (_DN, _CONN), _CALL_OPT, "A party was replaced (transfer)."),
    _ev("EventQueued", (_DN, _CONN), _CALL_OPT, "The call waits on a queue or routing point."),
    _ev("EventDiverted", (_DN, _CONN), _CALL_OPT, "The call left ThisDN for OtherDN."),
    _ev("EventAbandoned", (_DN, _CONN), _CALL_OPT,
        "The caller hung up while the call waited on ThisDN (routing point, queue)."),
    _ev("EventRouteRequest", (_DN, _CONN), _CALL_OPT, "A routing point asks where to route."),
    _ev("EventRouteUsed", (_DN, _CONN), _CALL_OPT, "The call was routed to OtherDN."),
    _ev("EventAttachedDataChanged", (_DN, _CONN), _CALL_OPT, "The call's UserData changed."),
    _ev("EventTreatmentApplied", (_DN, _CONN),
        (*_CALL_OPT, "AttributeTreatmentType", "AttributeTreatmentParms"),
        "The caller hears the treatment."),
    _ev("EventTreatmentNotApplied", (_DN, _CONN),
        (*_CALL_OPT, "AttributeTreatmentType", "AttributeTreatmentParms",
         "AttributeErrorCode", "AttributeErrorMessage"),
        "The treatment could not be played (the media server refused or is down)."),
    _ev("EventTreatmentEnd", (_DN, _CONN),
        (*_CALL_OPT, "AttributeTreatmentType", "AttributeTreatmentParms"),
        "The treatment ended by itself (an announcement played to its end)."),
)  # fmt: skip

#: The catalogue, by message name.
MESSAGES: Final[Mapping[str, MessageSpec]] = {m.name: m for m in _MESSAGES}
#: Request names.
REQUESTS: Final = frozenset(m.name for m in _MESSAGES if m.is_request)
#: Event names.
EVENTS: Final = frozenset(m.name for m in _MESSAGES if not m.is_request)


def message_name(message: Mapping[str, Any]) -> str:
    """The ``message`` value, or :class:`UnknownMessage` if absent / not a string."""
    name = message.get("message")
    if not isinstance(name, str):
        raise UnknownMessage("Unknown message: no message name")
    return name


def lookup(name: str) -> MessageSpec:
    """The catalogue entry for ``name``, or :class:`UnknownMessage`."""
    spec = MESSAGES.get(name)
    if spec is None:
        raise UnknownMessage(f"Unknown message: {name[:64]}", message=name[:64])
    return spec


def validate(message: Mapping[str, Any], *, kind: str | None = None) -> MessageSpec:
    """Check one message against the catalogue and return its entry.

    ``kind`` ("request" / "event") is the direction expected; a message of
    the other kind raises :class:`UnexpectedMessage`.
    """
    name = message_name(message)
    spec = lookup(name)
    if kind is not None and spec.kind != kind:
        raise UnexpectedMessage(
            f"Unexpected message: {name} is an {spec.kind}, a {kind} was expected",
            message=name,
        )
    for attr in spec.required:
        if attr not in message:
            raise MissingAttribute(
                f"Missing attribute: {attr} in {name}", message=name, attribute=attr
            )
    allowed = spec.allowed if spec.kind == "request" else None
    attributes = ATTRIBUTES
    for key, value in message.items():
        if key == "message":
            continue
        attr_spec = attributes.get(key)
        if attr_spec is None or (allowed is not None and key not in allowed):
            raise InvalidAttribute(
                f"Invalid attribute: {str(key)[:64]} is not allowed in {name}",
                message=name,
                attribute=str(key)[:64],
            )
        attr_spec.check(value, name)
    return spec


def make_message(
    name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any
) -> dict[str, Any]:
    """Build the wire map for ``name`` with the given attributes (not validated)."""
    message: dict[str, Any] = {"message": name}
    if attributes:
        message.update(attributes)
    message.update(attrs)
    return message
