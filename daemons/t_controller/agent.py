"""The agent state machine of a T-Controller (sans-I/O).

SIP Cluster Solution Guide, "Agent Availability for Routing", "T-Controller",
"Partially supported SIP Server functionality" (the agent options that work
in a cluster, all at application level) and "GWS Disaster Recovery
Scenarios"; the classic T-Library agent model: ``RequestAgentLogin``,
``RequestAgentReady``, ``RequestAgentNotReady``, ``RequestAgentLogout``
answered with ``EventAgentLogin``, ``EventAgentReady``, ``EventAgentNotReady``,
``EventAgentLogout``.

States and the table of legal transitions are explicit (:data:`TRANSITIONS`).
Whether the agent is on a call is tracked beside the state, from the call
events of the DN, so that availability for routing is "Ready and not on a
call". Time is passed in as ``now`` (seconds, monotonic): :meth:`AgentTable.
next_timer` says when :meth:`AgentTable.handle_timer` must run next for the
wrap-up (``wrap-up-time``) and inactivity (``auto-logout-timeout``) timers.

Every method returns the events to send, in order; a request that the state
forbids raises :class:`AgentError`, whose ``code`` and ``text`` go into the
``EventError`` the t-controller answers with.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from daemons.cluster.config import TServerOptions
from protocols.tlib.errors import ErrorCode, TLibError

__all__ = [
    "TRANSITIONS",
    "AgentError",
    "AgentEvent",
    "AgentOptions",
    "AgentSnapshot",
    "AgentState",
    "AgentTable",
    "AgentView",
    "AgentWorkMode",
    "EventAgentLogin",
    "EventAgentLogout",
    "EventAgentNotReady",
    "EventAgentReady",
    "Trigger",
]


class AgentState(StrEnum):
    """Where an agent is; ``AfterCallWork`` is the timed wrap-up after a call."""

    LOGGED_OUT = "LoggedOut"
    NOT_READY = "NotReady"
    READY = "Ready"
    AFTER_CALL_WORK = "AfterCallWork"


class AgentWorkMode(IntEnum):
    """``AttributeAgentWorkMode`` values of the classic T-Library."""

    UNKNOWN = 0
    MANUAL_IN = 1
    AUTO_IN = 2
    AFTER_CALL_WORK = 3
    AUX_WORK = 4
    NO_CALL_DISCONNECT = 5
    WALK_AWAY = 6
    RETURN_BACK = 7


class Trigger(StrEnum):
    """What moves an agent between states."""

    LOGIN = "login"
    READY = "ready"
    NOT_READY = "not-ready"
    WRAP_UP_START = "wrap-up-start"  # the agent's last call released, wrap-up-time > 0
    WRAP_UP_EXPIRED = "wrap-up-expired"
    ACW_IN_IDLE = "acw-in-idle"  # after-call work asked with no call, timed-acw-in-idle
    LOGOUT = "logout"  # requested, or logout-on-disconnect, auto-logout, DN out of service


S = AgentState
T = Trigger

#: The legal transitions; a pair that is absent is refused with an error.
TRANSITIONS: Mapping[tuple[AgentState, Trigger], AgentState] = MappingProxyType(
    {
        (S.LOGGED_OUT, T.LOGIN): S.NOT_READY,
        (S.NOT_READY, T.READY): S.READY,
        (S.READY, T.READY): S.READY,
        (S.AFTER_CALL_WORK, T.READY): S.READY,
        (S.READY, T.NOT_READY): S.NOT_READY,
        (S.NOT_READY, T.NOT_READY): S.NOT_READY,
        (S.AFTER_CALL_WORK, T.NOT_READY): S.NOT_READY,
        (S.READY, T.WRAP_UP_START): S.AFTER_CALL_WORK,
        (S.AFTER_CALL_WORK, T.WRAP_UP_START): S.AFTER_CALL_WORK,
        (S.AFTER_CALL_WORK, T.WRAP_UP_EXPIRED): S.READY,
        (S.READY, T.ACW_IN_IDLE): S.AFTER_CALL_WORK,
        (S.NOT_READY, T.ACW_IN_IDLE): S.AFTER_CALL_WORK,
        (S.AFTER_CALL_WORK, T.ACW_IN_IDLE): S.AFTER_CALL_WORK,
        (S.NOT_READY, T.LOGOUT): S.LOGGED_OUT,
        (S.READY, T.LOGOUT): S.LOGGED_OUT,
        (S.AFTER_CALL_WORK, T.LOGOUT): S.LOGGED_OUT,
    }
)

#: Reason key SIP Server adds when an agent sets NotReady with the ACW work
#: mode by hand; such a state is not restored on another node (guide,
#: ``agent-state-auto-restore``).
MANUAL_ACW_REASON = "ManualSetACWPeriod"


class AgentError(TLibError):
    """A request the agent state forbids; ``code``/``text`` for ``EventError``."""

    default_code = ErrorCode.INVALID_AGENT_STATE


# --------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """An agent event for the clients of the DN and the peer t-controllers."""

    name: ClassVar[str] = ""
    this_dn: str
    agent_id: str
    work_mode: AgentWorkMode = AgentWorkMode.UNKNOWN
    reasons: Mapping[str, str | int] = field(default_factory=lambda: MappingProxyType({}))

    def to_map(self) -> dict[str, Any]:
        """The T-Library wire map (docs/tlib.md): classic attribute names."""
        message: dict[str, Any] = {
            "message": self.name,
            "AttributeThisDN": self.this_dn,
            "AttributeAgentID": self.agent_id,
            "AttributeAgentWorkMode": int(self.work_mode),
        }
        if self.reasons:
            message["AttributeReasons"] = dict(self.reasons)
        return message


@dataclass(frozen=True, slots=True)
class EventAgentLogin(AgentEvent):
    name: ClassVar[str] = "EventAgentLogin"


@dataclass(frozen=True, slots=True)
class EventAgentReady(AgentEvent):
    """Carries ``site`` = the owner node's geo-location in AttributeReasons
    (guide: "Reservation Based on Agent Location")."""

    name: ClassVar[str] = "EventAgentReady"


@dataclass(frozen=True, slots=True)
class EventAgentNotReady(AgentEvent):
    name: ClassVar[str] = "EventAgentNotReady"


@dataclass(frozen=True, slots=True)
class EventAgentLogout(AgentEvent):
    """``reasons["cause"]`` names the option that logged the agent out when the
    agent did not ask (``logout-on-disconnect``, ``auto-logout-timeout``,
    ``logout-on-out-of-service``, ``ownership-moved``)."""

    name: ClassVar[str] = "EventAgentLogout"


# --------------------------------------------------------------------------
# options, views, snapshots


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """The application-level agent options (guide: "Partially supported SIP
    Server functionality": only the application level is supported)."""

    wrap_up_time: float = 0.0
    emulated_login_state: str = "not_ready"
    logout_on_disconnect: bool = False
    logout_on_out_of_service: bool = True
    auto_logout_timeout: float = 0.0  # minutes, 0 = never
    auto_logout_ready: bool = True
    #: agent reservation (guide: "Agent Reservation in SIP Cluster")
    request_collection_time: float = 0.3
    agent_reservation_timeout: float = 6.0
    #: after a call (and its wrap-up), seconds more of after-call work
    legal_guard_time: float = 0.0
    timed_acw_in_idle: bool = False
    acw_in_idle_force_ready: bool = True

    @classmethod
    def from_tserver(cls, options: TServerOptions) -> AgentOptions:
        return cls(
            wrap_up_time=float(options.wrap_up_time),
            emulated_login_state=options.emulated_login_state,
            logout_on_disconnect=options.logout_on_disconnect,
            logout_on_out_of_service=options.logout_on_out_of_service,
            auto_logout_timeout=float(options.auto_logout_timeout),
            auto_logout_ready=options.auto_logout_ready,
            request_collection_time=float(options.request_collection_time),
            agent_reservation_timeout=float(options.agent_reservation_timeout),
            legal_guard_time=float(options.legal_guard_time),
            timed_acw_in_idle=options.timed_acw_in_idle,
            acw_in_idle_force_ready=options.acw_in_idle_force_ready,
        )


@dataclass(frozen=True, slots=True)
class AgentView:
    """A read-only look at one logged-in agent."""

    agent_id: str
    dn: str
    state: AgentState
    work_mode: AgentWorkMode
    reasons: Mapping[str, str | int]
    on_call: bool
    client: str | None


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """What ``agent-state-auto-restore`` carries to a DN's new owner node."""

    agent_id: str
    dn: str
    state: AgentState  # READY or NOT_READY
    work_mode: AgentWorkMode
    reasons: Mapping[str, str | int]

    def to_map(self) -> dict[str, Any]:
        return {
            "AttributeAgentID": self.agent_id,
            "AttributeThisDN": self.dn,
            "state": self.state.value,
            "AttributeAgentWorkMode": int(self.work_mode),
            "AttributeReasons": dict(self.reasons),
        }


@dataclass(slots=True)
class _Agent:
    agent_id: str
    dn: str
    state: AgentState
    work_mode: AgentWorkMode
    reasons: dict[str, str | int]
    client: str | None
    last_activity: float
    wrap_up_deadline: float | None = None
    order: int = 0  # login order: timer outputs come in table order
    #: timed after-call work in idle: the state it ends in (acw-in-idle-force-ready)
    acw_return: AgentState | None = None


# --------------------------------------------------------------------------
# the table


class AgentTable:
    """The agents logged in on the DNs this node owns, and the calls on them.

    ``site`` is the geo-location reported in ``EventAgentReady``.
    ``agent_dns`` (when given) limits logins to those DNs (Extension and
    ACDPosition DNs of the switch). ``check_password(agent_id, password)``
    (when given) validates the login password.
    """

    def __init__(
        self,
        options: AgentOptions,
        *,
        site: str | None = None,
        agent_dns: Collection[str] | None = None,
        check_password: Callable[[str, str | None], bool] | None = None,
    ) -> None:
        self.options = options
        self.site = site
        self._agent_dns = agent_dns
        self._check_password = check_password
        self._by_dn: dict[str, _Agent] = {}
        self._dn_of_agent: dict[str, str] = {}
        self._calls: dict[str, set[str]] = {}
        #: calls that ever reached each DN (a reservation ends at the next one)
        self._offered: dict[str, int] = {}
        self._order = itertools.count()
        #: (deadline, dn) of wrap-up ends and inactivity logouts; an item whose
        #: agent's deadline changed since is stale and skipped when it reaches the top
        self._deadlines: list[tuple[float, str]] = []
        #: called with a DN whenever its agent's state or its calls change
        self._listeners: list[Callable[[str], None]] = []

    def watch(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(dn)`` after every change of a DN's agent state, work
        mode, reasons or calls (it runs inside the change: it should only note
        the DN and read the table later)."""
        self._listeners.append(listener)

    def _changed(self, dn: str) -> None:
        for listener in self._listeners:
            listener(dn)

    # -- queries -------------------------------------------------------------
    def state(self, dn: str) -> AgentState:
        agent = self._by_dn.get(dn)
        return agent.state if agent else AgentState.LOGGED_OUT

    def agent(self, dn: str) -> AgentView | None:
        agent = self._by_dn.get(dn)
        if agent is None:
            return None
        return AgentView(
            agent_id=agent.agent_id,
            dn=agent.dn,
            state=agent.state,
            work_mode=agent.work_mode,
            reasons=MappingProxyType(dict(agent.reasons)),
            on_call=self.on_call(dn),
            client=agent.client,
        )

    def dn_of(self, agent_id: str) -> str | None:
        return self._dn_of_agent.get(agent_id)

    def on_call(self, dn: str) -> bool:
        return bool(self._calls.get(dn))

    def offered(self, dn: str) -> int:
        """How many calls have reached the DN (rung or established) so far."""
        return self._offered.get(dn, 0)

    def calls(self, dn: str) -> frozenset[str]:
        """The ConnIDs of the calls the DN is on."""
        return frozenset(self._calls.get(dn, ()))

    def is_available(self, dn: str) -> bool:
        """Availability for routing: an agent Ready and not on a call."""
        return self.state(dn) is AgentState.READY and not self.on_call(dn)

    def is_busy(self, dn: str) -> bool:
        """On a call or in after-call work: DN ownership must not move now
        (guide: "GWS Disaster Recovery Scenarios")."""
        return self.on_call(dn) or self.state(dn) is AgentState.AFTER_CALL_WORK

    def logged_in(self) -> list[str]:
        return sorted(self._by_dn)

    # -- requests ------------------------------------------------------------
    def login(
        self,
        dn: str,
        agent_id: str,
        now: float,
        *,
        password: str | None = None,
        work_mode: AgentWorkMode = AgentWorkMode.UNKNOWN,
        reasons: Mapping[str, str | int] | None = None,
        client: str | None = None,
    ) -> list[AgentEvent]:
        """``RequestAgentLogin``. The agent lands in NotReady, or Ready when
        ``emulated-login-state = ready`` or the work mode is AutoIn/ManualIn."""
        if not agent_id:
            raise AgentError("Agent ID is empty", code=ErrorCode.UNKNOWN_AGENT)
        if self._agent_dns is not None and dn not in self._agent_dns:
            raise AgentError(f"DN {dn} is not an agent DN", code=ErrorCode.UNKNOWN_DN)
        current = self._by_dn.get(dn)
        if current is not None:
            raise AgentError(
                f"Agent {current.agent_id} is already logged in on DN {dn}",
                code=ErrorCode.AGENT_ALREADY_LOGGED_IN,
            )
        other_dn = self._dn_of_agent.get(agent_id)
        if other_dn is not None:
            raise AgentError(
                f"Agent {agent_id} is already logged in on DN {other_dn}",
                code=ErrorCode.AGENT_ALREADY_LOGGED_IN,
            )
        if self.on_call(dn):
            # agent-emu-login-on-call is not supported in a cluster (guide)
            raise AgentError(
                f"Login rejected: a call is in progress on DN {dn}",
                code=ErrorCode.INVALID_CALL_STATE,
            )
        if self._check_password is not None and not self._check_password(agent_id, password):
            raise AgentError(code=ErrorCode.INVALID_PASSWORD)
        agent = _Agent(
            agent_id=agent_id,
            dn=dn,
            state=AgentState.LOGGED_OUT,
            work_mode=work_mode,
            reasons=dict(reasons or {}),
            client=client,
            last_activity=now,
            order=next(self._order),
        )
        self._move(agent, Trigger.LOGIN)
        self._by_dn[dn] = agent
        self._dn_of_agent[agent_id] = dn
        events: list[AgentEvent] = [EventAgentLogin(dn, agent_id, work_mode, _frozen(reasons))]
        wants_ready = work_mode in (AgentWorkMode.AUTO_IN, AgentWorkMode.MANUAL_IN) or (
            work_mode is AgentWorkMode.UNKNOWN and self.options.emulated_login_state == "ready"
        )
        if wants_ready:
            self._move(agent, Trigger.READY)
            events.append(self._ready_event(agent))
        else:
            events.append(self._not_ready_event(agent))
        self._touch(agent)
        return events

    def ready(
        self,
        dn: str,
        now: float,
        *,
        work_mode: AgentWorkMode = AgentWorkMode.UNKNOWN,
        reasons: Mapping[str, str | int] | None = None,
    ) -> list[AgentEvent]:
        """``RequestAgentReady``: also ends after-call work early."""
        agent = self._require(dn)
        self._move(agent, Trigger.READY)
        agent.work_mode = work_mode
        agent.reasons = dict(reasons or {})
        agent.wrap_up_deadline = None
        agent.acw_return = None
        agent.last_activity = now
        self._touch(agent)
        return [self._ready_event(agent)]

    def not_ready(
        self,
        dn: str,
        now: float,
        *,
        work_mode: AgentWorkMode = AgentWorkMode.UNKNOWN,
        reasons: Mapping[str, str | int] | None = None,
    ) -> list[AgentEvent]:
        """``RequestAgentNotReady`` with a work mode (AuxWork, AfterCallWork ...)
        and reason codes. NotReady with AfterCallWork set by hand is untimed
        and marked ``ManualSetACWPeriod`` (guide, agent-state-auto-restore)."""
        agent = self._require(dn)
        options = self.options
        if (work_mode is AgentWorkMode.AFTER_CALL_WORK and options.timed_acw_in_idle
                and options.wrap_up_time > 0 and not self.on_call(dn)):
            # timed-acw-in-idle: wrap-up-time of after-call work, then Ready
            # (acw-in-idle-force-ready) or the state the agent had
            before = agent.state
            self._move(agent, Trigger.ACW_IN_IDLE)
            agent.acw_return = (AgentState.READY if options.acw_in_idle_force_ready
                                or before is AgentState.AFTER_CALL_WORK else before)
            agent.work_mode = work_mode
            agent.reasons = dict(reasons or {})
            agent.wrap_up_deadline = now + options.wrap_up_time
            agent.last_activity = now
            self._touch(agent)
            return [self._not_ready_event(agent)]
        self._move(agent, Trigger.NOT_READY)
        agent.acw_return = None
        agent.work_mode = work_mode
        agent.reasons = dict(reasons or {})
        if work_mode is AgentWorkMode.AFTER_CALL_WORK:
            agent.reasons[MANUAL_ACW_REASON] = 1
        agent.wrap_up_deadline = None
        agent.last_activity = now
        self._touch(agent)
        return [self._not_ready_event(agent)]

    def logout(
        self, dn: str, now: float, *, reasons: Mapping[str, str | int] | None = None
    ) -> list[AgentEvent]:
        """``RequestAgentLogout``. Allowed on a call: the call goes on (guide,
        "GWS disconnects from SIP Server": the agent is logged out, the call is
        preserved)."""
        agent = self._require(dn)
        return [self._logout(agent, dict(reasons or {}))]

    # -- call events ---------------------------------------------------------
    def call_established(self, dn: str, conn_id: str, now: float) -> list[AgentEvent]:
        """A call of the DN reached the established state (or rings on it)."""
        calls = self._calls.setdefault(dn, set())
        if conn_id not in calls:
            calls.add(conn_id)
            self._offered[dn] = self._offered.get(dn, 0) + 1
            self._changed(dn)
        agent = self._by_dn.get(dn)
        if agent is not None:
            agent.last_activity = now
            agent.wrap_up_deadline = None
            self._touch(agent)
        return []

    def call_released(
        self, dn: str, conn_id: str, now: float, *, wrap_up_time: float | None = None
    ) -> list[AgentEvent]:
        """A call of the DN released. When it was the last one and the agent is
        Ready (or already in wrap-up), after-call work starts for
        ``wrap-up-time`` seconds (``wrap_up_time`` overrides it, as
        AttributeExtensions ``wrap-up-time`` of the call may); 0 = none."""
        calls = self._calls.get(dn)
        if calls is None or conn_id not in calls:
            return []
        calls.discard(conn_id)
        if not calls:
            del self._calls[dn]
        self._changed(dn)
        agent = self._by_dn.get(dn)
        if agent is None:
            return []
        agent.last_activity = now
        if calls:
            return []
        duration = self.options.wrap_up_time if wrap_up_time is None else wrap_up_time
        # legal-guard-time: answered calls only (wrap_up_time 0.0 = not answered)
        guard = self.options.legal_guard_time if wrap_up_time != 0.0 else 0.0
        if duration + guard <= 0 or (agent.state, Trigger.WRAP_UP_START) not in TRANSITIONS:
            self._touch(agent)  # off the call: inactivity counts again
            return []
        self._move(agent, Trigger.WRAP_UP_START)
        agent.acw_return = None
        agent.work_mode = AgentWorkMode.AFTER_CALL_WORK
        agent.reasons = {"legal-guard-time": round(guard)} if guard > 0 else {}
        agent.wrap_up_deadline = now + duration + guard
        self._touch(agent)
        return [self._not_ready_event(agent)]

    def no_answer(self, dn: str, reason: Mapping[str, Any] | None,
                  now: float) -> list[AgentEvent]:
        """A routed call rang unanswered at the agent, or the agent was busy
        (guide: "No-Answer Supervision"): the node's ``EventReleased`` says in
        AttributeReason what to do (``no-answer-action``: ``notready`` -> Not
        Ready in AuxWork, ``logout``, ``none``) and why (``cause``)."""
        if not reason:
            return []
        action, cause = reason.get("no-answer-action"), reason.get("cause")
        agent = self._by_dn.get(dn)
        if agent is None or action not in ("notready", "logout"):
            return []
        reasons: dict[str, str | int] = {"cause": cause if isinstance(cause, str)
                                         else "agent-no-answer"}
        if action == "logout":
            return [self._logout(agent, reasons)]
        if (agent.state, Trigger.NOT_READY) not in TRANSITIONS:
            return []
        self._move(agent, Trigger.NOT_READY)
        agent.work_mode = AgentWorkMode.AUX_WORK
        agent.reasons = reasons
        agent.wrap_up_deadline = None
        agent.last_activity = now
        self._touch(agent)
        return [self._not_ready_event(agent)]

    def drop_calls(self, conn_ids: Collection[str], now: float) -> list[str]:
        """Forget the calls ``conn_ids`` without releasing them: they are on a
        node this t-controller lost (guide: "TC-layer between DC1 and DC2
        fails", Agent 2 step 7: "no call reported in the desktop because the
        call is in the disconnected DC", and the agent can log in). No event,
        no after-call work: the call is not over, it is out of sight. Returns
        the DNs that had one of them, in order."""
        wanted = conn_ids if isinstance(conn_ids, set | frozenset) else set(conn_ids)
        if not wanted:
            return []
        touched: list[str] = []
        for dn in sorted(self._calls):
            calls = self._calls[dn]
            if calls.isdisjoint(wanted):
                continue
            calls.difference_update(wanted)
            if not calls:
                del self._calls[dn]
            touched.append(dn)
            self._changed(dn)
            agent = self._by_dn.get(dn)
            if agent is not None:
                agent.last_activity = now
                self._touch(agent)  # off the call: inactivity counts again
        return touched

    # -- connection and service events -----------------------------------------
    def client_disconnected(self, client: str, now: float) -> list[AgentEvent]:
        """The desktop's T-Library connection is gone: with
        ``logout-on-disconnect`` its agents are logged out (calls go on)."""
        if not self.options.logout_on_disconnect:
            return []
        events: list[AgentEvent] = []
        for agent in [a for a in self._by_dn.values() if a.client == client]:
            events.append(self._logout(agent, {"cause": "logout-on-disconnect"}))
        return events

    def dn_out_of_service(self, dn: str, now: float) -> list[AgentEvent]:
        """The DN went out of service: ``logout-on-out-of-service`` logs out."""
        agent = self._by_dn.get(dn)
        if agent is None or not self.options.logout_on_out_of_service:
            return []
        return [self._logout(agent, {"cause": "logout-on-out-of-service"})]

    # -- ownership moves -------------------------------------------------------
    def snapshot(self, dn: str) -> AgentSnapshot | None:
        """The state to restore on a new owner node, or None when there is no
        agent or the state is not restorable (manual ACW, guide limitation)."""
        agent = self._by_dn.get(dn)
        if agent is None or MANUAL_ACW_REASON in agent.reasons:
            return None
        state = agent.state
        work_mode = agent.work_mode
        reasons = dict(agent.reasons)
        if state is AgentState.AFTER_CALL_WORK:
            # wrap-up would end in Ready; the new owner starts there
            state, work_mode, reasons = AgentState.READY, AgentWorkMode.UNKNOWN, {}
        return AgentSnapshot(agent.agent_id, dn, state, work_mode, MappingProxyType(reasons))

    def hand_over(
        self, dn: str, now: float, *, restore: bool
    ) -> tuple[list[AgentEvent], AgentSnapshot | None]:
        """The DN's ownership leaves this node: the agent is logged out here;
        with ``restore`` (agent-state-auto-restore) the snapshot to send to
        the new owner is returned as well."""
        agent = self._by_dn.get(dn)
        if agent is None:
            return [], None
        snap = self.snapshot(dn) if restore else None
        return [self._logout(agent, {"cause": "ownership-moved"})], snap

    def restore(
        self, snapshot: AgentSnapshot, now: float, *, client: str | None = None
    ) -> list[AgentEvent]:
        """Log the agent in again on this (new owner) node in its old state."""
        work_mode = snapshot.work_mode
        events = self.login(
            snapshot.dn,
            snapshot.agent_id,
            now,
            work_mode=AgentWorkMode.UNKNOWN,
            client=client,
        )
        agent = self._by_dn[snapshot.dn]
        if snapshot.state is AgentState.READY:
            if agent.state is not AgentState.READY:
                self._move(agent, Trigger.READY)
            agent.work_mode, agent.reasons = work_mode, dict(snapshot.reasons)
            events[1:] = [self._ready_event(agent)]
        else:
            self._move(agent, Trigger.NOT_READY)
            agent.work_mode, agent.reasons = work_mode, dict(snapshot.reasons)
            events[1:] = [self._not_ready_event(agent)]
        self._touch(agent)
        return events

    # -- timers ------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """The earliest wrap-up end or inactivity logout (O(log n) amortised)."""
        heap = self._deadlines
        by_dn = self._by_dn
        while heap:
            when, dn = heap[0]
            agent = by_dn.get(dn)
            if agent is not None and self._deadline(agent) == when:
                return when
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> list[AgentEvent]:
        """Wrap-up expiry (back to Ready) and inactivity logout."""
        events: list[AgentEvent] = []
        heap = self._deadlines
        due: dict[str, _Agent] = {}
        while heap and heap[0][0] <= now:
            dn = heapq.heappop(heap)[1]
            agent_due = self._by_dn.get(dn)
            if agent_due is not None:
                due[dn] = agent_due
        for agent in sorted(due.values(), key=lambda a: a.order):
            if agent.wrap_up_deadline is not None and now >= agent.wrap_up_deadline:
                back, agent.acw_return = agent.acw_return, None
                agent.wrap_up_deadline = None
                agent.reasons = {}
                agent.last_activity = now
                if back is AgentState.NOT_READY:  # acw-in-idle-force-ready = false
                    self._move(agent, Trigger.NOT_READY)
                    agent.work_mode = AgentWorkMode.AUX_WORK
                    events.append(self._not_ready_event(agent))
                else:
                    self._move(agent, Trigger.WRAP_UP_EXPIRED)
                    agent.work_mode = AgentWorkMode.UNKNOWN
                    events.append(self._ready_event(agent))
                self._touch(agent)
                continue
            auto = self._auto_logout_deadline(agent)
            if auto is not None and now >= auto:
                events.append(self._logout(agent, {"cause": "auto-logout-timeout"}))
            else:
                self._touch(agent)  # popped early (a stale item): keep its deadline
        return events

    # -- internals ---------------------------------------------------------------
    def _touch(self, agent: _Agent) -> None:
        """Queue the agent's current deadline (after any change of its state)."""
        when = self._deadline(agent)
        if when is None:
            return
        heap = self._deadlines
        heapq.heappush(heap, (when, agent.dn))
        if len(heap) > 2 * len(self._by_dn) + 64:
            # superseded deadlines pile up: rebuild from the agents
            self._deadlines = [(d, a.dn) for a in self._by_dn.values()
                               if (d := self._deadline(a)) is not None]
            heapq.heapify(self._deadlines)

    def _deadline(self, agent: _Agent) -> float | None:
        candidates = [agent.wrap_up_deadline, self._auto_logout_deadline(agent)]
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    def _auto_logout_deadline(self, agent: _Agent) -> float | None:
        if self.options.auto_logout_timeout <= 0 or self.on_call(agent.dn):
            return None
        if agent.state is AgentState.AFTER_CALL_WORK:
            return None
        if agent.state is AgentState.READY and not self.options.auto_logout_ready:
            return None
        return agent.last_activity + self.options.auto_logout_timeout * 60.0

    def _require(self, dn: str) -> _Agent:
        agent = self._by_dn.get(dn)
        if agent is None:
            raise AgentError(
                f"No agent is logged in on DN {dn}", code=ErrorCode.AGENT_NOT_LOGGED_IN
            )
        return agent

    def _move(self, agent: _Agent, trigger: Trigger) -> None:
        target = TRANSITIONS.get((agent.state, trigger))
        if target is None:
            code = (
                ErrorCode.AGENT_NOT_LOGGED_IN
                if agent.state is AgentState.LOGGED_OUT
                else ErrorCode.INVALID_AGENT_STATE
            )
            raise AgentError(
                f"Agent {agent.agent_id} on DN {agent.dn}: {trigger.value} "
                f"is not allowed in state {agent.state.value}",
                code=code,
            )
        agent.state = target
        self._changed(agent.dn)

    def _logout(self, agent: _Agent, reasons: dict[str, str | int]) -> AgentEvent:
        self._move(agent, Trigger.LOGOUT)
        del self._by_dn[agent.dn]
        del self._dn_of_agent[agent.agent_id]
        return EventAgentLogout(agent.dn, agent.agent_id, agent.work_mode, _frozen(reasons))

    def _ready_event(self, agent: _Agent) -> AgentEvent:
        reasons = dict(agent.reasons)
        if self.site is not None:
            reasons["site"] = self.site
        return EventAgentReady(agent.dn, agent.agent_id, agent.work_mode, _frozen(reasons))

    def _not_ready_event(self, agent: _Agent) -> AgentEvent:
        return EventAgentNotReady(agent.dn, agent.agent_id, agent.work_mode, _frozen(agent.reasons))


def _frozen(reasons: Mapping[str, str | int] | None) -> Mapping[str, str | int]:
    return MappingProxyType(dict(reasons or {}))
