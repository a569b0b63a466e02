"""Per-tenant account of what this scheduler dispatched: token share and queue wait over the
last minute, refusals for deadlines since start (for `llmserve status`)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from llmserve.common.stats import quantile

WINDOW_S = 60.0


@dataclass(frozen=True)
class TenantShare:
    tenant: str
    weight: float
    tokens_last_minute: int
    share: float
    weight_share: float
    wait_p50_ms: float
    wait_p99_ms: float
    refused_deadline: int


class TenantStats:
    def __init__(self, weights: dict[str, float]):
        self.weights = weights
        self._dispatched: dict[str, deque[tuple[float, int, float]]] = {}  # (monotonic, tokens, wait s)
        self.refused_deadline: dict[str, int] = {}

    def dispatched(self, tenant: str, tokens: int, wait_s: float) -> None:
        self._dispatched.setdefault(tenant, deque()).append((time.monotonic(), tokens, wait_s))

    def refused(self, tenant: str) -> None:
        self.refused_deadline[tenant] = self.refused_deadline.get(tenant, 0) + 1

    def shares(self) -> list[TenantShare]:
        cutoff = time.monotonic() - WINDOW_S
        for events in self._dispatched.values():
            while events and events[0][0] < cutoff:
                events.popleft()
        tokens = {t: sum(e[1] for e in ev) for t, ev in self._dispatched.items()}
        total = sum(tokens.values())
        active = [t for t, n in tokens.items() if n]
        weight_total = sum(self.weights.get(t, 1.0) for t in active)
        out = []
        for tenant in sorted(set(self._dispatched) | set(self.refused_deadline)):
            waits = [e[2] * 1000 for e in self._dispatched.get(tenant, ())]
            weight = self.weights.get(tenant, 1.0)
            out.append(TenantShare(
                tenant, weight, tokens.get(tenant, 0), tokens.get(tenant, 0) / total if total else 0.0,
                weight / weight_total if tenant in active else 0.0,
                _wait_ms(waits, 0.5), _wait_ms(waits, 0.99), self.refused_deadline.get(tenant, 0)))
        return out


def _wait_ms(waits: list[float], q: float) -> float:
    return quantile(waits, q, method="floor", default=0.0) or 0.0
