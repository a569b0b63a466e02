"""The gateway's side of the Redis request streams: enqueue with idempotency and a bound."""

from __future__ import annotations

import contextlib
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmserve.common import redis_keys as keys
from llmserve.common.errors import AlreadyExists, Unavailable
from llmserve.common.telemetry import inject_context
from llmserve.common.v1 import work_pb2

from ..admission.validation import Job

# One atomic step: idempotency check, queue bound, enqueue, whereabouts record (with what a
# re-attach through another gateway needs: the tenant allowed to, the model, the lease).
_ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -2 end
redis.call('XADD', KEYS[1], '*', 'data', ARGV[2])
redis.call('HSET', KEYS[2], 'gateway', ARGV[3], 'state', 'queued', 'attempt', 1, 'tenant', ARGV[5],
           'model', ARGV[6], 'lease', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""
_RECORD_TTL_MS = 24 * 3600 * 1000


class RequestQueue:
    def __init__(self, redis: aioredis.Redis, max_queue_len: int, *, min_replicas: int = 0,
                 replica_wait_ms: int = 100):
        self._redis = redis
        self.reply_to = ""  # this gateway's token sink address, known once the port is bound
        self._max_queue_len = max_queue_len
        self._min_replicas = min_replicas
        self._replica_wait_ms = replica_wait_ms
        self._enqueue = redis.register_script(_ENQUEUE)

    async def enqueue(self, job: Job, deadline_unix_ms: int, trace_context=None) -> None:
        item = to_work_item(job, self.reply_to, deadline_unix_ms, trace_context)
        enqueue = {"keys": [keys.request_stream(job.model), keys.request_key(job.request_id)],
                   "args": [self._max_queue_len, item.SerializeToString(), self.reply_to, _RECORD_TTL_MS, job.tenant,
                            job.model, getattr(job.lease, "lease_id", "") or ""]}
        try:
            if self._min_replicas:
                result, replicas = await self._enqueue_replicated(enqueue)
            else:
                result, replicas = await self._enqueue(**enqueue), 0
        except RedisError as e:
            raise Unavailable(f"request queue unreachable: {type(e).__name__}", retry_after_s=1.0) from e
        if result == -1:
            raise AlreadyExists(f"request_id {job.request_id!r} was already used; a retry never starts a second "
                                "generation (set resume_from_index to re-attach to it)")
        if result == -2:
            raise Unavailable(f"the queue for {job.model} is full ({self._max_queue_len})", retry_after_s=1.0)
        if replicas < self._min_replicas:
            await self.cancel(job.request_id)  # it may still run: tell the scheduler and worker not to
            raise Unavailable(f"the request reached {replicas} of {self._min_replicas} Redis replicas within "
                              f"{self._replica_wait_ms} ms (redis_min_replicas); not accepted", retry_after_s=1.0)

    async def _enqueue_replicated(self, enqueue: dict) -> tuple[int, int]:
        # WAIT counts the replicas that have this connection's writes: one pipeline keeps the
        # script and the WAIT on one connection (another pooled one would answer for its own).
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._enqueue(**enqueue, client=pipe)
            pipe.wait(self._min_replicas, self._replica_wait_ms)
            result, replicas = await pipe.execute()
        return int(result), int(replicas)

    async def still_known(self, request_id: str) -> bool:
        """False only when Redis answers and no longer knows the request (it lost its data)."""
        try:
            return bool(await self._redis.exists(keys.request_key(request_id)))
        except RedisError:
            return True  # cannot tell; keep waiting until the deadline

    async def cancel(self, request_id: str) -> None:
        """Mark a request cancelled for the scheduler and worker; best effort."""
        with contextlib.suppress(RedisError):
            await self._redis.set(keys.cancel_key(request_id), 1, px=_RECORD_TTL_MS)


def to_work_item(job: Job, reply_to: str, deadline_unix_ms: int, trace_context=None) -> work_pb2.WorkItem:
    s = job.sampling
    return work_pb2.WorkItem(
        request_id=job.request_id,
        tenant=job.tenant,
        model=job.model,
        prompt_token_ids=job.prompt_token_ids,
        sampling=work_pb2.SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            repetition_penalty=s.repetition_penalty,
            stop=list(s.stop),
            has_seed=s.seed is not None,
            seed=s.seed or 0,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            logit_bias=dict(s.logit_bias),
            min_p=s.min_p,
            min_tokens=s.min_tokens,
            stop_token_ids=list(s.stop_token_ids),
            ignore_eos=s.ignore_eos,
            logprobs=s.logprobs,
            top_logprobs=s.top_logprobs,
            prompt_logprobs=s.prompt_logprobs,
        ),
        deadline_unix_ms=deadline_unix_ms,
        priority=job.priority,
        fork_of=job.fork_of,
        reply_to=reply_to,
        attempt=1,
        trace_context=inject_context(trace_context),
        enqueued_unix_ms=int(time.time() * 1000),
        constraint=job.constraint.to_pb() if job.constraint else None,
    )
