"""Taking over a request another gateway (usually a dead one) streamed: the Redis side and
the call that moves the worker's token stream here.

The request's record (`llmserve:request:{id}`) names its tenant, model, lease and owning
gateway. A take-over is one atomic script: it checks the tenant, makes this gateway the
owner (`gateway`, which every worker re-reads before it gives up on a request, see
docs/reattach.md) and drops a cancellation the old gateway may have left. Then the worker
holding the request is told at once (`WorkerService.Reattach`); it resends what it made from
the client's index on. A finished request is served from its stored result instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmserve.common import redis_keys as keys
from llmserve.common.errors import PermissionDenied, RequestNotFound, Unavailable
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger
from llmserve.common.logprobs import from_sink_pb
from llmserve.common.outcome import Outcome
from llmserve.common.tokensink.v1 import token_sink_pb2
from llmserve.common.workers import WorkerLoad
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc

from .inflight import Chunk

log = get_logger(__name__)

# KEYS: record, cancel marker. ARGV: this gateway's reply_to, the caller's tenant.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, '', ''} end
local tenant = redis.call('HGET', KEYS[1], 'tenant') or ''
if tenant ~= ARGV[2] then return {-1, '', ''} end
redis.call('HSET', KEYS[1], 'gateway', ARGV[1])
redis.call('DEL', KEYS[2])
return {1, redis.call('HGET', KEYS[1], 'worker') or '', redis.call('HGET', KEYS[1], 'state') or ''}
"""


@dataclass(frozen=True)
class Record:
    """What admission needs to know about the request before taking it over."""

    model: str
    lease_id: str


class Reattacher:
    """See the module docstring."""

    def __init__(self, redis: aioredis.Redis, auth: InternalAuth, rpc_timeout_s: float = 2.0):
        self.redis = redis
        self.auth = auth
        self.rpc_timeout_s = rpc_timeout_s
        self._take_over = redis.register_script(_TAKE_OVER)

    async def check(self, request_id: str, tenant: str) -> Record:
        """The request's record if `tenant` may re-attach to it (read only)."""
        fields = await self._call(self.redis.hmget(keys.request_key(request_id), "tenant", "model", "lease"))
        stored_tenant, model, lease = (f.decode() if f else "" for f in fields)
        if not model:
            raise RequestNotFound(f"request {request_id!r} is unknown here (or has expired)")
        if stored_tenant != tenant:
            log.warning("re-attach by another tenant refused", request_id=request_id, tenant=tenant)
            raise PermissionDenied(f"tenant {tenant!r} may not re-attach to request {request_id!r}")
        return Record(model, lease)

    async def take_over(self, request_id: str, tenant: str, reply_to: str) -> tuple[str, str]:
        """Make `reply_to` the request's owner; the worker it is placed on ('' if none) and its
        state (`finished` once a worker finished it)."""
        code, worker, state = await self._call(self._take_over(
            keys=[keys.request_key(request_id), keys.cancel_key(request_id)], args=[reply_to, tenant]))
        if code == 0:
            raise RequestNotFound(f"request {request_id!r} is unknown here (or has expired)")
        if code == -1:
            raise PermissionDenied(f"tenant {tenant!r} may not re-attach to request {request_id!r}")
        return _text(worker), _text(state)

    async def stored_result(self, request_id: str) -> list[Chunk] | None:
        """The chunks of the request's stored result, if it finished and its result is kept."""
        raw = await self._call(self.redis.get(keys.result_key(request_id)))
        if not raw:
            return None
        return [chunk_from_pb(c) for c in token_sink_pb2.StoredResult.FromString(raw).chunks]

    async def redirect(self, worker_id: str, request_id: str, reply_to: str, from_index: int) -> bool:
        """Tell the worker to stream the request here from `from_index`; False when it does not
        hold it (finished, moved, or the worker is gone: its recovery reads the record)."""
        raw = await self._call(self.redis.get(keys.heartbeat_key(worker_id)))
        if not raw:
            return False
        address = WorkerLoad.from_json(raw).address
        try:
            async with self.auth.aio_channel(address) as channel:
                reply = await worker_pb2_grpc.WorkerServiceStub(channel).Reattach(
                    worker_pb2.ReattachRequest(request_id=request_id, reply_to=reply_to, from_index=from_index),
                    timeout=self.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            # The worker re-reads the record before it gives up on the request: not fatal.
            log.warning("reattach call to the worker failed", worker=worker_id, code=e.code().name)
            return False
        return reply.found

    @staticmethod
    async def _call(awaitable):
        try:
            return await awaitable
        except RedisError as e:
            raise Unavailable(f"cannot re-attach while Redis is unreachable: {type(e).__name__}",
                              retry_after_s=1.0) from e


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def chunk_from_pb(c: token_sink_pb2.TokenChunk) -> Chunk:
    return Chunk(request_id=c.request_id, attempt=c.attempt, index=c.index, token_ids=list(c.token_ids),
                 text=c.text, outcome=Outcome.from_pb(c.outcome), prompt_tokens=c.prompt_tokens,
                 completion_tokens=c.completion_tokens, error=c.error, worker_id=c.worker_id,
                 logprobs=[from_sink_pb(lp) for lp in c.logprobs] or None,
                 prompt_logprobs=[from_sink_pb(lp) for lp in c.prompt_logprobs] if c.has_prompt_logprobs else None)
