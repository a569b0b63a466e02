"""Reads the worker registry in Redis so "worker down" does not depend on the worker itself.

A dead worker exports nothing, so its own gauges only go stale; the registry (heartbeats with
a TTL, see llmserve.common.workers) says positively that no live worker is left. Every poll
records `llmserve.workers{state="live"|"draining"}` in total (no model label) and per model,
with `service="monitor"`; models seen once keep reporting 0 after their last worker is gone.
When Redis is unreachable nothing is recorded, so the series go stale instead of reading 0.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmserve.common.logging import get_logger
from llmserve.common.workers import registry_snapshot

from .series import Kind
from .store import MetricStore

log = get_logger(__name__)
_SOURCE = {"service": "monitor", "instance": "registry"}


class RegistryProbe:
    """Turns registry snapshots into `llmserve.workers` samples."""

    def __init__(self, redis: aioredis.Redis, store: MetricStore, models: tuple[str, ...] = ()):
        self.redis = redis
        self.store = store
        self.models: set[str] = set(models)
        self._failing = False

    async def poll(self) -> bool:
        """One reading; False when Redis did not answer."""
        try:
            live, _dead = await registry_snapshot(self.redis)
        except (RedisError, OSError) as e:
            if not self._failing:  # log the change, not every poll
                log.warning("worker registry unreadable", error=type(e).__name__)
            self._failing = True
            return False
        if self._failing:
            log.info("worker registry readable again")
        self._failing = False
        self._record(None, [w for w in live if not w.draining], [w for w in live if w.draining])
        for w in live:
            self.models.update(w.models)
        for model in self.models:
            serving = [w for w in live if model in w.models]
            self._record(model, [w for w in serving if not w.draining], [w for w in serving if w.draining])
        return True

    def _record(self, model: str | None, live: list, draining: list) -> None:
        extra = {} if model is None else {"model": model}
        for state, workers in (("live", live), ("draining", draining)):
            self.store.record(
                "llmserve.workers",
                Kind.GAUGE,
                {**extra, "state": state, **_SOURCE},
                float(len(workers)),
                unit="{worker}",
                description="Workers in the registry.",
            )
