"""The T-Controller mesh messages: what one t-controller tells another over
T-Library (docs/t-controller.md, "Links"; guide: "T-Controller",
"T-Controller DN Ownership", "DN Availability for Routing").

A mesh message is an ordinary T-Library request or event whose
``AttributeExtensions`` carry the mesh's own keys: ``mesh`` (what kind of
message it is) and ``mesh-client``, ``mesh-node``, ``mesh-kind``,
``mesh-application``, ``mesh-expires``, ``mesh-answered``, plus, for the
ownership decisions, ``owner``, ``ownership``, ``since``, ``expires-in``,
``from``, ``snapshot`` and ``cause``. Each message is a frozen dataclass here;
``to_wire()`` gives ``(message name, attributes)`` and ``from_wire(name,
attributes)`` takes them back, refusing a malformed one with
:class:`MalformedMeshMessage` (an ``EventError`` 41 for a request).

Requests (on the connection the sender opened):

* :class:`Interest` -- ``RequestRegisterAddress`` / ``RequestUnregisterAddress``
  ``mesh=interest``: a client of the sender registered / let go of the DN;
* :class:`OwnershipClaim` -- ``RequestRegisterAddress`` ``mesh=claim``: an
  ownership claim for the owner to decide;
* :class:`ClaimWithdrawn` -- ``RequestUnregisterAddress`` ``mesh=withdraw`` /
  ``client-gone``: a claimant's client let go / disconnected;
* :class:`RelayedRequest` -- any other request: a desktop's request relayed
  to the DN's owner (or to the node of the call), ``mesh-client`` naming the
  desktop.

Events (on the connection the peer opened):

* :class:`DnGranted` / :class:`DnMoved` / :class:`DnReleased` -- the
  ownership decisions (``EventDNBackInService`` ``mesh=granted`` / ``moved``,
  ``EventDNOutOfService`` ``mesh=released``);
* :class:`DnSnapshot` -- the state of a DN the sender owns, for a Smart
  Proxy's bulk registration (``mesh=snapshot``);
* :class:`CallState` -- a call event with ``mesh=call-state``: the sender's
  repeat of a call on its node for a DN the receiver owns.

Any other event is not a mesh message: :func:`decode_event` returns None.
Times on the wire are Unix seconds (``since``) and durations
(``expires-in``); turning them into a clock is the receiver's business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NoReturn, Self, TypeAlias

from protocols.tlib.errors import InvalidAttribute

__all__ = [
    "OWNERSHIP_KINDS",
    "CallState",
    "ClaimWithdrawn",
    "DnGranted",
    "DnMoved",
    "DnReleased",
    "DnSnapshot",
    "Interest",
    "MalformedMeshMessage",
    "MeshEvent",
    "MeshRequest",
    "MovedAgent",
    "OwnershipClaim",
    "RelayedRequest",
    "decode_event",
    "decode_request",
    "reserved_keys",
]

#: Values of ``ownership`` / ``mesh-kind``: SIP-based or T-Library-based ownership.
OWNERSHIP_KINDS: Final = frozenset({"sip", "t-library"})

_EXT: Final = "AttributeExtensions"
_DN: Final = "AttributeThisDN"
_MARKER: Final = "mesh"
_CLIENT: Final = "mesh-client"
_NODE: Final = "mesh-node"
_KIND: Final = "mesh-kind"
_APPLICATION: Final = "mesh-application"
_EXPIRES: Final = "mesh-expires"
_ANSWERED: Final = "mesh-answered"
_REGISTER: Final = "RequestRegisterAddress"
_UNREGISTER: Final = "RequestUnregisterAddress"
_BACK_IN_SERVICE: Final = "EventDNBackInService"
_OUT_OF_SERVICE: Final = "EventDNOutOfService"
#: Attributes of a received message that belong to the link, not to the message.
_LINK: Final = frozenset({"message", "AttributeReferenceID", "AttributeEventSequenceNumber",
                          "AttributeTimeinSecs", "AttributeTimeinuSecs"})
#: Keys of a granted decision's AttributeExtensions that are not the DN's state.
_GRANTED_KEYS: Final = frozenset({_MARKER, "owner", "ownership", "since", "expires-in"})


def reserved_keys(attributes: Mapping[str, Any]) -> list[str]:
    """The keys of a client's ``AttributeExtensions`` that only the t-controller
    mesh may set (``mesh`` and ``mesh-*``): a desktop that sends them would
    speak for a peer t-controller (claim a DN, name another client)."""
    ext = attributes.get(_EXT)
    if not isinstance(ext, Mapping):
        return []
    return sorted(k for k in ext if isinstance(k, str)
                  and (k == _MARKER or k.startswith(_MARKER + "-")))


class MalformedMeshMessage(InvalidAttribute):
    """A mesh message that does not have the shape of its kind (a key of the
    wrong type, a required key missing, a ``mesh`` value that names no mesh
    message). ``marker`` is the message's ``mesh`` value, if it had one."""

    def __init__(self, text: str, *, message: str | None = None,
                 marker: str | None = None) -> None:
        self.marker = marker
        super().__init__(f"Invalid attribute: {text}", message=message,
                         attribute="AttributeExtensions")


