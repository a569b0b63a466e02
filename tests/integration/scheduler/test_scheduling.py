"""Scheduling through real Redis Streams: order, fairness, deadlines, exactly-once dispatch.

Workers are real WorkerServices on gRPC with a ScriptedEngine; requests are put on the
request stream directly, as a gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.server import GrpcApp
from llmserve.scheduler.app import SchedulerService
from llmserve.scheduler.settings import SchedulerSettings
from llmserve.worker.app import WorkerService
from llmserve.worker.settings import WorkerSettings
from tests.support import polling
from tests.support.scripted_engine import ScriptedEngine
from tests.support.workload import MODEL, enqueue, work_item


@contextlib.asynccontextmanager
async def workers(redis_url: str, engines: list, **overrides):
    async with contextlib.AsyncExitStack() as stack:
        for i, engine in enumerate(engines):
            s = WorkerSettings(redis_url=redis_url, port=0, worker_id=f"w{i}", heartbeat_interval_ms=50,
                               drain_seconds=1, **overrides)
            await stack.enter_async_context(GrpcApp(WorkerService(s, engine=engine, model_name=MODEL), s))
        yield


@contextlib.asynccontextmanager
async def schedulers(redis_url: str, n: int = 1, first_id: int = 0, **overrides):
    async with contextlib.AsyncExitStack() as stack:
        apps = []
        for i in range(first_id, first_id + n):
            s = SchedulerSettings(redis_url=redis_url, port=0, scheduler_id=f"s{i}", registry_refresh_ms=20,
                                  drain_seconds=1, **overrides)
            apps.append(await stack.enter_async_context(GrpcApp(SchedulerService(s), s)))
        yield apps


# A thousand requests through real Redis on shared CPUs: more patience than the default.
wait_for = functools.partial(polling.wait_for, timeout=30.0, interval=0.02)


async def test_two_schedulers_dispatch_each_of_1000_requests_exactly_once(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    await enqueue(r, [work_item(f"r{i}", max_tokens=1) for i in range(1000)])
    engines = [ScriptedEngine(step_delay_s=0), ScriptedEngine(step_delay_s=0)]
    async with workers(redis_url, engines, max_backlog=64), schedulers(redis_url, 2, read_batch=50) as apps:
        await wait_for(lambda: sum(len(e.seen) for e in engines) >= 1000, timeout=60)
        await asyncio.sleep(0.3)  # anything dispatched twice would show up by now
        seen = [rid for e in engines for rid in e.seen]
        assert sorted(seen) == sorted(f"r{i}" for i in range(1000))
        counts = [app.service.core.dispatched for app in apps]
        assert sum(counts) == 1000 and all(c > 0 for c in counts), counts
    await r.aclose()


async def test_a_dead_schedulers_held_requests_are_taken_over(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    await enqueue(r, [work_item(f"r{i}") for i in range(20)])
    async with schedulers(redis_url, 1) as apps:  # no worker yet: it reads and holds everything
        await wait_for(lambda: len(apps[0].service.core.waiting) == 20)
        apps[0].service.core.stop()  # dies without dispatching or acknowledging
    engine = ScriptedEngine(step_delay_s=0)
    async with workers(redis_url, [engine]), schedulers(redis_url, 1, reclaim_idle_ms=1000) as _:
        await wait_for(lambda: len(engine.seen) == 20, timeout=20)
    assert sorted(engine.seen) == sorted(f"r{i}" for i in range(20))
    await r.aclose()


async def test_high_priority_starts_before_200_queued_low_priority(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    await enqueue(r, [work_item(f"low{i}", priority=1) for i in range(200)])
    await enqueue(r, [work_item(f"high{i}", priority=3) for i in range(5)])
    engine = ScriptedEngine(step_delay_s=0.001)
    async with schedulers(redis_url) as apps:
        await wait_for(lambda: len(apps[0].service.core.waiting) == 205)
        async with workers(redis_url, [engine]):
            await wait_for(lambda: len(engine.seen) >= 10)
    assert engine.seen[:5] == [f"high{i}" for i in range(5)]
    await r.aclose()


async def test_quiet_tenant_keeps_its_fair_share_against_a_10x_flood(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    items = []
    for i in range(50):
        items += [work_item(f"loud{i}-{j}", tenant="loud", max_tokens=3) for j in range(10)]
        items.append(work_item(f"quiet{i}", tenant="quiet", max_tokens=3))
    await enqueue(r, items)
    engine = ScriptedEngine(step_delay_s=0.002)
    async with schedulers(redis_url, max_worker_backlog=2) as apps:
        await wait_for(lambda: len(apps[0].service.core.waiting) == len(items))
        async with workers(redis_url, [engine], max_backlog=2):
            await wait_for(lambda: len(engine.seen) >= 80, timeout=60)
    first = engine.seen[:80]
    quiet_share = sum(rid.startswith("quiet") for rid in first) / len(first)
    assert abs(quiet_share - 0.5) <= 0.2 * 0.5, quiet_share  # within 20% of its weight (1/2)
    await r.aclose()


async def test_a_request_whose_deadline_passes_while_waiting_never_reaches_a_worker(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    soon = int(time.time() * 1000) + 300
    await enqueue(r, [work_item("late", deadline_ms=soon), work_item("fine")])
    async with schedulers(redis_url) as apps:
        await wait_for(lambda: len(apps[0].service.core.waiting) == 2)
        await asyncio.sleep(0.5)  # the deadline passes while no worker has room
        engine = ScriptedEngine(step_delay_s=0)
        async with workers(redis_url, [engine]):
            await wait_for(lambda: "fine" in engine.seen)
            await asyncio.sleep(0.2)
    assert "late" not in engine.seen
    assert await r.hget(keys.request_key("late"), "state") == b"expired"
    await r.aclose()
