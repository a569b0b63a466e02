"""SLO-aware order and admission through real Redis, a real scheduler and a real worker.

The worker's heartbeat carries the decode rate it measured; the scheduler refuses at once a
request whose deadline the work queued ahead of it cannot meet, and serves feasible deadlines
of a class earliest first.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from tests.integration.scheduler.test_scheduling import schedulers, wait_for, workers
from tests.support.scripted_engine import ScriptedEngine
from tests.support.workload import MODEL, enqueue, work_item


def _decode_rate(app) -> float:
    w = app.service.core.placement.workers.get("w0")
    return w.model_load(MODEL).decode_tokens_per_s if w else 0.0


async def test_a_deadline_200_queued_requests_make_unreachable_is_refused_at_once(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    await enqueue(r, [work_item(f"high{i}", priority=3, max_tokens=50) for i in range(200)])
    engine = ScriptedEngine(step_delay_s=0.02)
    async with schedulers(redis_url, max_worker_backlog=1) as apps, workers(redis_url, [engine], max_backlog=1):
        await wait_for(lambda: _decode_rate(apps[0]) > 0 and len(apps[0].service.core.waiting) >= 150)
        rate = _decode_rate(apps[0])
        start = time.perf_counter()
        await enqueue(r, [work_item("tight", deadline_ms=int(time.time() * 1000) + 200)])
        state = None
        while state is None and time.perf_counter() - start < 5:
            state = await r.hget(keys.request_key("tight"), "state")
            state = None if state == b"queued" else state
            await asyncio.sleep(0.001)
        refused_after_ms = (time.perf_counter() - start) * 1000
        held = len(apps[0].service.core.waiting)
        assert apps[0].service.core.tenants.refused_deadline == {"t": 1}
    assert state == b"refused_deadline", state
    assert "tight" not in engine.seen
    print(f"refused after {refused_after_ms:.1f} ms with {held} held, decode rate {rate:.0f} tok/s")
    assert refused_after_ms < 1000  # ~2-5 ms measured; generous on shared CPUs
    await r.aclose()


async def test_a_feasible_deadline_overtakes_later_deadlines_of_its_class(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    await enqueue(r, [work_item(f"bulk{i}", max_tokens=5) for i in range(200)])
    engine = ScriptedEngine(step_delay_s=0.01)
    async with schedulers(redis_url, max_worker_backlog=1) as apps, workers(redis_url, [engine], max_backlog=1):
        await wait_for(lambda: _decode_rate(apps[0]) > 0 and len(apps[0].service.core.waiting) >= 150)
        now_ms = int(time.time() * 1000)
        pipe = r.pipeline(transaction=True)  # one read sees both
        for item in (work_item("later", max_tokens=5, deadline_ms=now_ms + 120_000),
                     work_item("urgent", max_tokens=5, deadline_ms=now_ms + 60_000)):
            pipe.xadd(keys.request_stream(MODEL), {keys.PAYLOAD_FIELD: item.SerializeToString()})
            pipe.hset(keys.request_key(item.request_id), mapping={"state": "queued", "attempt": 1})
        await pipe.execute()
        seen_before = len(engine.seen)
        await wait_for(lambda: "later" in engine.seen)
    order = engine.seen
    assert order.index("urgent") < order.index("later") <= seen_before + 4, (seen_before, order[seen_before:])
    assert apps[0].service.core.tenants.refused_deadline == {}
    await r.aclose()
