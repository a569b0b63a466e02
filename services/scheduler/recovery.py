"""Recovery of work from dead workers.

A worker is dead when it is registered but its heartbeat expired. One scheduler (a Redis
lock) takes each dead worker's stream: for every unfinished request it fences a new attempt
at the owning gateway (so a worker that was only stalled can no longer deliver), learns what
the client already received, and re-enqueues the request to resume right after it. A request
that has killed `max_attempts` workers goes to the dead-letter stream and its client gets an
error. Fencing and the atomic move are `llmserve.common.tokensink.handoff`, shared with a worker's
forced unload, so a request is never run twice nor lost.

Attempts count real deaths: an entry the dead worker never read (dispatched just before its
heartbeat expired) goes back to its queue with its attempt unchanged, in one script that
checks the worker group's pending list, so only requests a worker actually held cost one.
Every move is guarded by XDEL, so recovering the same worker twice (a peer, a restarted
recovery task) moves nothing twice.
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

# Never read by the worker (not in its group's pending list): back to the queue, same attempt.
_RETURN_UNREAD = """
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1)
if not ok or #pending > 0 then return -1 end
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'requeued', 'worker', '')
return 1
"""
UNREAD_RETURNED, MOVED_ELSEWHERE, WAS_READ = 1, 0, -1


class WorkerRecovery:
    def __init__(self, redis: aioredis.Redis, sink: SinkClient, owner: str, *, max_attempts: int = 3,
                 lock_ms: int = 15_000):
        self.redis = redis
        self.sink = sink
        self.owner = owner
        self.max_attempts = max_attempts
        self.lock_ms = lock_ms
        self.handoff = Handoff(redis, sink)
        self._return_unread = redis.register_script(_RETURN_UNREAD)
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
            payload = fields[PAYLOAD_FIELD.encode()]
            await self._recover_entry(stream, entry_id, payload, work_pb2.WorkItem.FromString(payload))
        if await self.redis.xlen(stream) == 0:
            # Nothing left: forget the worker (a stalled one re-registers with its next heartbeat).
            pipe = self.redis.pipeline(transaction=True)
            pipe.srem(keys.WORKERS_SET, worker_id)
            pipe.delete(stream)
            await pipe.execute()

    async def _recover_entry(self, stream: str, entry_id, payload: bytes, item: work_pb2.WorkItem) -> None:
        unread = await self._return_unread(
            keys=[stream, keys.request_stream(item.model), keys.request_key(item.request_id)],
            args=[entry_id, payload, keys.WORKER_GROUP])
        if unread == UNREAD_RETURNED:
            log.info("request the dead worker never read requeued", request_id=item.request_id,
                     attempt=item.attempt)
            self.recovered += 1
            return
        if unread == MOVED_ELSEWHERE:
            return
        if await self.handoff.resume_elsewhere(stream, entry_id, item, self.max_attempts) == REQUEUED:
            self.recovered += 1
