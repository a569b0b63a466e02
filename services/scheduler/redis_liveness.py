"""Whether a missing heartbeat can be trusted yet: not right after Redis restarted or failed over.

Heartbeat keys carry a TTL. A Redis that restarts from its AOF (or a replica promoted after a
failover) comes back with them already expired, so for a moment every live worker looks dead;
recovering then would fence and requeue all in-flight work. A missing heartbeat counts only
once this Redis instance (its `run_id`) has been up, as far as we have seen it, for at least
`grace_s`: the time workers need to re-announce themselves.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmserve.common.logging import get_logger

log = get_logger(__name__)


class RedisLiveness:
    def __init__(self, redis: aioredis.Redis, grace_s: float, clock=time.monotonic):
        self.redis = redis
        self.grace_s = grace_s
        self._clock = clock
        self._run_id: str | None = None
        self._settled_at = 0.0  # when heartbeats become trustworthy again

    async def heartbeats_trusted(self) -> bool:
        """False while the Redis instance is younger than the grace (by its uptime, or since
        we first saw its run_id, whichever ends later)."""
        info = await self.redis.info("server")
        run_id, uptime_s = str(info.get("run_id", "")), float(info.get("uptime_in_seconds", 0))
        now = self._clock()
        if run_id != self._run_id:
            if self._run_id is not None:
                log.warning("Redis restarted or failed over; recovery waits for workers to re-announce",
                            grace_s=self.grace_s)
                self._settled_at = now + self.grace_s
            self._run_id = run_id
        self._settled_at = max(self._settled_at, now + self.grace_s - uptime_s)
        return now >= self._settled_at