# -- reading ---------------------------------------------------------------------


def _extensions(name: str, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    ext = attributes.get(_EXT)
    if ext is None:
        return {}
    if not isinstance(ext, Mapping):
        raise MalformedMeshMessage(f"AttributeExtensions of {name} is not a map", message=name)
    return ext


def _marker(name: str, ext: Mapping[str, Any]) -> str | None:
    marker = ext.get(_MARKER)
    if marker is not None and not isinstance(marker, str):
        raise MalformedMeshMessage(f"mesh of {name} is not a string", message=name)
    return marker


class _Reader:
    """The keys of one mesh message, each checked for its type."""

    def __init__(self, name: str, attributes: Mapping[str, Any], marker: str | None,
                 *, names: tuple[str, ...]) -> None:
        self.name = name
        self.marker = marker
        if name not in names:
            self.fail(f"mesh={marker} is not carried by {name}")
        self.attributes = attributes
        self.ext = _extensions(name, attributes)
        if _marker(name, self.ext) != marker:
            self.fail(f"{name} is not a mesh={marker} message")

    def fail(self, text: str) -> NoReturn:
        raise MalformedMeshMessage(text, message=self.name, marker=self.marker)

    def dn(self) -> str:
        dn = self.attributes.get(_DN)
        if not isinstance(dn, str):
            self.fail(f"mesh={self.marker} needs AttributeThisDN")
        return dn

    def string(self, key: str) -> str:
        value = self.ext.get(key)
        if not isinstance(value, str):
            self.fail(f"mesh={self.marker} needs {key} (a string)")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.ext.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(f"{key} of mesh={self.marker} is not a string")
        return value

    def number(self, key: str) -> float:
        value = self.optional_number(key)
        if value is None:
            self.fail(f"mesh={self.marker} needs {key} (a number)")
        return value

    def optional_number(self, key: str) -> float | None:
        value = self.ext.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"{key} of mesh={self.marker} is not a number")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.ext.get(key)
        if not isinstance(value, bool):
            self.fail(f"mesh={self.marker} needs {key} (true or false)")
        return value

    def ownership(self, key: str) -> str:
        value = self.string(key)
        if value not in OWNERSHIP_KINDS:
            self.fail(f"{key} of mesh={self.marker} is {value[:16]!r}, not sip or t-library")
        return value


# -- requests --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interest:
    """A client of the sender registered (``registered``) or let go of ``dn``:
    the receiver sends the sender the DN's events, or stops (optimised mode)."""

    marker: ClassVar[str] = "interest"

    dn: str
    registered: bool = True

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        name = _REGISTER if self.registered else _UNREGISTER
        return name, {_DN: self.dn, _EXT: {_MARKER: self.marker}}

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> Interest:
        reader = _Reader(name, attributes, cls.marker, names=(_REGISTER, _UNREGISTER))
        return cls(reader.dn(), name == _REGISTER)


@dataclass(frozen=True, slots=True)
class OwnershipClaim:
    """``node`` claims ``dn``, which the receiver owns; the owner decides
    (guide: "T-Controller DN Ownership"). ``kind`` is ``sip`` (a registration
    on the claimant's sip-server, valid ``expires`` seconds) or ``t-library`` (a
    ``RequestRegisterAddress`` of ``client``, an ``application`` listed in
    ``dn-owner-applications``)."""

    marker: ClassVar[str] = "claim"

    dn: str
    node: str
    kind: str
    client: str | None = None
    application: str | None = None
    expires: float | None = None

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        ext: dict[str, Any] = {_MARKER: self.marker, _NODE: self.node, _KIND: self.kind}
        if self.client is not None:
            ext[_CLIENT] = self.client
        if self.application is not None:
            ext[_APPLICATION] = self.application
        if self.expires is not None:
            ext[_EXPIRES] = float(self.expires)
        return _REGISTER, {_DN: self.dn, _EXT: ext}

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> OwnershipClaim:
        reader = _Reader(name, attributes, cls.marker, names=(_REGISTER,))
        return cls(reader.dn(), reader.string(_NODE), reader.ownership(_KIND),
                   reader.optional_string(_CLIENT), reader.optional_string(_APPLICATION),
                   reader.optional_number(_EXPIRES))


@dataclass(frozen=True, slots=True)
class ClaimWithdrawn:
    """``client`` of the claimant ``node`` let go of ``dn`` (``withdraw``), or
    disconnected (``gone``: ``client-gone``, logout-on-disconnect on the owner)."""

    dn: str
    node: str
    client: str
    gone: bool = False

    @property
    def marker(self) -> str:
        return "client-gone" if self.gone else "withdraw"

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        return _UNREGISTER, {_DN: self.dn, _EXT: {
            _MARKER: self.marker, _NODE: self.node, _CLIENT: self.client}}

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> ClaimWithdrawn:
        marker = _marker(name, _extensions(name, attributes))
        gone = marker == "client-gone"
        reader = _Reader(name, attributes, "client-gone" if gone else "withdraw",
                         names=(_UNREGISTER,))
        return cls(reader.dn(), reader.string(_NODE), reader.string(_CLIENT), gone)


@dataclass(frozen=True, slots=True)
class RelayedRequest:
    """A desktop's request relayed to a peer: the DN's owner, or the node
    where the call is. ``attributes`` are the desktop's (without ``message``
    and its ReferenceID: the link puts its own, and ``from_wire`` leaves out
    the link's attributes); ``client`` names the desktop
    on the sender (``mesh-client``, for logout-on-disconnect on the owner)."""

    name: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    client: str | None = None

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        attributes = dict(self.attributes)
        if self.client is not None:
            ext = dict(attributes.get(_EXT) or {})
            ext[_CLIENT] = self.client
            attributes[_EXT] = ext
        return self.name, attributes

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> RelayedRequest:
        ext = _extensions(name, attributes)
        marker = _marker(name, ext)
        if marker is not None:
            raise MalformedMeshMessage(f"mesh={marker[:16]} is not carried by {name}",
                                       message=name, marker=marker)
        if _CLIENT not in ext:
            return cls(name, {k: v for k, v in attributes.items() if k not in _LINK})
        client = ext[_CLIENT]
        if not isinstance(client, str):
            raise MalformedMeshMessage(f"{_CLIENT} of {name} is not a string", message=name)
        rest = {k: v for k, v in ext.items() if k != _CLIENT}
        relayed = {k: v for k, v in attributes.items() if k != _EXT and k not in _LINK}
        if rest:
            relayed[_EXT] = rest
        return cls(name, relayed, client)


MeshRequest: TypeAlias = Interest | OwnershipClaim | ClaimWithdrawn | RelayedRequest

_REQUESTS: Final[dict[tuple[str, str], Callable[[str, Mapping[str, Any]], MeshRequest]]] = {
    (_REGISTER, "interest"): Interest.from_wire,
    (_UNREGISTER, "interest"): Interest.from_wire,
    (_REGISTER, "claim"): OwnershipClaim.from_wire,
    (_UNREGISTER, "withdraw"): ClaimWithdrawn.from_wire,
    (_UNREGISTER, "client-gone"): ClaimWithdrawn.from_wire,
}


def decode_request(name: str, attributes: Mapping[str, Any]) -> MeshRequest:
    """The mesh message a peer's request ``name`` carries: the one its
    ``mesh`` key names, a :class:`RelayedRequest` when it has none."""
    marker = _marker(name, _extensions(name, attributes))
    if marker is None:
        return RelayedRequest.from_wire(name, attributes)
    decode = _REQUESTS.get((name, marker))
    if decode is None:
        raise MalformedMeshMessage(f"mesh={marker[:16]} is not carried by {name}",
                                   message=name, marker=marker)
    return decode(name, attributes)


