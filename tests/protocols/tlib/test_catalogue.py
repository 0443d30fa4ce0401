"""T-Library catalogue and validation (docs/tlib.md, "Catalogue", "Validation")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from protocols.tlib.catalogue import (
    ATTRIBUTES,
    EVENTS,
    MAX_KVLIST_DEPTH,
    MESSAGES,
    REQUESTS,
    Kind,
    make_message,
    validate,
)
from protocols.tlib.errors import (
    ERROR_TEXT,
    ErrorCode,
    InvalidAttribute,
    MissingAttribute,
    UnexpectedMessage,
    UnknownMessage,
)

BRIEF_REQUESTS = """RequestRegisterClient RequestRegisterAddress RequestUnregisterAddress
RequestAgentLogin RequestAgentLogout RequestAgentReady RequestAgentNotReady RequestQueryAddress
RequestQueryServer RequestMakeCall RequestAnswerCall RequestReleaseCall RequestHoldCall
RequestRetrieveCall RequestSingleStepTransfer RequestInitiateTransfer RequestCompleteTransfer
RequestRouteCall RequestAttachUserData RequestUpdateUserData RequestDeleteUserData
RequestKeepAlive RequestReserveAgent RequestApplyTreatment""".split()
BRIEF_EVENTS = """EventServerInfo EventRegistered EventUnregistered EventDNOutOfService
EventDNBackInService EventAgentLogin EventAgentLogout EventAgentReady EventAgentNotReady
EventDialing EventRinging EventEstablished EventReleased EventHeld EventRetrieved
EventPartyChanged EventQueued EventDiverted EventRouteRequest EventRouteUsed
EventAttachedDataChanged EventAddressInfo EventError EventACK EventKeepAlive
EventAgentReserved EventAbandoned EventTreatmentApplied EventTreatmentNotApplied
EventTreatmentEnd""".split()


def test_catalogue_holds_the_classic_names() -> None:
    assert set(BRIEF_REQUESTS) == set(REQUESTS)
    assert set(BRIEF_EVENTS) == set(EVENTS)


def test_every_request_names_an_existing_answer() -> None:
    for name in REQUESTS:
        spec = MESSAGES[name]
        assert spec.answer in EVENTS, name
        assert "AttributeReferenceID" in spec.required


def test_every_error_code_has_a_text() -> None:
    assert set(ERROR_TEXT) == set(ErrorCode)


def _login(**extra: Any) -> dict[str, Any]:
    base = {"AttributeReferenceID": 1, "AttributeThisDN": "1001", "AttributeAgentID": "a1001"}
    return make_message("RequestAgentLogin", {**base, **extra})


def test_valid_request() -> None:
    spec = validate(_login(AttributeAgentWorkMode="AutoIn"), kind="request")
    assert spec.name == "RequestAgentLogin"


def test_not_ready_with_acw_and_reason() -> None:
    msg = make_message(
        "RequestAgentNotReady",
        AttributeReferenceID=4,
        AttributeThisDN="1001",
        AttributeAgentWorkMode="AfterCallWork",
        AttributeReason={"ReasonCode": "ManualSetACWPeriod"},
        AttributeExtensions={"ReasonCode": "Break"},
    )
    assert validate(msg).name == "RequestAgentNotReady"


def test_missing_required_attribute() -> None:
    msg = _login()
    del msg["AttributeAgentID"]
    with pytest.raises(MissingAttribute) as info:
        validate(msg)
    assert info.value.code == ErrorCode.MISSING_ATTRIBUTE
    assert info.value.attribute == "AttributeAgentID"
    assert "AttributeAgentID" in info.value.text


def test_missing_reference_id() -> None:
    msg = _login()
    del msg["AttributeReferenceID"]
    with pytest.raises(MissingAttribute):
        validate(msg)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("AttributeThisDN", 1001),  # int for a string
        ("AttributeReferenceID", "1"),  # string for an int
        ("AttributeReferenceID", True),  # bool is not an int here
        ("AttributeReferenceID", -1),  # unsigned
        ("AttributeReferenceID", 2**32),  # out of range
        ("AttributeAgentWorkMode", "Lunch"),  # outside the enumeration
        ("AttributeReason", "Break"),  # a KVList
        ("AttributeExtensions", {1: "x"}),  # non-string key
        ("AttributeExtensions", {"t": msgpack.Timestamp(1)}),  # extension value
        ("AttributeOtherDN", "2002"),  # registered, but not allowed in this request
        ("AttributeFoo", "x"),  # not registered at all
    ],
)
def test_invalid_attribute(attribute: str, value: Any) -> None:
    with pytest.raises(InvalidAttribute) as info:
        validate(_login(**{attribute: value}))
    assert info.value.code == ErrorCode.INVALID_ATTRIBUTE
    assert info.value.attribute == attribute


def test_kvlist_depth_limit() -> None:
    ok: Any = "leaf"
    for _ in range(MAX_KVLIST_DEPTH - 1):
        ok = {"k": ok}
    validate(_login(AttributeExtensions=ok))
    deep: Any = "leaf"
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    with pytest.raises(InvalidAttribute):
        validate(_login(AttributeExtensions={"k": deep}))


def test_user_data_values() -> None:
    msg = make_message(
        "RequestAttachUserData",
        AttributeReferenceID=2,
        AttributeThisDN="1001",
        AttributeConnID="006b02a5c9f1e001",
        AttributeUserData={
            "s": "x",
            "i": -5,
            "f": 1.5,
            "b": b"\x00",
            "n": None,
            "l": [1, "a"],
            "m": {"t": True},
        },
    )
    assert validate(msg).name == "RequestAttachUserData"


def test_unknown_message() -> None:
    with pytest.raises(UnknownMessage) as info:
        validate({"message": "RequestFlyToTheMoon", "AttributeReferenceID": 1})
    assert info.value.code == ErrorCode.UNKNOWN_MESSAGE
    with pytest.raises(UnknownMessage):
        validate({"AttributeReferenceID": 1})
    with pytest.raises(UnknownMessage):
        validate({"message": 7})


def test_direction() -> None:
    event = make_message("EventACK", AttributeReferenceID=1)
    with pytest.raises(UnexpectedMessage) as info:
        validate(event, kind="request")
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    with pytest.raises(UnexpectedMessage):
        validate(_login(), kind="event")


def test_events_may_carry_any_registered_attribute() -> None:
    event = make_message(
        "EventAgentReady",
        AttributeThisDN="1001",
        AttributeAgentID="a1001",
        AttributeAgentWorkMode="ManualIn",
        AttributeEventSequenceNumber=3,
        AttributeTimeinSecs=1,
        AttributeTimeinuSecs=2,
        AttributeConnID="x",  # not listed for this event, but registered
    )
    assert validate(event, kind="event").name == "EventAgentReady"
    with pytest.raises(InvalidAttribute):
        validate({**event, "AttributeBogus": 1}, kind="event")


def test_attribute_registry_types() -> None:
    assert ATTRIBUTES["AttributeUserData"].kind is Kind.KVLIST
    assert ATTRIBUTES["AttributeEventSequenceNumber"].kind is Kind.INT
    assert ATTRIBUTES["AttributeClientType"].values == {"smart", "legacy"}


def test_documentation_lists_the_whole_catalogue() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "tlib.md").read_text()
    for name in MESSAGES:
        assert f"`{name}`" in doc, name
    for attribute in ATTRIBUTES:
        assert f"`{attribute}`" in doc, attribute
    for code in ErrorCode:
        assert f"| {int(code)} | `{code.name}` |" in doc, code


def test_reserve_agent_request() -> None:
    msg = make_message("RequestReserveAgent", AttributeReferenceID=3, AttributeThisDN="1001",
                       AttributeAgentID="a1001", AttributePriority=8, AttributeTimeout=6)
    assert validate(msg, kind="request").answer == "EventAgentReserved"
    with pytest.raises(InvalidAttribute):
        validate({**msg, "AttributePriority": "high"}, kind="request")
    with pytest.raises(MissingAttribute):
        validate(make_message("RequestReserveAgent", AttributeReferenceID=4), kind="request")
