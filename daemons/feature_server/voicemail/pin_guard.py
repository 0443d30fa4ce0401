"""Slowing down PIN guessing: a mailbox whose PIN was entered wrong
``max_failures`` times with no right entry in between is locked for
``lock_time`` seconds after the last failure; retrieval calls to it are
refused (403) meanwhile. Driven by ``now``, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PinGuard"]


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


class PinGuard:
    def __init__(self, *, max_failures: int = 6, lock_time: float = 900.0) -> None:
        self.max_failures = max_failures
        self.lock_time = lock_time
        self._failures: dict[str, _Failures] = {}

    def checked(self, mailbox: str, ok: bool, now: float) -> bool:
        """Record one PIN entry; True when the mailbox is now locked."""
        if ok:
            self._failures.pop(mailbox, None)
            return False
        entry = self._failures.get(mailbox)
        if entry is None or now - entry.last >= self.lock_time:
            entry = self._failures[mailbox] = _Failures(0, now)
        entry.count += 1
        entry.last = now
        return entry.count >= self.max_failures

    def locked(self, mailbox: str, now: float) -> bool:
        entry = self._failures.get(mailbox)
        if entry is None:
            return False
        if now - entry.last >= self.lock_time:
            del self._failures[mailbox]
            return False
        return entry.count >= self.max_failures
