"""The T-Controller mesh messages (protocols/tlib/mesh.py; docs/t-controller.md,
"Links"): the wire form of each, round trips, and malformed ones refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.tlib.catalogue import validate
from protocols.tlib.errors import ErrorCode, InvalidAttribute
from protocols.tlib.framing import decode_body, encode_frame
from protocols.tlib.mesh import (
    CallState,
    ClaimWithdrawn,
    DnGranted,
    DnMoved,
    DnReleased,
    DnSnapshot,
    Interest,
    MalformedMeshMessage,
    MeshEvent,
    MeshRequest,
    MovedAgent,
    OwnershipClaim,
    RelayedRequest,
    decode_event,
    decode_request,
)

# -- the wire form, key for key -----------------------------------------------------


def test_interest_on_the_wire() -> None:
    assert Interest("1001").to_wire() == (
        "RequestRegisterAddress",
        {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": "interest"}})
    assert Interest("1001", registered=False).to_wire() == (
        "RequestUnregisterAddress",
        {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": "interest"}})


def test_claims_on_the_wire() -> None:
    sip = OwnershipClaim("1001", "SIPS_B", "sip", expires=315360000)
    assert sip.to_wire() == ("RequestRegisterAddress", {
        "AttributeThisDN": "1001",
        "AttributeExtensions": {"mesh": "claim", "mesh-node": "SIPS_B", "mesh-kind": "sip",
                                "mesh-expires": 315360000.0}})
    assert isinstance(sip.to_wire()[1]["AttributeExtensions"]["mesh-expires"], float)
    tlib = OwnershipClaim("2001", "SIPS_B", "t-library", client="Cluster#3", application="Cluster")
    assert tlib.to_wire() == ("RequestRegisterAddress", {
        "AttributeThisDN": "2001",
        "AttributeExtensions": {"mesh": "claim", "mesh-node": "SIPS_B", "mesh-kind": "t-library",
                                "mesh-client": "Cluster#3", "mesh-application": "Cluster"}})
    assert ClaimWithdrawn("2001", "SIPS_B", "Cluster#3").to_wire() == (
        "RequestUnregisterAddress", {
            "AttributeThisDN": "2001",
            "AttributeExtensions": {"mesh": "withdraw", "mesh-node": "SIPS_B",
                                    "mesh-client": "Cluster#3"}})
    assert ClaimWithdrawn("2001", "SIPS_B", "Cluster#3", gone=True).to_wire()[1][
        "AttributeExtensions"]["mesh"] == "client-gone"


def test_relayed_request_on_the_wire() -> None:
    request = RelayedRequest("RequestAgentReady", {
        "AttributeThisDN": "1001", "AttributeExtensions": {"site": "dc1"}}, client="wwe#4")
    assert request.to_wire() == ("RequestAgentReady", {
        "AttributeThisDN": "1001",
        "AttributeExtensions": {"site": "dc1", "mesh-client": "wwe#4"}})
    plain = RelayedRequest("RequestRegisterAddress", {"AttributeThisDN": "1001"})
    assert plain.to_wire() == ("RequestRegisterAddress", {"AttributeThisDN": "1001"})
    # the desktop's own extensions are not changed by the relay
    assert request.attributes["AttributeExtensions"] == {"site": "dc1"}


def test_decisions_on_the_wire() -> None:
    granted = DnGranted(
        "1001", "SIPS_A", "sip", 1763779200.5, None,
        state={"dn-state": "in-service", "agent-state": "Ready", "on-call": False},
        attributes={"AttributeAgentID": "agent1", "AttributeAgentWorkMode": "ManualIn"})
    name, attributes = granted.to_wire()
    assert name == "EventDNBackInService"
    assert attributes == {
        "AttributeThisDN": "1001", "AttributeAgentID": "agent1",
        "AttributeAgentWorkMode": "ManualIn",
        "AttributeExtensions": {"dn-state": "in-service", "agent-state": "Ready",
                                "on-call": False, "ownership": "sip",
                                "since": 1763779200.5, "expires-in": None,
                                "mesh": "granted", "owner": "SIPS_A"}}
    assert list(attributes) == ["AttributeThisDN", "AttributeAgentID", "AttributeAgentWorkMode",
                                "AttributeExtensions"]
    snapshot = DnSnapshot("1001", "SIPS_A", "sip", 1763779200.5)
    assert snapshot.to_wire()[1]["AttributeExtensions"]["mesh"] == "snapshot"
    moved = DnMoved("1001", "SIPS_B", "SIPS_A", "t-library", 1763779200.0, 3600.0,
                    MovedAgent("agent1", "1001", "Ready", 1, {"ReasonCode": "7"}))
    assert moved.to_wire() == ("EventDNBackInService", {
        "AttributeThisDN": "1001",
        "AttributeExtensions": {
            "ownership": "t-library", "since": 1763779200.0, "expires-in": 3600.0,
            "mesh": "moved", "owner": "SIPS_B", "from": "SIPS_A",
            "snapshot": {"AttributeAgentID": "agent1", "AttributeThisDN": "1001",
                         "state": "Ready", "AttributeAgentWorkMode": 1,
                         "AttributeReasons": {"ReasonCode": "7"}}}})
    assert "snapshot" not in DnMoved("1001", "SIPS_B", "SIPS_A", "sip", 0.0).to_wire()[1][
        "AttributeExtensions"]
    assert DnReleased("1001", "SIPS_A", "unregistered").to_wire() == ("EventDNOutOfService", {
        "AttributeThisDN": "1001",
        "AttributeExtensions": {"mesh": "released", "owner": "SIPS_A",
                                "cause": "unregistered"}})


def test_call_state_on_the_wire() -> None:
    call = CallState("EventEstablished", {"AttributeThisDN": "1001", "AttributeConnID": "00a1",
                                          "AttributeExtensions": {"wrap-up-time": 5}},
                     answered=True)
    assert call.to_wire() == ("EventEstablished", {
        "AttributeThisDN": "1001", "AttributeConnID": "00a1",
        "AttributeExtensions": {"wrap-up-time": 5, "mesh": "call-state",
                                "mesh-answered": True}})
    bare = CallState("EventRinging", {"AttributeThisDN": "1001", "AttributeConnID": "00a2"})
    assert bare.to_wire()[1]["AttributeExtensions"] == {"mesh": "call-state",
                                                         "mesh-answered": False}
    # taken back, the event is the call's own again
    assert decode_event(*call.to_wire()) == call
    assert decode_event(*bare.to_wire()) == bare
    assert "AttributeExtensions" not in bare.attributes


def test_announced_attributes_leave_out_the_mesh_keys() -> None:
    granted = DnGranted("1001", "SIPS_A", "sip", 1.0, 10.0,
                        state={"dn-state": "in-service", "agent-state": "NotReady"},
                        attributes={"AttributeAgentID": "agent1"})
    assert granted.announced_attributes() == {
        "AttributeThisDN": "1001", "AttributeAgentID": "agent1",
        "AttributeExtensions": {"dn-state": "in-service", "agent-state": "NotReady",
                                "owner": "SIPS_A", "ownership": "sip"}}
    moved = DnMoved("1001", "SIPS_B", "SIPS_A", "t-library", 1.0,
                    snapshot=MovedAgent("agent1", "1001", "Ready"))
    assert moved.announced_attributes() == {
        "AttributeThisDN": "1001",
        "AttributeExtensions": {"ownership": "t-library", "owner": "SIPS_B"}}
    assert DnReleased("1001", "SIPS_A", "expired").announced_attributes() == {
        "AttributeThisDN": "1001", "AttributeExtensions": {"owner": "SIPS_A"}}


def test_ordinary_messages_are_not_mesh_messages() -> None:
    assert decode_event("EventRinging", {"AttributeThisDN": "1001"}) is None
    assert decode_event("EventDNBackInService", {
        "AttributeThisDN": "1001", "AttributeExtensions": {"owner": "SIPS_A"}}) is None
    relayed = decode_request("RequestMakeCall", {"AttributeThisDN": "1001",
                                                 "AttributeOtherDN": "1002"})
    assert relayed == RelayedRequest("RequestMakeCall", {"AttributeThisDN": "1001",
                                                         "AttributeOtherDN": "1002"})
    assert relayed.client is None
    # a desktop's registration relayed to the owner carries no mesh key
    assert isinstance(decode_request("RequestRegisterAddress", {"AttributeThisDN": "1"}),
                      RelayedRequest)


def test_wire_messages_pass_the_catalogue_and_the_framing() -> None:
    requests: list[MeshRequest] = [
        Interest("1001"), Interest("1001", registered=False),
        OwnershipClaim("1001", "SIPS_B", "sip", expires=60.0),
        OwnershipClaim("2001", "SIPS_B", "t-library", client="c#1", application="Cluster"),
        ClaimWithdrawn("2001", "SIPS_B", "c#1", gone=True),
        RelayedRequest("RequestAgentLogin", {"AttributeThisDN": "1001",
                                             "AttributeAgentID": "agent1"}, client="wwe#1"),
    ]
    for request in requests:
        name, attributes = request.to_wire()
        message = {"message": name, "AttributeReferenceID": 7, **attributes}
        validate(message, kind="request")
        body = encode_frame(message)[4:]
        decoded = decode_body(body)
        assert decode_request(name, decoded) == request  # the link's attributes left out
    events: list[MeshEvent] = [
        DnGranted("1001", "SIPS_A", "sip", 1.5, None, {"dn-state": "in-service"},
                  {"AttributeAgentID": "agent1"}),
        DnSnapshot("1001", "SIPS_A", "t-library", 1.5, 30.0),
        DnMoved("1001", "SIPS_B", "SIPS_A", "t-library", 1.5, None,
                MovedAgent("agent1", "1001", "NotReady", 3, {"ReasonCode": 7})),
        DnReleased("1001", "SIPS_A", "peer-lost"),
        CallState("EventReleased", {"AttributeThisDN": "1001", "AttributeConnID": "00a1"},
                  answered=True),
    ]
    for event in events:
        name, attributes = event.to_wire()
        message = {"message": name, "AttributeEventSequenceNumber": 3, **attributes}
        validate(message, kind="event")
        decoded = decode_body(encode_frame(message)[4:])
        assert decode_event(name, decoded) == event  # the link's attributes left out


# -- round trips --------------------------------------------------------------------

_names = st.text(max_size=12)
_times = st.floats(allow_nan=False, allow_infinity=False, width=64)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31), _names)
_ownership = st.sampled_from(["sip", "t-library"])


def _map(keys: st.SearchStrategy[str], *, min_size: int = 0) -> st.SearchStrategy[Any]:
    return st.dictionaries(keys, _scalars, min_size=min_size, max_size=5)


def _keys(*reserved: str) -> st.SearchStrategy[str]:
    return st.text(max_size=10).filter(lambda k: k not in reserved)


_dn_state = _map(_keys("mesh", "owner", "ownership", "since", "expires-in"))
_agent_attributes = _map(_keys("AttributeThisDN", "AttributeExtensions"))
_moved_agents = st.builds(
    MovedAgent, _names, _names, st.sampled_from(["Ready", "NotReady"]),
    st.integers(0, 7),
    st.dictionaries(_names, st.one_of(_names, st.integers(-1000, 1000)), max_size=3))


@st.composite
def _event_attributes(draw: st.DrawFn, reserved: tuple[str, ...]) -> dict[str, Any]:
    """An event's or a request's own attributes: AttributeExtensions, if
    any, not empty and without the mesh keys ``reserved``."""
    attributes = draw(_map(_keys("AttributeExtensions")))
    ext = draw(st.none() | _map(_keys(*reserved), min_size=1))
    if ext is not None:
        attributes["AttributeExtensions"] = ext
    return attributes


_requests = st.one_of(
    st.builds(Interest, _names, st.booleans()),
    st.builds(OwnershipClaim, _names, _names, _ownership, st.none() | _names,
              st.none() | _names, st.none() | _times),
    st.builds(ClaimWithdrawn, _names, _names, _names, st.booleans()),
    st.builds(RelayedRequest,
              st.sampled_from(["RequestAgentLogin", "RequestAgentNotReady", "RequestMakeCall",
                               "RequestReleaseCall", "RequestQueryAddress"]),
              _event_attributes(("mesh", "mesh-client")), st.none() | _names),
)
_events = st.one_of(
    st.builds(DnGranted, _names, _names, _ownership, _times, st.none() | _times, _dn_state,
              _agent_attributes),
    st.builds(DnSnapshot, _names, _names, _ownership, _times, st.none() | _times, _dn_state,
              _agent_attributes),
    st.builds(DnMoved, _names, _names, _names, _ownership, _times, st.none() | _times,
              st.none() | _moved_agents),
    st.builds(DnReleased, _names, _names, _names),
    st.builds(CallState, st.sampled_from(["EventRinging", "EventEstablished", "EventHeld",
                                          "EventReleased"]),
              _event_attributes(("mesh", "mesh-answered")), st.booleans()),
)


@given(_requests)
def test_requests_round_trip(request: MeshRequest) -> None:
    name, attributes = request.to_wire()
    decoded = decode_request(name, attributes)
    assert decoded == request
    assert type(decoded) is type(request)
    assert decoded.to_wire() == (name, attributes)


@given(_events)
def test_events_round_trip(event: MeshEvent) -> None:
    name, attributes = event.to_wire()
    decoded = decode_event(name, attributes)
    assert decoded == event
    assert type(decoded) is type(event)
    assert decoded is not None and decoded.to_wire() == (name, attributes)


# -- malformed ones -----------------------------------------------------------------

_REG, _UNREG = "RequestRegisterAddress", "RequestUnregisterAddress"
_BACK, _OUT = "EventDNBackInService", "EventDNOutOfService"
_CLAIM = {"mesh": "claim", "mesh-node": "SIPS_B", "mesh-kind": "sip"}
_GRANTED = {"mesh": "granted", "owner": "SIPS_A", "ownership": "sip", "since": 1.0,
            "expires-in": None}
_MOVED = {"mesh": "moved", "owner": "SIPS_B", "from": "SIPS_A", "ownership": "sip",
          "since": 1.0, "expires-in": None}
_SNAPSHOT = {"AttributeAgentID": "agent1", "AttributeThisDN": "1001", "state": "Ready",
             "AttributeAgentWorkMode": 1, "AttributeReasons": {}}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    ext = {**base, **{k.replace("_", "-"): v for k, v in changes.items()}}
    return {k: v for k, v in ext.items() if v is not _GONE}


_GONE = object()


@pytest.mark.parametrize(("name", "attributes"), [
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": "what"}}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": 3}}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": ["mesh", "claim"]}),
    (_UNREG, {"AttributeThisDN": "1001", "AttributeExtensions": _CLAIM}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": "withdraw"}}),
    (_REG, {"AttributeExtensions": {"mesh": "interest"}}),
    (_REG, {"AttributeThisDN": 1001, "AttributeExtensions": {"mesh": "interest"}}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_CLAIM, mesh_node=_GONE)}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_CLAIM, mesh_node=7)}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_CLAIM, mesh_kind="x")}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_CLAIM, mesh_kind=_GONE)}),
    (_REG, {"AttributeThisDN": "1001",
            "AttributeExtensions": _with(_CLAIM, mesh_expires="soon")}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_CLAIM, mesh_expires=True)}),
    (_REG, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_CLAIM, mesh_client=4)}),
    (_REG, {"AttributeThisDN": "1001",
            "AttributeExtensions": _with(_CLAIM, mesh_application=["Cluster"])}),
    (_UNREG, {"AttributeThisDN": "1001",
              "AttributeExtensions": {"mesh": "withdraw", "mesh-node": "SIPS_B"}}),
    (_UNREG, {"AttributeThisDN": "1001",
              "AttributeExtensions": {"mesh": "client-gone", "mesh-client": "c#1"}}),
    ("RequestAgentReady", {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh-client": 9}}),
    ("RequestAgentReady", {"AttributeThisDN": "1001",
                           "AttributeExtensions": {"mesh": "interest"}}),
])
def test_malformed_requests_are_refused(name: str, attributes: dict[str, Any]) -> None:
    with pytest.raises(MalformedMeshMessage) as info:
        decode_request(name, attributes)
    error = info.value
    assert isinstance(error, InvalidAttribute)
    assert error.code is ErrorCode.INVALID_ATTRIBUTE
    assert error.text.startswith("Invalid attribute: ")
    assert error.message_name == name


@pytest.mark.parametrize(("name", "attributes", "marker"), [
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": "bogus"}}, "bogus"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": ["granted"]}}, None),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": "granted"}, None),
    (_BACK, {"AttributeExtensions": _GRANTED}, "granted"),
    (_OUT, {"AttributeThisDN": "1001", "AttributeExtensions": _GRANTED}, "granted"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_GRANTED, owner=_GONE)},
     "granted"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_GRANTED, owner=5)},
     "granted"),
    (_BACK, {"AttributeThisDN": "1001",
             "AttributeExtensions": _with(_GRANTED, ownership="dns")}, "granted"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_GRANTED, since=_GONE)},
     "granted"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_GRANTED, since="now")},
     "granted"),
    (_BACK, {"AttributeThisDN": "1001",
             "AttributeExtensions": _with(_GRANTED, expires_in="never")}, "granted"),
    (_BACK, {"AttributeThisDN": "1001",
             "AttributeExtensions": _with(_GRANTED, mesh="snapshot", owner=None)}, "snapshot"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_MOVED, **{"from": 3})},
     "moved"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(_MOVED, snapshot="agent")},
     "moved"),
    (_BACK, {"AttributeThisDN": "1001",
             "AttributeExtensions": _with(_MOVED, snapshot=_with(_SNAPSHOT, state=None))},
     "moved"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(
        _MOVED, snapshot=_with(_SNAPSHOT, AttributeAgentWorkMode="ManualIn"))}, "moved"),
    (_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _with(
        _MOVED, snapshot=_with(_SNAPSHOT, AttributeReasons={"ReasonCode": [7]}))}, "moved"),
    (_OUT, {"AttributeThisDN": "1001", "AttributeExtensions": {"mesh": "released",
                                                               "owner": "SIPS_A"}}, "released"),
    (_BACK, {"AttributeThisDN": "1001",
             "AttributeExtensions": {"mesh": "released", "owner": "SIPS_A", "cause": "x"}},
     "released"),
    ("EventEstablished", {"AttributeThisDN": "1001",
                          "AttributeExtensions": {"mesh": "call-state"}}, "call-state"),
    ("EventEstablished", {"AttributeThisDN": "1001", "AttributeExtensions": {
        "mesh": "call-state", "mesh-answered": "yes"}}, "call-state"),
])
def test_malformed_events_are_refused(name: str, attributes: dict[str, Any],
                                      marker: str | None) -> None:
    with pytest.raises(MalformedMeshMessage) as info:
        decode_event(name, attributes)
    assert info.value.code is ErrorCode.INVALID_ATTRIBUTE
    assert info.value.marker == marker


def test_a_move_without_its_origin_is_refused() -> None:
    with pytest.raises(MalformedMeshMessage, match="needs from"):
        decode_event(_BACK, {"AttributeThisDN": "1001",
                             "AttributeExtensions": _with(_MOVED, **{"from": _GONE})})


def test_optional_keys_may_be_left_out() -> None:
    """What the sender leaves out when it has nothing to say: a claim's
    client, application and expiry; a decision's expiry; a move's agent."""
    claim = decode_request(_REG, {"AttributeThisDN": "1001", "AttributeExtensions": _CLAIM})
    assert claim == OwnershipClaim("1001", "SIPS_B", "sip")
    granted = decode_event(_BACK, {"AttributeThisDN": "1001",
                                   "AttributeExtensions": _with(_GRANTED, expires_in=_GONE)})
    assert isinstance(granted, DnGranted) and granted.expires_in is None
    moved = decode_event(_BACK, {"AttributeThisDN": "1001", "AttributeExtensions": _MOVED})
    assert isinstance(moved, DnMoved) and moved.snapshot is None
    agent = MovedAgent.from_wire({"AttributeAgentID": "a", "AttributeThisDN": "1001",
                                  "state": "Ready"})
    assert agent == MovedAgent("a", "1001", "Ready", 0, {})


def test_reserved_keys_are_the_mesh_marker_and_its_family() -> None:
    from protocols.tlib.mesh import reserved_keys

    assert reserved_keys({"AttributeExtensions": {"mesh": "claim", "mesh-node": "n",
                                                  "meshy": 1, "ReasonCode": 3}}) == [
        "mesh", "mesh-node"]
    assert reserved_keys({"AttributeExtensions": {"ReasonCode": 3}}) == []
    assert reserved_keys({"AttributeThisDN": "1001"}) == []
    assert reserved_keys({"AttributeExtensions": "not a map"}) == []
