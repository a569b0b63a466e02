"""Handing a request's unfinished attempt to another worker, resuming where its client is.

Shared by the scheduler's dead-worker recovery and a worker's forced unload (like
`client`, this is the client side of the gateway's token-sink protocol). First the next
attempt is fenced at the gateway that owns the request: from then on it discards chunks of
older attempts, so the old worker can no longer deliver, and it answers with what the client
already received. Then the work item moves, in one atomic script, from the worker's stream
back to its model's request stream with attempt+1 and that progress (`resume_token_ids`,
`resume_text`); the next worker primes its engine with those tokens and continues at the
next index, so the client sees every index exactly once. A request whose client is gone is
dropped instead. Moves are guarded by XDEL, so of two paths racing for one entry (recovery
of a worker that was only slow, and that worker's own unload) exactly one moves it.

`hand_back` is the same move without a new attempt: work a worker was given for a model it
does not serve (placed from a stale heartbeat) goes back to its queue untouched.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.logging import get_logger
from llmserve.common.outcome import Outcome
from llmserve.common.v1 import work_pb2

from .client import OutChunk, Progress, SinkClient, fence

log = get_logger(__name__)

# XACK too: a live worker's entry is in its group's pending list (a dead worker's is harmless).
# A moved request is on no worker until it is dispatched again.
_MOVE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[5], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
redis.call('HSET', KEYS[3], 'state', ARGV[3], 'attempt', ARGV[4], 'worker', '')
return 1
"""
_FORGET = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'state', ARGV[2])
return 1
"""

REQUEUED, ABANDONED, DEAD_LETTER, GONE = "requeued", "abandoned", "dead-letter", ""


def _next_attempt(item: work_pb2.WorkItem, attempt: int) -> work_pb2.WorkItem:
    """A copy of `item` as attempt `attempt` (the caller's item is never changed)."""
    moved = work_pb2.WorkItem()
    moved.CopyFrom(item)
    moved.attempt = attempt
    return moved


def _resuming(item: work_pb2.WorkItem, progress: Progress) -> work_pb2.WorkItem:
    """`item` (a copy of ours) resuming after what its client already has."""
    del item.resume_token_ids[:]
    item.resume_token_ids.extend(progress.token_ids)
    item.resume_text = progress.text
    return item


class Handoff:
    """Moves work items out of a worker's stream to resume elsewhere (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, sink: SinkClient):
        self.redis = redis
        self.sink = sink
        self._move = redis.register_script(_MOVE)
        self._forget = redis.register_script(_FORGET)

    async def _current_owner(self, item: work_pb2.WorkItem) -> work_pb2.WorkItem:
        """`item`, or a copy sent to the gateway its client re-attached through since (the
        record's `gateway`): that one is fenced, and the next attempt streams there."""
        raw = await self.redis.hget(keys.request_key(item.request_id), "gateway")
        owner = raw.decode() if isinstance(raw, bytes) else raw
        if not owner or owner == item.reply_to:
            return item
        moved = work_pb2.WorkItem()
        moved.CopyFrom(item)
        moved.reply_to = owner
        return moved

    async def hand_back(self, stream: str, entry_id, item: work_pb2.WorkItem, payload: bytes) -> bool:
        """Move entry `entry_id` (`item`, as `payload`) back to its model's request stream with
        its attempt unchanged: no token of it was made. False if another path moved it first."""
        return bool(await self._move(
            keys=[stream, keys.request_stream(item.model), keys.request_key(item.request_id)],
            args=[entry_id, payload, REQUEUED, item.attempt, keys.WORKER_GROUP],
        ))

    async def resume_elsewhere(
        self, stream: str, entry_id, item: work_pb2.WorkItem, max_attempts: int | None = None
    ) -> str:
        """Fence attempt+1 and requeue `item` (entry `entry_id` of `stream`) to continue from what
        its client has. Past `max_attempts` (None: no limit) it is dead-lettered and its client
        gets an error. Returns REQUEUED, ABANDONED (no client waits), DEAD_LETTER, or GONE
        (another path moved the entry first). `item` is left as it was: what moves is a copy."""
        request = keys.request_key(item.request_id)
        attempt = item.attempt + 1
        item = await self._current_owner(item)
        progress = await fence(item.reply_to, item.request_id, attempt, auth=self.sink.auth)
        if progress is None:
            moved = await self._forget(keys=[stream, request], args=[entry_id, ABANDONED, keys.WORKER_GROUP])
            return ABANDONED if moved else GONE
        item = _next_attempt(item, attempt)
        if max_attempts is not None and attempt > max_attempts:
            if not await self._move(
                keys=[stream, keys.DEADLETTER_STREAM, request],
                args=[entry_id, item.SerializeToString(), DEAD_LETTER, attempt, keys.WORKER_GROUP],
            ):
                return GONE
            log.error("request failed on too many workers; dead-lettered", request_id=item.request_id)
            self.sink.send(
                item.reply_to,
                [
                    OutChunk(
                        item.request_id,
                        attempt,
                        len(progress.token_ids),
                        [],
                        "",
                        outcome=Outcome.ERROR,
                        error=f"the request failed on {max_attempts} workers and was dead-lettered",
                    )
                ],
            )
            return DEAD_LETTER
        item = _resuming(item, progress)
        if not await self._move(
            keys=[stream, keys.request_stream(item.model), request],
            args=[entry_id, item.SerializeToString(), REQUEUED, attempt, keys.WORKER_GROUP],
        ):
            return GONE
        log.info(
            "request requeued",
            request_id=item.request_id,
            attempt=attempt,
            resume_tokens=len(progress.token_ids),
        )
        return REQUEUED
