"""Redis side of dispatch: the atomic hand-over from a request stream to a worker stream."""

from __future__ import annotations

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.streams import ensure_group

from .waiting import Pending

# Only to a worker whose heartbeat is alive: recovery acts once it expired, so a peer's stale
# registry view can never place work on a worker already declared dead (-2, the entry stays
# held). Then ack: if another scheduler already handed this entry over (it reclaimed it from
# us), XACK returns 0 and nothing is dispatched twice. A cancelled request is dropped here.
_DISPATCH = """
if redis.call('EXISTS', KEYS[5]) == 0 then return -2 end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', 'data', ARGV[3])
redis.call('HSET', KEYS[3], 'state', 'dispatched', 'worker', ARGV[4], 'attempt', ARGV[5])
return 1
"""

_DROP = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'state', ARGV[3])
return 1
"""

DISPATCHED, CANCELLED, TAKEN_ELSEWHERE, WORKER_GONE = 1, 0, -1, -2


class Dispatcher:
    def __init__(self, redis: aioredis.Redis):
        self.redis = redis
        self._dispatch = redis.register_script(_DISPATCH)
        self._drop = redis.register_script(_DROP)
        self._worker_groups: set[str] = set()

    async def dispatch(self, p: Pending, worker_id: str) -> int:
        stream = keys.worker_stream(worker_id)
        if stream not in self._worker_groups:
            await ensure_group(self.redis, stream, keys.WORKER_GROUP)
            self._worker_groups.add(stream)
        return await self._dispatch(
            keys=[p.stream, stream, keys.request_key(p.request_id), keys.cancel_key(p.request_id),
                  keys.heartbeat_key(worker_id)],
            args=[keys.SCHEDULER_GROUP, p.entry_id, p.payload, worker_id, p.attempt],
        )

    def forget_groups(self) -> None:
        """Re-create worker stream groups on next use (Redis came back empty)."""
        self._worker_groups.clear()

    async def drop(self, p: Pending, state: str) -> bool:
        """Acknowledge a request that will not run (expired, cancelled); False if taken elsewhere."""
        result = await self._drop(keys=[p.stream, keys.request_key(p.request_id)],
                                  args=[keys.SCHEDULER_GROUP, p.entry_id, state])
        return result == 1

    async def cancelled(self, request_ids: list[str]) -> set[str]:
        if not request_ids:
            return set()
        flags = await self.redis.mget([keys.cancel_key(r) for r in request_ids])
        return {r for r, f in zip(request_ids, flags, strict=True) if f is not None}
