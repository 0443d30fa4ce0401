"""No-answer supervision of routed calls (guide: "No-Answer Supervision" of
"Partially supported SIP Server functionality": ``agent-no-answer-timeout``,
``agent-no-answer-action``, ``agent-no-answer-overflow`` at application
level, the ``NO_ANSWER_TIMEOUT`` / ``NO_ANSWER_OVERFLOW`` /
``NO_ANSWER_ACTION`` extensions of the routing request, and
``set-notready-on-busy``, and ``after-routing-timeout``; docs/t-controller.md,
"Agent no-answer").

A router's ``RequestRouteCall`` sends a call from a routing point to an
agent's DN. That leg rings for ``NO_ANSWER_TIMEOUT`` (the request's
AttributeExtensions) or ``agent-no-answer-timeout`` seconds instead of
``extn-no-answer-timeout``, never longer than ``after-routing-timeout`` (the
most a routed call waits for its destination; when that is what ends the
ringing the cause is ``after-routing-timeout`` and the action ``none``: the
agent is not blamed). When the agent does not answer, or answers busy:

* the leg's ``EventReleased`` carries ``AttributeReason``
  ``{"cause": "agent-no-answer" | "agent-busy", "no-answer-action": ACTION}``
  (``NO_ANSWER_ACTION``, else ``agent-no-answer-action``; for busy,
  ``notready`` when ``set-notready-on-busy`` else ``none``): the agent's
  owner t-controller applies it (Not Ready, logout, nothing);
* the call goes on: to the next DN of ``NO_ANSWER_OVERFLOW`` (a comma list)
  or ``agent-no-answer-overflow`` not tried yet, else back to the routing
  point it came from, whose router picks the next agent (at most
  :data:`MAX_RECALLS` times).

Sans-I/O: the Session Controller asks, this module answers from the routing
decision it was told about.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemons.cluster.config import ClusterConfig, TServerOptions
from daemons.runtime.management import Metrics, TallyCounter

__all__ = ["MAX_RECALLS", "NoAnswerOutcome", "NoAnswerSupervision"]

#: Times a call goes back to its routing point after agents did not answer.
MAX_RECALLS = 5
ACTIONS = ("notready", "logout", "none")


@dataclass(slots=True)
class _Routed:
    routing_point: str
    agent_dn: str
    extensions: Mapping[str, Any]
    recalls: int = 0
    capped: bool = False  # after-routing-timeout is shorter than the no-answer timeout


@dataclass(frozen=True, slots=True)
class NoAnswerOutcome:
    """What follows an unanswered (or busy) routed leg."""

    reason: dict[str, str]  # AttributeReason of the leg's EventReleased
    next_dn: str | None  # where the call goes next (an overflow DN or the routing point)
    recall: bool = False  # next_dn is the routing point: route it again


@dataclass
class NoAnswerSupervision:
    """The routed calls of a node, by ConnID."""

    _routed: dict[str, _Routed] = field(default_factory=dict)
    _unreachable: TallyCounter | None = None

    def routed(self, conn_id: str, routing_point: str, agent_dn: str,
               extensions: Mapping[str, Any] | None) -> None:
        """A router sent the call from ``routing_point`` to ``agent_dn``."""
        previous = self._routed.get(conn_id)
        entry = _Routed(routing_point, agent_dn, dict(extensions or {}))
        if previous is not None:
            entry.recalls = previous.recalls
        self._routed[conn_id] = entry

    def forget(self, conn_id: str) -> None:
        self._routed.pop(conn_id, None)

    def unreachable(self, conn_id: str, dn: str, config: ClusterConfig,
                    options: TServerOptions, metrics: Metrics) -> str | None:
        """A router sent the call to ``dn``, which cannot be reached (out of
        service, no binding): the routing point's ``default-dn`` (else the
        application's) takes it, so that no call is lost; counted. None when
        the call was not routed to ``dn`` or there is no default."""
        entry = self._routed.get(conn_id)
        if entry is None or entry.agent_dn != dn:
            return None
        rp = config.dns.get(entry.routing_point)
        default = rp.options.get("default-dn") if rp is not None else None
        default = default if isinstance(default, str) else options.default_dn
        if self._unreachable is None:
            self._unreachable = metrics.tally(
                "routed_to_unreachable", "Calls a router sent to a DN that could not be "
                "reached, by what took them", ("to",))
        self._unreachable.labels("default-dn" if default and default != dn else "none").inc()
        entry.agent_dn = ""  # decided: the default is not supervised as an agent
        return default if default != dn else None

    def timeout(self, conn_id: str, dn: str, options: TServerOptions,
                default: float) -> float:
        """How long the leg to ``dn`` rings: the routed agent's no-answer timeout."""
        entry = self._routed.get(conn_id)
        if entry is None or entry.agent_dn != dn:
            return default
        value = _number(entry.extensions.get("NO_ANSWER_TIMEOUT"))
        no_answer = value if value is not None else options.agent_no_answer_timeout
        cap = options.after_routing_timeout
        entry.capped = 0 < cap < no_answer
        return cap if entry.capped else no_answer

    def after(self, conn_id: str, dn: str, *, no_answer: bool, status: int,
              options: TServerOptions, tried: Collection[str]) -> NoAnswerOutcome | None:
        """The routed agent at ``dn`` did not answer (``no_answer``) or answered
        ``status``: the reason for its EventReleased and where the call goes;
        None when this is not a routed agent's no-answer or busy."""
        entry = self._routed.get(conn_id)
        if entry is None or entry.agent_dn != dn:
            return None
        busy = status in (486, 600)
        if not no_answer and not busy:
            return None
        if no_answer and entry.capped:
            action, cause = "none", "after-routing-timeout"
        elif no_answer:
            action = str(entry.extensions.get("NO_ANSWER_ACTION") or "")
            if action not in ACTIONS:
                action = options.agent_no_answer_action
            cause = "agent-no-answer"
        else:
            action = "notready" if options.set_notready_on_busy else "none"
            cause = "agent-busy"
        reason = {"cause": cause, "no-answer-action": action}
        overflow = entry.extensions.get("NO_ANSWER_OVERFLOW")
        candidates = ([d.strip() for d in overflow.split(",") if d.strip()]
                      if isinstance(overflow, str) else list(options.agent_no_answer_overflow))
        next_dn = next((d for d in candidates if d not in tried and d != dn), None)
        if next_dn is not None:
            return NoAnswerOutcome(reason, next_dn)
        if entry.recalls >= MAX_RECALLS:
            return NoAnswerOutcome(reason, None)
        entry.recalls += 1
        return NoAnswerOutcome(reason, entry.routing_point, recall=True)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if number > 0 else None
    return None
