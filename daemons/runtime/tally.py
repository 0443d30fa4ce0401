"""The child of a :class:`~daemons.runtime.management.TallyCounter`: what a
per-message path counts with.

Compiled with the runtime's hot path (``daemons.runtime.COMPILED_MODULES``):
counting a message is then a native method call, not an interpreted frame.
"""

from __future__ import annotations

__all__ = ["Tally"]


class Tally:
    """One labelled child: a plain integer, read by the registry when scraped."""

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount
