"""Fair share by tokens through real Redis, with one and with two scheduler replicas.

Tenant "long" sends prompts 20x longer than tenant "short"; with equal weights each must get
half of the dispatched tokens (prompt + output) while both have work waiting. Counting
requests instead gives "long" about 95%; per-replica clocks with the work split unevenly
between two replicas give it about a third.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from llmserve.common import fair_share
from llmserve.common import redis_keys as keys
from tests.integration.scheduler.test_scheduling import schedulers, wait_for, workers
from tests.support.scripted_engine import ScriptedEngine
from tests.support.workload import MODEL, enqueue, work_item

LONG, SHORT, OUT = 400, 20, 2
WINDOW = 300  # requests admitted while both tenants still have plenty waiting


def _item(rid: str, tenant: str, prompt: int):
    item = work_item(rid, tenant=tenant, max_tokens=OUT)
    item.prompt_token_ids[:] = list(range(1, prompt + 1))
    return item


def _long_share(seen: list[str]) -> float:
    first = seen[:WINDOW]
    long_tokens = sum(LONG + OUT for rid in first if rid.startswith("long"))
    short_tokens = sum(SHORT + OUT for rid in first if rid.startswith("short"))
    return long_tokens / (long_tokens + short_tokens)


async def test_equal_weights_split_dispatched_tokens_evenly_with_one_scheduler(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    items = []
    for i in range(60):
        items.append(_item(f"long{i}", "long", LONG))
        items += [_item(f"short{i}-{j}", "short", SHORT) for j in range(12)]
    await enqueue(r, items)
    engine = ScriptedEngine(step_delay_s=0.002)
    async with schedulers(redis_url, max_worker_backlog=2) as apps:
        await wait_for(lambda: len(apps[0].service.core.waiting) == len(items))
        async with workers(redis_url, [engine], max_backlog=2):
            await wait_for(lambda: len(engine.seen) >= WINDOW, timeout=60)
    share = _long_share(engine.seen)
    assert abs(share - 0.5) <= 0.1, share
    await r.aclose()


async def test_two_schedulers_share_one_clock_even_when_one_holds_all_long_prompts(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    longs = [_item(f"long{i}", "long", LONG) for i in range(60)]
    shorts = [_item(f"short{i}", "short", SHORT) for i in range(700)]
    engine = ScriptedEngine(step_delay_s=0.002)
    async with schedulers(redis_url, max_worker_backlog=2) as first:
        await enqueue(r, longs)  # only s0 runs: it holds every long prompt
        await wait_for(lambda: len(first[0].service.core.waiting) == len(longs))
        async with schedulers(redis_url, max_worker_backlog=2, first_id=1) as second:
            await enqueue(r, shorts)
            held = lambda: sum(len(a.service.core.waiting) for a in first + second)  # noqa: E731
            await wait_for(lambda: held() == len(longs) + len(shorts))
            async with workers(redis_url, [engine], max_backlog=2):
                await wait_for(lambda: len(engine.seen) >= WINDOW, timeout=90)
            counts = [a.service.core.dispatched for a in first + second]
    share = _long_share(engine.seen)
    assert abs(share - 0.5) <= 0.1, (share, counts)
    assert all(c > 0 for c in counts), counts
    await r.aclose()


async def test_output_not_produced_is_refunded(redis_url):
    """Charged prompt + max_tokens at dispatch; a request that stops early gives the rest back."""
    r = aioredis.Redis.from_url(redis_url)
    await enqueue(r, [work_item("early", tenant="a", max_tokens=50)])  # 3 prompt tokens
    engine = ScriptedEngine(step_delay_s=0, stop_after=5)
    key = fair_share.clock_key(MODEL, 2)
    async with schedulers(redis_url) as _, workers(redis_url, [engine]):
        deadline = time.monotonic() + 10
        tag = None
        while tag != 3 + 5 and time.monotonic() < deadline:  # charged 53, refunded 45
            await asyncio.sleep(0.02)
            tag = fair_share.parse_state(await r.hgetall(key))[1].get("a")
    assert tag == 3 + 5, tag
    assert not await r.hexists(keys.request_key("early"), "fair_per_token")  # refunded once
    await r.aclose()


async def test_fair_share_by_requests_gives_the_long_prompts_their_request_count(redis_url):
    """`fair_share_unit: requests` (the comparison setting): one request each in turn, so the
    tenant with 20x longer prompts takes most of the tokens, and the clock moves by 1 per
    request with nothing refunded."""
    r = aioredis.Redis.from_url(redis_url)
    items = []
    for i in range(60):
        items.append(_item(f"long{i}", "long", LONG))
        items += [_item(f"short{i}-{j}", "short", SHORT) for j in range(12)]
    await enqueue(r, items)
    engine = ScriptedEngine(step_delay_s=0.002, stop_after=1)  # stops early: by tokens, a refund
    async with schedulers(redis_url, max_worker_backlog=2, fair_share_unit="requests") as apps:
        await wait_for(lambda: len(apps[0].service.core.waiting) == len(items))
        async with workers(redis_url, [engine], max_backlog=2):
            await wait_for(lambda: len(engine.seen) >= 100, timeout=60)
    first = engine.seen[:100]
    assert 45 <= sum(rid.startswith("long") for rid in first) <= 55, first
    assert _long_share(engine.seen[:100]) > 0.85
    state = fair_share.parse_state(await r.hgetall(fair_share.clock_key(MODEL, 2)))[1]
    assert all(float(tag).is_integer() for tag in state.values()), state  # whole requests, no refunds
    await r.aclose()
