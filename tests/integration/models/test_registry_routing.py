"""The gateway routes registry models: A/B splits by a sticky hash, and hot updates.

Full in-process stack over real Redis; workers run ScriptedEngines, each serving one served
model id (`smol@v1`, `smol@v2`). Which version answered is read twice: from the `model` the
client gets back, and from the engine that really ran the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from tests.integration.models.routing_support import (
    NAME,
    NO_CATALOG,
    UNLIMITED,
    load_until,
    run_requests,
    two_versions,
)  # fmt: skip
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import running_stack, running_worker

SERVED = [f"{NAME}@v1", f"{NAME}@v2"]


async def test_split_by_request_sends_its_share_to_b(redis_url, tiny_dir):
    registry = await two_versions(redis_url, tiny_dir)
    await registry.set_split(NAME, {"v2": 20})
    engines = [ScriptedEngine(), ScriptedEngine()]
    overrides = {"split_sticky_by": "request", **UNLIMITED}
    async with running_stack(redis_url, engines, NO_CATALOG, overrides, models=SERVED) as stack:
        ids = [f"ab-{i}" for i in range(1000)]
        outcomes = await run_requests(stack.gateway_address, ids, concurrency=16, max_tokens=1)
    await registry.redis.aclose()
    assert [o for o in outcomes if o.error] == []
    on_b = {o.request_id for o in outcomes if o.model == f"{NAME}@v2"}
    on_a = {o.request_id for o in outcomes if o.model == f"{NAME}@v1"}
    assert len(on_a) + len(on_b) == 1000
    assert 150 <= len(on_b) <= 250, len(on_b)
    assert set(engines[1].seen) == on_b and set(engines[0].seen) == on_a  # the workers agree


async def test_split_by_tenant_keeps_each_tenant_on_one_version(redis_url, tiny_dir):
    registry = await two_versions(redis_url, tiny_dir)
    await registry.set_split(NAME, {"v2": 50})
    async with running_stack(redis_url, [ScriptedEngine(), ScriptedEngine()], NO_CATALOG, UNLIMITED,
                             models=SERVED) as stack:  # fmt: skip
        outcomes = []
        for tenant in ("t1", "t2"):
            ids = [f"{tenant}-{i}" for i in range(40)]
            outcomes += await run_requests(
                stack.gateway_address, ids, concurrency=8, tenant=tenant, max_tokens=1
            )
    await registry.redis.aclose()
    assert [o for o in outcomes if o.error] == []
    for tenant in ("t1", "t2"):
        assert len({o.model for o in outcomes if o.tenant == tenant}) == 1, tenant
    assert {o.model for o in outcomes} <= set(SERVED)


async def test_explicit_versions_and_unknown_models(redis_url, tiny_dir):
    registry = await two_versions(redis_url, tiny_dir)
    async with running_stack(redis_url, [ScriptedEngine(), ScriptedEngine()], NO_CATALOG, UNLIMITED,
                             models=SERVED) as stack:  # fmt: skip
        outcomes = await run_requests(stack.gateway_address, ["x1"], 1, model=f"{NAME}@v2")
        outcomes += await run_requests(stack.gateway_address, ["x2"], 1, model=f"{NAME}@active")
        outcomes += await run_requests(stack.gateway_address, ["x3"], 1, model=NAME)
        missing = await run_requests(stack.gateway_address, ["x4", "x5", "x6"], 1, model=f"{NAME}@v9")
        missing += await run_requests(stack.gateway_address, ["x7"], 1, model="nope")
        missing += await run_requests(stack.gateway_address, ["x8"], 1, model=f"{NAME}@canary")
    await registry.redis.aclose()
    assert [(o.model, o.error) for o in outcomes] == [
        (f"{NAME}@v2", None),
        (f"{NAME}@v1", None),
        (f"{NAME}@v1", None),
    ]
    assert {o.error.name for o in missing} == {"NOT_FOUND"}


async def test_hot_swap_under_load_fails_no_request(redis_url, tiny_dir):
    """activate v1 -> v2 while clients keep sending: first with no v2 worker (requests stay on
    v1), then a v2 worker comes up and, after the cache TTL, new requests land on it."""
    ttl = 0.3
    registry = await two_versions(redis_url, tiny_dir)
    v1, v2 = ScriptedEngine(step_delay_s=0.005), ScriptedEngine(step_delay_s=0.005)
    overrides = {"registry_cache_s": ttl, **UNLIMITED}
    async with running_stack(redis_url, [v1], NO_CATALOG, overrides, models=SERVED[:1]) as stack, \
            contextlib.AsyncExitStack() as later:  # fmt: skip
        stop = asyncio.Event()
        load = asyncio.create_task(load_until(stack.gateway_address, stop, 8, "hot", max_tokens=8))
        await asyncio.sleep(1.0)
        await registry.activate(NAME, "v2")
        activated = time.monotonic()
        await asyncio.sleep(1.5)  # v2 is active but nobody serves it yet
        v2_starting = time.monotonic()  # its heartbeat can be seen from here on
        await later.enter_async_context(running_worker(redis_url, v2, "w-v2", SERVED[1]))
        v2_up = time.monotonic()
        async with asyncio.timeout(20):
            while not v2.seen:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        stop.set()
        outcomes = await load
        last = (await run_requests(stack.gateway_address, ["after-load"], 1))[0]
    await registry.redis.aclose()
    assert len(outcomes) > 100 and [o for o in outcomes if o.error] == []
    assert all(o.model == SERVED[0] for o in outcomes if o.started < activated)
    gap = [o for o in outcomes if activated + ttl < o.started < v2_starting]
    assert gap and all(o.model == SERVED[0] for o in gap)  # routed to the previous version
    settled = [o for o in outcomes if o.started > v2_up + ttl + 0.5]  # heartbeat seen, cache expired
    assert settled and all(o.model == SERVED[1] for o in settled)
    assert last.model == SERVED[1]
    assert set(v2.seen) == {o.request_id for o in [*outcomes, last] if o.model == SERVED[1]}
