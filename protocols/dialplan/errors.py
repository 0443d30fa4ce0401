"""Typed errors of the dial-plan notation."""

from __future__ import annotations

__all__ = ["DialPlanError"]


class DialPlanError(ValueError):
    """A rule, partition, calling profile or plan that cannot be used.

    ``reason`` says what is wrong; ``where`` names the object (``partition
    Basic, rule 2``) when known. A feature-server answers it with 4xx and keeps
    the plan in force.
    """

    def __init__(self, reason: str, where: str | None = None) -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {reason}" if where else reason)

    def within(self, where: str) -> DialPlanError:
        """The same error, located inside ``where``."""
        return DialPlanError(self.reason, f"{where}, {self.where}" if self.where else where)
