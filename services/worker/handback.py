"""Work for a model this worker does not (or no longer) serve goes back to its queue.

The scheduler placed it from a heartbeat that was already stale (the model was just
unloaded), so it is not an error: the request moves, in one atomic step, from this worker's
stream back to its model's request stream, where the scheduler places it again on a worker
that does serve the model. Its attempt is unchanged: no token of it was made here.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys

# XACK first: an entry another path already settled (recovered, handed back) moves once.
_HAND_BACK = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', 'data', ARGV[3])
redis.call('HSET', KEYS[3], 'state', 'requeued', 'worker', '')
return 1
"""


class HandBack:
    def __init__(self, redis: aioredis.Redis, worker_stream: str):
        self.stream = worker_stream
        self._script = redis.register_script(_HAND_BACK)

    async def __call__(self, entry_id: str, model: str, request_id: str, payload: bytes) -> bool:
        """Move one entry back to `model`'s request stream; False if it was not ours any more."""
        moved = await self._script(
            keys=[self.stream, keys.request_stream(model), keys.request_key(request_id)],
            args=[keys.WORKER_GROUP, entry_id, payload],
        )
        return moved == 1
