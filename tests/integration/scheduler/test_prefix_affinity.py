"""Prefix-affinity placement through real Redis, a real scheduler and two real workers.

Requests sharing a 500-token system prompt follow the worker that ran it (its heartbeat lists
the prefix); prompts without a shared prefix still go by free KV (mostly to the other one). Without
affinity the reservations of each dispatch alternate the shared prompt between the workers.
"""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from llmserve.common.prefix_affinity import prefix_key
from tests.integration.scheduler.test_scheduling import schedulers, wait_for, workers
from tests.support.scripted_engine import ScriptedEngine
from tests.support.workload import enqueue, work_item

SYSTEM = [random.Random(1).randrange(3, 30000) for _ in range(500)]
WARM_UP, N = 5, 60


def _item(rid: str, prompt: list[int]):
    item = work_item(rid, max_tokens=4)
    item.prompt_token_ids[:] = prompt
    return item


async def test_a_shared_system_prompt_lands_on_the_worker_that_holds_it(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    # KV for ~60 such prompts each: the holder's load allows them all
    engines = [ScriptedEngine(total_blocks=2000, step_delay_s=0.005) for _ in range(2)]
    rng = random.Random(2)
    async with workers(redis_url, engines), schedulers(redis_url) as apps:
        await wait_for(lambda: len(apps[0].service.core.placement.workers) == 2)
        for i in range(N):
            own = [rng.randrange(3, 30000) for _ in range(100)]
            await enqueue(r, [_item(f"shared{i}", SYSTEM + own[:5]), _item(f"other{i}", own)])
            await asyncio.sleep(0.02)
        await wait_for(lambda: sum(len(e.seen) for e in engines) == 2 * N)
        key = prefix_key(SYSTEM)
        reported = [key in w.model_load(w.models[0]).prefix_keys for w in apps[0].service.core.placement.workers.values()]
    on = [[rid for rid in e.seen if rid.startswith("shared") and int(rid[6:]) >= WARM_UP] for e in engines]
    holder = max(range(2), key=lambda k: len(on[k]))
    share = len(on[holder]) / (N - WARM_UP)
    others = [sum(rid.startswith("other") for rid in e.seen) for e in engines]
    print(f"shared prefix on its holder: {share:.0%}; other prompts per worker: {others}")
    assert share >= 0.9, on
    assert reported[holder], reported  # the holder's heartbeat lists the prefix
    assert others[1 - holder] >= others[holder], others  # the rest go by free KV: mostly the other worker
    await r.aclose()
