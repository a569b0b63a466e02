"""Per-tenant limits through the real admission path (GenerationService.admit -> the Lua script)
over real Redis, with several gateways sharing it, and the policy when Redis is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest

from llmserve.common.errors import RateLimited, Unavailable, status_code_for
from llmserve.gateway.admission.validation import GenerateParams
from llmserve.gateway.app import GatewayService
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.settings import GatewaySettings
from tests.support.stack import MODEL


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


@contextlib.asynccontextmanager
async def gateways(redis_url, catalog, n=1, **overrides):
    """n gateways' domain services (no servers: admission is what is under test)."""
    services = [
        GatewayService(
            GatewaySettings(redis_url=redis_url, port=0, api_keys=["t=static-key"], **overrides),
            catalog=catalog,
        )
        for _ in range(n)
    ]
    for s in services:
        s.limiter.start()
        await s.limiter.warm_up()
    try:
        yield services
    finally:
        for s in services:
            await s.limiter.close()
            await s.redis.aclose()


def params(max_tokens=1, prompt="Hello there") -> GenerateParams:
    return GenerateParams(model=MODEL, prompt=prompt, max_tokens=max_tokens)


async def outcomes(calls):
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_three_gateways_admit_exactly_the_limit_of_1000_concurrent_requests(redis_url, catalog):
    # Three gateways share this test's one event loop (and two cores): their Python work on
    # a 1000-request burst adds up, so the Redis deadline is generous here; the bench
    # measures the real decision latency.
    async with gateways(redis_url, catalog, n=3, ratelimit_timeout_ms=500) as gws:
        _, key = await gws[0].keys.create(
            "acme", limits={"requests_per_minute": 100, "max_concurrent_streams": 1000}
        )
        results = await outcomes(gws[i % 3].generation.admit(f"Bearer {key}", params()) for i in range(1000))
        admitted = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(admitted) == 100
        assert all(isinstance(e, RateLimited) for e in refused), {type(e).__name__ for e in refused}
        assert len(refused) == 900
        assert all(status_code_for(e) == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        assert all(0 < e.retry_after_s <= 60 for e in refused)
        assert {j.tenant for j in admitted} == {"acme"}
        # another tenant is not affected
        await gws[1].generation.admit("Bearer static-key", params())
        for i, job in enumerate(admitted):
            await gws[i % 3].limiter.release(job.lease, 10)


async def test_tokens_per_minute_holds_against_large_max_tokens(redis_url, catalog):
    async with gateways(redis_url, catalog, n=2, tokens_per_minute=2000) as gws:
        prompt_len = len(catalog.get(MODEL).encode_prompt("Hello there"))
        results = await outcomes(
            gws[i % 2].generation.admit("Bearer static-key", params(max_tokens=600)) for i in range(20)
        )
        admitted = [r for r in results if not isinstance(r, Exception)]
        assert len(admitted) == 2000 // (600 + prompt_len) == 3
        assert all(
            isinstance(e, RateLimited) and "tokens_per_minute" in e.message and e.retry_after_s > 0
            for e in results
            if isinstance(e, Exception)
        )
        with pytest.raises(RateLimited) as too_big:  # can never fit: no retry delay, the limit named
            await gws[0].generation.admit("Bearer static-key", params(max_tokens=5000))
        assert too_big.value.retry_after_s is None and "tokens_per_minute" in too_big.value.message
        # the real use is charged at the end: three short answers free room for more
        for job in admitted:
            await gws[0].limiter.release(job.lease, prompt_len + 5)
        again = await outcomes(
            gws[1].generation.admit("Bearer static-key", params(max_tokens=600)) for _ in range(5)
        )
        assert sum(not isinstance(r, Exception) for r in again) == (2000 - 3 * (prompt_len + 5)) // (
            600 + prompt_len
        )


async def test_concurrent_streams_are_released_and_survive_a_gateway_crash(redis_url, catalog):
    async with gateways(redis_url, catalog, n=2, max_concurrent_streams=2, stream_lease_s=1) as (a, b):
        first = await a.generation.admit("Bearer static-key", params())
        await a.generation.admit("Bearer static-key", params())
        with pytest.raises(RateLimited) as full:
            await b.generation.admit("Bearer static-key", params())
        assert "max_concurrent_streams" in full.value.message and 0 < full.value.retry_after_s <= 1
        await a.limiter.release(first.lease, 3)
        await b.generation.admit("Bearer static-key", params())  # the freed slot
        # gateway a "crashes": its lease is no longer renewed, and expires
        for task in a.limiter._tasks:
            task.cancel()
        await asyncio.sleep(1.2)
        await b.generation.admit("Bearer static-key", params())
        with pytest.raises(RateLimited):  # b's own two leases are renewed, so b is full again
            await asyncio.sleep(0.5)
            await b.generation.admit("Bearer static-key", params())


@contextlib.asynccontextmanager
async def silent_redis():
    """A TCP server that accepts connections and never answers: Redis hung or blackholed."""
    held = []

    async def swallow(reader, writer):
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        for w in held:
            w.close()
        server.close()


async def timed_admit(gw) -> tuple[float, BaseException | None]:
    started = time.perf_counter()
    try:
        await gw.generation.admit("Bearer static-key", params())
        error = None
    except (RateLimited, Unavailable) as e:
        error = e
    return time.perf_counter() - started, error


async def test_redis_unreachable_fails_closed_fast(catalog):
    async with silent_redis() as url, gateways(url, catalog, ratelimit_on_redis_down="closed") as (gw,):
        for _ in range(5):
            elapsed, error = await timed_admit(gw)
            assert isinstance(error, Unavailable) and error.retry_after_s
            assert elapsed < 0.2  # 20 ms deadline; generous bound for a loaded CI box
        assert gw.limiter.breaker.is_open


async def test_redis_unreachable_fails_open_within_the_local_bound(catalog):
    async with (
        silent_redis() as url,
        gateways(
            url, catalog, ratelimit_on_redis_down="open", requests_per_minute=10, ratelimit_local_share=0.5
        ) as (gw,),
    ):
        results = [await timed_admit(gw) for _ in range(8)]
        assert [e is None for _, e in results] == [True] * 5 + [False] * 3
        assert all(isinstance(e, RateLimited) for _, e in results[5:])
        assert all(elapsed < 0.2 for elapsed, _ in results)