# -- events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MovedAgent:
    """The agent a DN's move carries to its new owner (``agent-state-auto-restore``):
    the ``snapshot`` of ``mesh=moved``."""

    agent_id: str
    dn: str
    state: str  # Ready or NotReady
    work_mode: int = 0
    reasons: Mapping[str, str | int] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"AttributeAgentID": self.agent_id, _DN: self.dn, "state": self.state,
                "AttributeAgentWorkMode": self.work_mode,
                "AttributeReasons": dict(self.reasons)}

    @classmethod
    def from_wire(cls, value: Any) -> MovedAgent:
        def fail(text: str) -> NoReturn:
            raise MalformedMeshMessage(f"snapshot of mesh=moved: {text}",
                                       message=_BACK_IN_SERVICE, marker="moved")
        if not isinstance(value, Mapping):
            fail("not a map")
        agent_id, dn, state = (value.get(k) for k in ("AttributeAgentID", _DN, "state"))
        if not isinstance(agent_id, str) or not isinstance(dn, str) \
                or not isinstance(state, str):
            fail("AttributeAgentID, AttributeThisDN and state are strings")
        work_mode = value.get("AttributeAgentWorkMode", 0)
        if isinstance(work_mode, bool) or not isinstance(work_mode, int):
            fail("AttributeAgentWorkMode is not a number")
        reasons = value.get("AttributeReasons") or {}
        if not isinstance(reasons, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool)
                for k, v in reasons.items()):
            fail("AttributeReasons is not a map of strings and numbers")
        return cls(agent_id, dn, state, work_mode, dict(reasons))


@dataclass(frozen=True, slots=True)
class DnGranted:
    """``owner`` owns ``dn`` (``ownership`` sip or t-library) since ``since`` (Unix
    seconds), for ``expires_in`` seconds more (None: until released). Sent to
    every peer when it is decided, and again for every owned DN when a peer
    connects; ``state`` is the DN's state there (``AttributeExtensions``
    ``dn-state``, ``agent-state``, ``on-call`` ..., without the decision's
    own keys: ``owner``, ``ownership``, ``since``, ``expires-in``, ``mesh``)
    and ``attributes`` the agent's (``AttributeAgentID`` ...)."""

    marker: ClassVar[str] = "granted"

    dn: str
    owner: str
    ownership: str
    since: float
    expires_in: float | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        ext = {**self.state, "ownership": self.ownership, "since": self.since,
               "expires-in": self.expires_in, _MARKER: self.marker, "owner": self.owner}
        return _BACK_IN_SERVICE, {_DN: self.dn, **self.attributes, _EXT: ext}

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> Self:
        reader = _Reader(name, attributes, cls.marker, names=(_BACK_IN_SERVICE,))
        return cls(
            reader.dn(), reader.string("owner"), reader.ownership("ownership"),
            reader.number("since"), reader.optional_number("expires-in"),
            {k: v for k, v in reader.ext.items() if k not in _GRANTED_KEYS},
            {k: v for k, v in attributes.items() if k not in (_DN, _EXT) and k not in _LINK})

    def announced_attributes(self) -> dict[str, Any]:
        """The DN service event for the receiver's clients: the DN's state as
        the owner announced it, without the mesh's own keys."""
        return {_DN: self.dn, **self.attributes, _EXT: {
            **self.state, "owner": self.owner, "ownership": self.ownership}}


@dataclass(frozen=True, slots=True)
class DnSnapshot(DnGranted):
    """The state of a DN the sender owns, sent to a Smart Proxy's bulk
    connection when it registers (``mesh=snapshot``; not passed to its clients)."""

    marker: ClassVar[str] = "snapshot"


