"""The T-Library wire form of agent requests and events (docs/tlib.md,
"Catalogue": ``AttributeAgentWorkMode`` is a string enumeration,
``AttributeReason`` a kvlist).

The agent state machine (:mod:`daemons.t_controller.agent`) speaks in
:class:`AgentWorkMode` numbers and reason maps; this module turns its events
into catalogue-valid attribute maps and reads the work mode and reasons of a
desktop's request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemons.t_controller.agent import AgentEvent, AgentView, AgentWorkMode
from protocols.tlib.errors import ErrorCode, TLibError

__all__ = [
    "WORK_MODE_BY_NAME",
    "agent_event_attributes",
    "agent_view_attributes",
    "request_reasons",
    "request_work_mode",
    "work_mode_name",
]

#: ``AttributeAgentWorkMode`` names (docs/tlib.md) and the state machine's values.
WORK_MODE_BY_NAME: Mapping[str, AgentWorkMode] = {
    "Unknown": AgentWorkMode.UNKNOWN,
    "ManualIn": AgentWorkMode.MANUAL_IN,
    "AutoIn": AgentWorkMode.AUTO_IN,
    "AfterCallWork": AgentWorkMode.AFTER_CALL_WORK,
    "AuxWork": AgentWorkMode.AUX_WORK,
    "NoCallDisconnect": AgentWorkMode.NO_CALL_DISCONNECT,
    "WalkAway": AgentWorkMode.WALK_AWAY,
    "ReturnBack": AgentWorkMode.RETURN_BACK,
}
_NAME_BY_WORK_MODE = {mode: name for name, mode in WORK_MODE_BY_NAME.items()}


def work_mode_name(mode: AgentWorkMode) -> str:
    return _NAME_BY_WORK_MODE[mode]


def request_work_mode(request: Mapping[str, Any]) -> AgentWorkMode:
    """The request's ``AttributeAgentWorkMode`` (the catalogue checked the name)."""
    name = request.get("AttributeAgentWorkMode")
    if name is None:
        return AgentWorkMode.UNKNOWN
    return WORK_MODE_BY_NAME[name]


def request_reasons(request: Mapping[str, Any]) -> dict[str, str | int]:
    """Reason codes of an agent request: ``AttributeReason``, or the
    ``ReasonCode`` key of ``AttributeExtensions`` (docs/tlib.md: "reason codes
    travel in AttributeReason or in AttributeExtensions"). The agent state
    keeps string and integer codes only."""
    reasons: dict[str, str | int] = {}
    extensions = request.get("AttributeExtensions") or {}
    if "ReasonCode" in extensions:
        reasons["ReasonCode"] = _reason_value("AttributeExtensions", "ReasonCode",
                                              extensions["ReasonCode"])
    for key, value in (request.get("AttributeReason") or {}).items():
        reasons[key] = _reason_value("AttributeReason", key, value)
    return reasons


def _reason_value(attribute: str, key: str, value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TLibError(
            f"Invalid attribute: {attribute} {key!r} must be a string or an integer",
            code=ErrorCode.INVALID_ATTRIBUTE,
        )
    return value


def agent_event_attributes(event: AgentEvent) -> dict[str, Any]:
    """The attributes of an agent event as the catalogue wants them."""
    attributes: dict[str, Any] = {
        "AttributeThisDN": event.this_dn,
        "AttributeAgentID": event.agent_id,
        "AttributeAgentWorkMode": work_mode_name(event.work_mode),
    }
    if event.reasons:
        attributes["AttributeReason"] = dict(event.reasons)
    return attributes


def agent_view_attributes(view: AgentView | None) -> dict[str, Any]:
    """Agent attributes for ``EventRegistered`` / ``EventAddressInfo``."""
    if view is None:
        return {}
    attributes: dict[str, Any] = {
        "AttributeAgentID": view.agent_id,
        "AttributeAgentWorkMode": work_mode_name(view.work_mode),
    }
    if view.reasons:
        attributes["AttributeReason"] = dict(view.reasons)
    return attributes
