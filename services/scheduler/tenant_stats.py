"""Per-tenant account of what this scheduler dispatched: token share and queue wait over the
last minute, refusals for deadlines since start (for `llmserve status`, which combines the
windows of all live replicas: llmserve.common.tenant_window)."""

from __future__ import annotations

import time
from collections import deque

from llmserve.common.tenant_window import TenantShare, TenantWindow, combine

WINDOW_S = 60.0


class TenantStats:
    def __init__(self, weights: dict[str, float]):
        self.weights = weights
        self._dispatched: dict[str, deque[tuple[float, int, float]]] = {}  # (monotonic, tokens, wait s)
        self.refused_deadline: dict[str, int] = {}

    def dispatched(self, tenant: str, tokens: int, wait_s: float) -> None:
        self._dispatched.setdefault(tenant, deque()).append((time.monotonic(), tokens, wait_s))

    def refused(self, tenant: str) -> None:
        self.refused_deadline[tenant] = self.refused_deadline.get(tenant, 0) + 1

    def window(self) -> list[TenantWindow]:
        """This replica's last minute, per tenant (what it publishes)."""
        cutoff = time.monotonic() - WINDOW_S
        for events in self._dispatched.values():
            while events and events[0][0] < cutoff:
                events.popleft()
        return [
            TenantWindow(tenant, self.weights.get(tenant, 1.0), sum(e[1] for e in self._dispatched.get(tenant, ())),
                         [e[2] * 1000 for e in self._dispatched.get(tenant, ())],
                         self.refused_deadline.get(tenant, 0))
            for tenant in sorted(set(self._dispatched) | set(self.refused_deadline))
        ]

    def shares(self) -> list[TenantShare]:
        """This replica's numbers alone (GetQueueStats)."""
        return combine([self.window()])