@dataclass(frozen=True, slots=True)
class DnMoved:
    """``dn`` moved from ``from_node`` to ``owner``; ``snapshot`` is the agent
    to restore there (``agent-state-auto-restore``), if any."""

    marker: ClassVar[str] = "moved"

    dn: str
    owner: str
    from_node: str
    ownership: str
    since: float
    expires_in: float | None = None
    snapshot: MovedAgent | None = None

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        ext: dict[str, Any] = {"ownership": self.ownership, "since": self.since,
                               "expires-in": self.expires_in, _MARKER: self.marker,
                               "owner": self.owner, "from": self.from_node}
        if self.snapshot is not None:
            ext["snapshot"] = self.snapshot.to_wire()
        return _BACK_IN_SERVICE, {_DN: self.dn, _EXT: ext}

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> DnMoved:
        reader = _Reader(name, attributes, cls.marker, names=(_BACK_IN_SERVICE,))
        snapshot = reader.ext.get("snapshot")
        return cls(
            reader.dn(), reader.string("owner"), reader.string("from"),
            reader.ownership("ownership"), reader.number("since"),
            reader.optional_number("expires-in"),
            MovedAgent.from_wire(snapshot) if snapshot is not None else None)

    def announced_attributes(self) -> dict[str, Any]:
        """The DN service event for the receiver's clients (see :class:`DnGranted`)."""
        return {_DN: self.dn, _EXT: {"ownership": self.ownership, "owner": self.owner}}


@dataclass(frozen=True, slots=True)
class DnReleased:
    """``owner`` let go of ``dn``; ``cause`` says why (``unregistered``,
    ``expired``, ``unregister-address``, ``client-disconnected`` ...)."""

    marker: ClassVar[str] = "released"

    dn: str
    owner: str
    cause: str

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        return _OUT_OF_SERVICE, {_DN: self.dn, _EXT: {
            _MARKER: self.marker, "owner": self.owner, "cause": self.cause}}

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> DnReleased:
        reader = _Reader(name, attributes, cls.marker, names=(_OUT_OF_SERVICE,))
        return cls(reader.dn(), reader.string("owner"), reader.string("cause"))

    def announced_attributes(self) -> dict[str, Any]:
        """The DN service event for the receiver's clients (see :class:`DnGranted`)."""
        return {_DN: self.dn, _EXT: {"owner": self.owner}}


@dataclass(frozen=True, slots=True)
class CallState:
    """The sender's repeat of a call on its node for a DN the receiver owns:
    the call's last event ``name`` with its ``attributes``; ``answered``: the
    call reached ``EventEstablished`` (its release starts after-call work)."""

    marker: ClassVar[str] = "call-state"

    name: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    answered: bool = False

    def to_wire(self) -> tuple[str, dict[str, Any]]:
        attributes = dict(self.attributes)
        ext = dict(attributes.get(_EXT) or {})
        ext.update({_MARKER: self.marker, _ANSWERED: self.answered})
        attributes[_EXT] = ext
        return self.name, attributes

    @classmethod
    def from_wire(cls, name: str, attributes: Mapping[str, Any]) -> CallState:
        reader = _Reader(name, attributes, cls.marker, names=(name,))
        answered = reader.flag(_ANSWERED)
        ext = {k: v for k, v in reader.ext.items() if k not in (_MARKER, _ANSWERED)}
        event = {k: v for k, v in attributes.items() if k != _EXT and k not in _LINK}
        if ext:
            event[_EXT] = ext
        return cls(name, event, answered)


MeshEvent: TypeAlias = DnGranted | DnSnapshot | DnMoved | DnReleased | CallState

_EVENTS: Final[dict[str, Callable[[str, Mapping[str, Any]], MeshEvent]]] = {
    DnGranted.marker: DnGranted.from_wire,
    DnSnapshot.marker: DnSnapshot.from_wire,
    DnMoved.marker: DnMoved.from_wire,
    DnReleased.marker: DnReleased.from_wire,
    CallState.marker: CallState.from_wire,
}


def decode_event(name: str, attributes: Mapping[str, Any]) -> MeshEvent | None:
    """The mesh message an unsolicited event ``name`` from a peer carries, or
    None for an ordinary event (no ``mesh`` key)."""
    marker = _marker(name, _extensions(name, attributes))
    if marker is None:
        return None
    decode = _EVENTS.get(marker)
    if decode is None:
        raise MalformedMeshMessage(f"mesh={marker[:16]} names no mesh event", message=name,
                                   marker=marker)
    return decode(name, attributes)
