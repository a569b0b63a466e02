"""The batching window through real Redis, a real scheduler and two real workers.

Without a window each request goes to the worker with the most free KV at that moment, and
the reservations of each dispatch spread a burst over both workers.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.integration.scheduler.test_scheduling import schedulers, wait_for, workers
from tests.support.scripted_engine import ScriptedEngine
from tests.support.workload import enqueue, work_item

WINDOW = dict(max_batch_requests=8, max_batch_wait_ms=50)


async def test_a_burst_of_8_lands_on_one_worker_together(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    engines = [ScriptedEngine(step_delay_s=0.005), ScriptedEngine(step_delay_s=0.005)]
    async with workers(redis_url, engines), schedulers(redis_url, **WINDOW) as apps:
        await wait_for(lambda: len(apps[0].service.core.placement.workers) == 2)
        for i in range(8):  # a burst spread over ~15 ms: the window gathers it
            await enqueue(r, [work_item(f"b{i}", max_tokens=3)])
            await asyncio.sleep(0.002)
        await wait_for(lambda: sum(len(e.seen) for e in engines) == 8)
        await asyncio.sleep(0.1)
    assert sorted(len(e.seen) for e in engines) == [0, 8], [e.seen for e in engines]
    await r.aclose()


async def test_a_lone_request_waits_no_longer_than_the_window(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    engine = ScriptedEngine(step_delay_s=0.001)
    async with workers(redis_url, [engine]), schedulers(redis_url, **WINDOW) as apps:
        await wait_for(lambda: len(apps[0].service.core.placement.workers) == 1)
        waits = []
        for i in range(5):
            item = work_item(f"lone{i}", max_tokens=1)
            await enqueue(r, [item])
            await wait_for(lambda i=i: f"lone{i}" in engine.seen)
            waits.append((engine.seen_at[f"lone{i}"] - item.enqueued_unix_ms / 1000) * 1000)
    print("lone request enqueue -> engine, ms:", [round(w, 1) for w in waits])
    assert all(45 <= w <= 50 + 100 for w in waits), waits  # it waits the window out, then goes
    await r.aclose()
