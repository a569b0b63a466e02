"""Recovery of work from dead workers.

A worker is dead when it is registered but its heartbeat expired. One scheduler (a Redis
lock) takes each dead worker's stream: for every unfinished request it fences a new attempt
at the owning gateway (so a worker that was only stalled can no longer deliver), learns what
the client already received, and re-enqueues the request to resume right after it. A request
that has killed `max_attempts` workers goes to the dead-letter stream and its client gets an
error. Fencing and the atomic move are `llmserve.common.tokensink.handoff`, shared with a worker's
forced unload, so a request is never run twice nor lost.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.logging import get_logger
from llmserve.common.redis_keys import PAYLOAD_FIELD
from llmserve.common.tokensink.client import SinkClient
from llmserve.common.tokensink.handoff import REQUEUED, Handoff
from llmserve.common.v1 import work_pb2

log = get_logger(__name__)


class WorkerRecovery:
    def __init__(self, redis: aioredis.Redis, sink: SinkClient, owner: str, *, max_attempts: int = 3,
                 lock_ms: int = 15_000):
        self.redis = redis
        self.sink = sink
        self.owner = owner
        self.max_attempts = max_attempts
        self.lock_ms = lock_ms
        self.handoff = Handoff(redis, sink)
        self.recovered = 0

    async def recover(self, dead_worker_ids: list[str]) -> None:
        for worker_id in dead_worker_ids:
            lock = f"{keys.PREFIX}:recovering:{worker_id}"
            if not await self.redis.set(lock, self.owner, nx=True, px=self.lock_ms):
                continue  # another scheduler is on it
            try:
                await self._recover_worker(worker_id)
            finally:
                await self.redis.delete(lock)

    async def _recover_worker(self, worker_id: str) -> None:
        stream = keys.worker_stream(worker_id)
        entries = await self.redis.xrange(stream)
        if entries:
            log.warning("recovering work of a dead worker", worker_id=worker_id, requests=len(entries))
        for entry_id, fields in entries:
            await self._recover_entry(stream, entry_id, work_pb2.WorkItem.FromString(fields[PAYLOAD_FIELD.encode()]))
        if await self.redis.xlen(stream) == 0:
            # Nothing left: forget the worker (a stalled one re-registers with its next heartbeat).
            pipe = self.redis.pipeline(transaction=True)
            pipe.srem(keys.WORKERS_SET, worker_id)
            pipe.delete(stream)
            await pipe.execute()

    async def _recover_entry(self, stream: str, entry_id, item: work_pb2.WorkItem) -> None:
        if await self.handoff.resume_elsewhere(stream, entry_id, item, self.max_attempts) == REQUEUED:
            self.recovered += 1
