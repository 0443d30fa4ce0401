"""The T-Library session events: one family, small frozen dataclasses (docs/tlib.md, "Session")."""

from __future__ import annotations

import dataclasses

import pytest

from protocols.tlib import events, session
from protocols.tlib.errors import ErrorCode
from protocols.tlib.events import PeerLost, RequestReceived, SessionClosed, SessionEvent

EVENT_CLASSES = [getattr(events, name) for name in events.__all__ if name != "SessionEvent"]


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
def test_every_event_is_a_frozen_session_event(cls: type[SessionEvent]) -> None:
    assert issubclass(cls, SessionEvent)
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", events.__all__)
def test_the_session_module_re_exports_the_same_classes(name: str) -> None:
    assert getattr(session, name) is getattr(events, name)


def test_events_compare_by_value_and_cannot_change() -> None:
    lost = PeerLost("addp-timeout")
    assert lost == PeerLost("addp-timeout") != SessionClosed(ErrorCode.FRAME_TOO_LARGE, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lost.reason = "other"  # type: ignore[misc]
    request = RequestReceived("RequestAgentReady", 7, {"message": "RequestAgentReady"})
    assert isinstance(request, SessionEvent)
    assert request.reference_id == 7
