"""Abuse protection at the SIP edge (guide: "SIP Proxy"; TESTING.md: sipvicious).

* :class:`RateLimiter` -- a token bucket per source IP: a flood from one
  address is answered ``503`` with ``Retry-After`` and counted, and does not
  use the capacity other sources need.
* :class:`AuthGuard` -- repeated failed authentication (401/403 from the node)
  from one source IP is first *slowed* (its responses are delayed, the delay
  growing with each failure) and then *refused* (403 for ``block_seconds``).
  A success clears the record. The answer never depends on whether the
  extension exists: the node answers unknown and known users alike, and the
  proxy only counts failures per source address.

Pure: time comes in as ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["AuthGuard", "AuthVerdict", "RateLimiter"]


class RateLimiter:
    """Token bucket per source IP (``rate`` requests/s, bursts of ``burst``).

    At most ``max_sources`` buckets are kept (least recently seen dropped): a
    forgotten source starts again with a full bucket.
    """

    def __init__(self, rate: float, burst: float, *, max_sources: int = 65536,
                 exempt: frozenset[str] = frozenset()) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.exempt = exempt
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self.refused = 0

    def allow(self, source: str, now: float) -> bool:
        if self.rate <= 0 or source in self.exempt:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[source] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[0] = tokens
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        self.refused += 1
        return False

    def retry_after(self) -> int:
        """Seconds a refused source should wait (Retry-After, §20.33)."""
        return max(1, round(1.0 / self.rate)) if self.rate > 0 else 1

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """What to do with a request from a source: refuse (403), or pass and delay
    its answer by ``delay`` seconds."""

    refuse: bool
    delay: float


#: the verdicts without a delay, made once (a frozen dataclass is slow to build)
_PASS: Final = AuthVerdict(False, 0.0)
_REFUSE: Final = AuthVerdict(True, 0.0)


@dataclass(slots=True)
class _Record:
    failures: int
    last: float
    blocked_until: float = 0.0


class AuthGuard:
    """Failed-authentication slowdown and refusal per source IP (see module doc)."""

    def __init__(self, *, slow_after: int = 3, block_after: int = 10,
                 base_delay: float = 0.5, max_delay: float = 4.0,
                 block_seconds: float = 60.0, forget_after: float = 600.0,
                 max_sources: int = 65536) -> None:
        self.slow_after = slow_after
        self.block_after = block_after
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.block_seconds = block_seconds
        self.forget_after = forget_after
        self.max_sources = max_sources
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def check(self, source: str, now: float) -> AuthVerdict:
        rec = self._records.get(source)
        if rec is None:
            return _PASS
        if rec.blocked_until > now:
            return _REFUSE
        if now - rec.last > self.forget_after:
            del self._records[source]
            return _PASS
        if rec.blocked_until and rec.blocked_until <= now:
            # the block is over: start counting again, but stay slowed
            rec.blocked_until = 0.0
            rec.failures = self.slow_after
        return AuthVerdict(False, self.delay_for(rec.failures))

    def delay_for(self, failures: int) -> float:
        if self.slow_after <= 0 or failures < self.slow_after:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2.0 ** (failures - self.slow_after)))

    def failed(self, source: str, now: float) -> bool:
        """Count one failure; True when the source is now refused."""
        rec = self._records.get(source)
        if rec is None:
            rec = self._records[source] = _Record(0, now)
            if len(self._records) > self.max_sources:
                self._records.popitem(last=False)
        rec.failures += 1
        rec.last = now
        self._records.move_to_end(source)
        if self.block_after > 0 and rec.failures >= self.block_after:
            rec.blocked_until = now + self.block_seconds
            return True
        return False

    def succeeded(self, source: str) -> None:
        self._records.pop(source, None)

    def failures(self, source: str) -> int:
        rec = self._records.get(source)
        return rec.failures if rec else 0

    def blocked(self, now: float) -> list[str]:
        return [s for s, r in self._records.items() if r.blocked_until > now]
