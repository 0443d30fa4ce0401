"""What every handler of the t-controller reads of its controller.

:class:`~daemons.t_controller.controller.TController` owns the state; the
request tables, TCport and the mesh each see it through a small Protocol
that extends :class:`ControllerState` with what that handler alone uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from daemons.t_controller.agent import AgentTable
from daemons.t_controller.ownership import OwnershipTable
from daemons.t_controller.peers import PeerTable


class ControllerState(Protocol):
    """The node this t-controller serves, its clock, and its agent, ownership
    and peer tables."""

    @property
    def node(self) -> str: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def agents(self) -> AgentTable: ...
    @property
    def ownership(self) -> OwnershipTable: ...
    @property
    def peers(self) -> PeerTable: ...
