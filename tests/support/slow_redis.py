"""Redis made slow on purpose: a Lua script that spins, during which Redis answers nobody."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

# Redis runs one script at a time: while this one spins, every other client waits.
SPIN = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000 + tonumber(n[2]) / 1000 - start > tonumber(ARGV[1]) then break end
end
return 1
"""


@contextlib.asynccontextmanager
async def slow_redis(redis_url, spin_ms: int, pause_s: float = 0.005):
    """Keep Redis busy in `spin_ms` stretches (past the limiter's deadline) until the block ends."""
    client = aioredis.Redis.from_url(redis_url)
    stop = asyncio.Event()

    async def spin():
        while not stop.is_set():
            await client.eval(SPIN, 0, spin_ms)
            await asyncio.sleep(pause_s)

    task = asyncio.create_task(spin())
    await asyncio.sleep(0.01)  # the first stretch is running
    try:
        yield
    finally:
        stop.set()
        await task
        await client.aclose()
