"""Active out-of-service detection with a fake clock (guide: ``oos-check``, ``oos-force``)."""

from __future__ import annotations

import pytest

from protocols.sip.errors import SipError
from protocols.sip.oos import TRANSITIONS, NodeInput, NodeState, OosError, OosMonitor

CHECK = 5.0  # oos-check
FORCE = 2.0  # oos-force
STATUS = {NodeInput.ACTIVE_ANSWER: 200, NodeInput.STANDBY_ANSWER: 503}


def monitor_in(state: NodeState) -> OosMonitor:
    """A monitor whose node ``n1`` reached ``state`` by t=2 (an unknown node has not
    been checked yet)."""
    m = OosMonitor(["n1"], oos_check=CHECK, oos_force=FORCE)
    if state is not NodeState.UNKNOWN:
        assert m.due(0.0) == ["n1"]
    if state is NodeState.IN_SERVICE:
        assert m.answered("n1", 200, 0.5)
    elif state is NodeState.OUT_OF_SERVICE:
        assert m.tick(FORCE) == ["n1"]
    assert m.nodes["n1"].state is state
    return m


def cause(m: OosMonitor, trigger: NodeInput, now: float = 10.0) -> list[str]:
    """What makes ``trigger`` happen: a check sent at ``now`` and answered, or left
    unanswered for oos-force. The nodes :meth:`OosMonitor.tick` put out of service."""
    assert m.due(now) == ["n1"]
    if trigger is NodeInput.OOS_FORCE:
        assert m.tick(now + FORCE - 0.01) == []
        return m.tick(now + FORCE)
    m.answered("n1", STATUS[trigger], now + 0.1)
    return []


@pytest.mark.parametrize(("state", "trigger"), list(TRANSITIONS))
def test_every_transition_of_the_table(state: NodeState, trigger: NodeInput) -> None:
    m = monitor_in(state)
    gone = cause(m, trigger)
    h = m.nodes["n1"]
    assert h.state is TRANSITIONS[state, trigger]
    assert h.active is (trigger is NodeInput.ACTIVE_ANSWER)
    assert m.usable("n1") is (trigger is NodeInput.ACTIVE_ANSWER)
    assert m.alive("n1") is (trigger is not NodeInput.OOS_FORCE)
    assert gone == (["n1"] if trigger is NodeInput.OOS_FORCE else [])


NOT_IN_TABLE = [
    (state, trigger)
    for state in NodeState
    for trigger in NodeInput
    if (state, trigger) not in TRANSITIONS
]


def test_only_a_second_oos_force_is_refused() -> None:
    assert NOT_IN_TABLE == [(NodeState.OUT_OF_SERVICE, NodeInput.OOS_FORCE)]


@pytest.mark.parametrize(("state", "trigger"), NOT_IN_TABLE)
def test_inputs_missing_from_the_table_are_refused(state: NodeState, trigger: NodeInput) -> None:
    m = monitor_in(state)
    h = m.nodes["n1"]
    before = (h.state, h.active, h.transitions, list(h.changed))
    with pytest.raises(OosError) as err:
        h.apply(trigger, 9.0)
    assert isinstance(err.value, SipError)
    assert (h.state, h.active, h.transitions, h.changed) == before
    # the monitor does not report the node out of service a second time
    assert cause(m, trigger) == []
    assert (h.state, h.active, h.transitions, h.changed) == before


def test_transitions_count_routing_changes_only() -> None:
    m = monitor_in(NodeState.UNKNOWN)
    h = m.nodes["n1"]
    assert m.answered("n1", 200, 1.0)  # unknown -> in service, active
    assert not m.answered("n1", 200, 2.0)  # no change
    assert m.answered("n1", 503, 3.0)  # still in service, now standby
    assert cause(m, NodeInput.OOS_FORCE, 10.0) == ["n1"]
    assert m.answered("n1", 200, 20.0)  # back on the first answer
    assert h.transitions == 4
    assert h.changed == [(1.0, "in-service"), (3.0, "standby"), (12.0, "out-of-service"),
                         (20.0, "in-service")]
    assert h.as_dict()["transitions"] == 4


def test_history_keeps_the_last_ten_changes() -> None:
    m = monitor_in(NodeState.UNKNOWN)
    for i in range(12):
        m.answered("n1", 200 if i % 2 == 0 else 503, float(i))
    h = m.nodes["n1"]
    assert h.transitions == 12
    assert [t for t, _ in h.changed] == [float(i) for i in range(2, 12)]
