"""What decides when Redis cannot: a circuit breaker and an in-process limiter.

The breaker opens after `failures` consecutive Redis failures; while open, admissions do
not wait on Redis at all (the policy decides in microseconds). After `reset_s` one trial
call goes through; its success closes the breaker again.

The local limiter is the fail-open bound: the same sliding-window rules as the Redis
script, kept in this process, with each limit scaled by the gateway's share.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .auth import Limits


class CircuitBreaker:
    """Closed -> open after N failures -> one trial after reset_s -> closed on success."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._trial = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self._threshold

    def allow(self) -> bool:
        """May this call try Redis?"""
        if not self.is_open:
            return True
        if self._trial or self._clock() < self._open_until:
            return False
        self._trial = True  # half-open: exactly one call probes Redis
        return True

    def success(self) -> None:
        self._failures = 0
        self._trial = False

    def failure(self) -> None:
        self._failures += 1
        self._trial = False
        if self.is_open:
            self._open_until = self._clock() + self._reset_s


@dataclass
class _Tenant:
    admitted: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    tokens: int = 0
    streams: int = 0


class LocalLimiter:
    """Per-tenant sliding window and concurrency, in memory: the fail-open bound."""

    def __init__(self, share: float, window_s: float, clock: Callable[[], float] = time.monotonic):
        self._share = share
        self._window_s = window_s
        self._clock = clock
        self._tenants: dict[str, _Tenant] = collections.defaultdict(_Tenant)

    def _scaled(self, limit: int | None) -> int:
        # 0 means "no limit"; a positive limit never scales below one request.
        return 0 if not limit else max(1, math.floor(limit * self._share))

    def try_acquire(self, tenant: str, limits: Limits, tokens: int) -> float | None:
        """None when admitted; otherwise the seconds to wait."""
        t = self._tenants[tenant]
        now = self._clock()
        while t.admitted and t.admitted[0][0] <= now - self._window_s:
            t.tokens -= t.admitted.popleft()[1]
        rpm, tpm = self._scaled(limits.requests_per_minute), self._scaled(limits.tokens_per_minute)
        streams = self._scaled(limits.max_concurrent_streams)
        wait = self._window_s - (now - t.admitted[0][0]) if t.admitted else 1.0
        if (rpm and len(t.admitted) >= rpm) or (tpm and t.tokens + tokens > tpm):
            return max(wait, 0.001)
        if streams and t.streams >= streams:
            return 1.0
        t.admitted.append((now, tokens))
        t.tokens += tokens
        t.streams += 1
        return None

    def release(self, tenant: str) -> None:
        t = self._tenants.get(tenant)
        if t is not None and t.streams > 0:
            t.streams -= 1
