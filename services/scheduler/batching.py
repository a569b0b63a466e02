"""The batching window: hold a model's requests until N have come, or T tokens, or W ms passed.

A burst whose prefills should share steps then reaches one worker together (the seed's
dynamic batching). Off for a model whose `max_batch_wait_ms` is 0 (the default): every
request is dispatched at once, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .waiting import Pending


@dataclass(frozen=True)
class Window:
    max_requests: int = 0  # 0: no bound on the count
    max_tokens: int = 0  # prompt + max_tokens of the batch; 0: no bound
    max_wait_ms: int = 0  # 0: no window

    @property
    def enabled(self) -> bool:
        return self.max_wait_ms > 0 and self.max_requests != 1

    def full(self, requests: int, tokens: int) -> bool:
        """No more may join a batch this size."""
        return (0 < self.max_requests <= requests) or (0 < self.max_tokens <= tokens)

    def closes_at(self, held: list[Pending]) -> float:
        """Monotonic time the window of `held` (one model's requests, not empty) closes."""
        return min(p.held_since for p in held) + self.max_wait_ms / 1000

    def ready(self, held: list[Pending], now: float) -> bool:
        """Dispatch now: the batch is full or its oldest request waited the window out."""
        if not held:
            return False
        return self.full(len(held), sum(p.need_tokens for p in held)) or now >= self.closes_at(held)


def next_close(windows: dict[str, Window], held: list[Pending], now: float) -> float:
    """Seconds until the first open window closes (inf: none open)."""
    by_model: dict[str, list[Pending]] = {}
    for p in held:
        by_model.setdefault(p.model, []).append(p)
    closes = [windows[m].closes_at(ps) for m, ps in by_model.items() if m in windows and windows[m].enabled]
    return max(0.0, min(closes) - now) if closes else math.inf
