"""Redis side of dispatch: the atomic hand-over from a request stream to a worker stream."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmserve.common import fair_share
from llmserve.common import redis_keys as keys
from llmserve.common.streams import ensure_group

from .waiting import Pending

# Only to a worker whose heartbeat is alive: recovery acts once it expired, so a peer's stale
# registry view can never place work on a worker already declared dead (-2, the entry stays
# held). Only for a tenant whose fair-share start tag is the lowest among tenants any replica
# holds (-3, the entry stays held; see llmserve.common.fair_share). Then ack: if another
# scheduler already handed this entry over (it reclaimed it from us), XACK returns 0 and
# nothing is dispatched twice. A cancelled request is dropped here. The answer carries the
# clock's state, so the caller's order follows what every replica did.
_DISPATCH = fair_share.ELIGIBLE_LUA + """
local function answer(code) return {code, redis.call('HGETALL', KEYS[6])} end
if redis.call('EXISTS', KEYS[5]) == 0 then return answer(-2) end
local start = eligible(KEYS[6], ARGV[6], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11]))
if not start then return answer(-3) end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return answer(-1) end
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[12] == '1' then redis.call('HDEL', KEYS[6], ARGV[9]) end
if redis.call('EXISTS', KEYS[4]) == 1 then return answer(0) end
redis.call('XADD', KEYS[2], '*', 'data', ARGV[3])
redis.call('HSET', KEYS[3], 'state', 'dispatched', 'worker', ARGV[4], 'attempt', ARGV[5],
           'fair_per_token', ARGV[8], 'fair_max_out', ARGV[13])
charge(KEYS[6], ARGV[6], start, tonumber(ARGV[7]))
return answer(1)
"""

_DROP = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'state', ARGV[3])
return 1
"""

DISPATCHED, CANCELLED, TAKEN_ELSEWHERE, WORKER_GONE, NOT_YOUR_TURN = 1, 0, -1, -2, -3


class Dispatcher:
    def __init__(self, redis: aioredis.Redis, scheduler_id: str = "", weights: dict[str, float] | None = None,
                 held_stale_ms: int = 1000, unit: str = "tokens"):
        self.redis = redis
        self.unit = unit
        self.scheduler_id = scheduler_id
        self.weights = weights or {}
        self.held_stale_ms = held_stale_ms
        self.last_state: list = []  # the fair clock of the class of the last dispatch, as it left it
        self._dispatch = redis.register_script(_DISPATCH)
        self._drop = redis.register_script(_DROP)
        self._worker_groups: set[str] = set()
        self._marked: dict[tuple[str, int], set[str]] = {}

    async def dispatch(self, p: Pending, worker_id: str, last_of_tenant: bool = False) -> int:
        """Hand `p` to `worker_id`; `last_of_tenant`: we hold no more of its tenant's work."""
        stream = keys.worker_stream(worker_id)
        if stream not in self._worker_groups:
            await ensure_group(self.redis, stream, keys.WORKER_GROUP)
            self._worker_groups.add(stream)
        per_token = 1.0 / self.weights.get(p.tenant, 1.0)
        # By requests: a flat charge of 1, and nothing to refund (max_out 0) when it ends.
        cost, refundable = fair_share.cost(p.need_tokens, p.max_out, self.unit)
        code, self.last_state = await self._dispatch(
            keys=[p.stream, stream, keys.request_key(p.request_id), keys.cancel_key(p.request_id),
                  keys.heartbeat_key(worker_id), fair_share.clock_key(p.model, p.priority)],
            args=[keys.SCHEDULER_GROUP, p.entry_id, p.payload, worker_id, p.attempt, p.tenant,
                  repr(cost * per_token), repr(per_token),
                  fair_share.held_field(self.scheduler_id, p.tenant), int(time.time() * 1000),
                  self.held_stale_ms, int(last_of_tenant), refundable],
        )
        return code

    async def mark_held(self, held: dict[tuple[str, int], set[str]]) -> dict[tuple[str, int], list]:
        """Tell the peers which tenants we hold work for; the clock state of each class we hold."""
        now = int(time.time() * 1000)
        classes = list(held)
        pipe = self.redis.pipeline(transaction=False)
        for (model, priority), marked in self._marked.items():  # marks of tenants no longer held
            gone = marked - held.get((model, priority), set())
            if gone:
                pipe.hdel(fair_share.clock_key(model, priority),
                          *[fair_share.held_field(self.scheduler_id, t) for t in gone])
        for model, priority in classes:
            key = fair_share.clock_key(model, priority)
            pipe.hset(key, mapping={fair_share.held_field(self.scheduler_id, t): now for t in held[(model, priority)]})
            pipe.hgetall(key)
        answers = await pipe.execute()
        self._marked = {c: set(tenants) for c, tenants in held.items()}
        states = answers[len(answers) - 2 * len(classes):]
        return {c: states[2 * i + 1] for i, c in enumerate(classes)}

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
