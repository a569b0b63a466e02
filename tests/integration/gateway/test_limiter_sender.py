"""The rate limiter's sender against a real redis-server (issue 21, issue 22 item 3): whatever
happens to the task sending a batch (cancelled, raising, a cancel swallowed inside redis-py),
every call is answered and later calls are too; an answer that comes after the deadline is
reconciled, so Redis holds exactly the admissions the callers got."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis.asyncio as aioredis

from llmserve.common.errors import RateLimited, Unavailable
from llmserve.gateway.admission.auth import Limits
from llmserve.gateway.admission.ratelimit import Lease, RateLimiter
from llmserve.gateway.admission.ratelimit_scripts import tenant_keys
from llmserve.gateway.settings import GatewaySettings
from tests.support.slow_redis import slow_redis

UNLIMITED = Limits(0, 0, 0)


@contextlib.asynccontextmanager
async def limiter_on(redis_url, **overrides):
    # Strict deadlines (no slow-Redis grace) unless a test asks: these tests are about what
    # happens at and after the limiter's deadline.
    settings = {"redis_url": redis_url, "ratelimit_timeout_ms": 50.0, "breaker_failures": 1000,
                "max_concurrent_streams": 0, "ratelimit_slow_wait_ms": 0} | overrides  # fmt: skip
    limiter = RateLimiter(GatewaySettings(**settings))
    limiter.start()
    await limiter.warm_up()
    try:
        yield limiter
    finally:
        await limiter.close()


async def settle(limiter: RateLimiter, timeout: float = 5.0) -> None:
    """Until no limiter call is open or queued (late answers read, revokes sent)."""
    deadline = time.monotonic() + timeout
    while limiter.sender.oldest_open_s or limiter.sender.queued:
        assert time.monotonic() < deadline, "the limiter never went idle"
        await asyncio.sleep(0.01)


async def decided(calls, within: float):
    """Every call's outcome, which must come within `within` seconds."""
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), within)


async def held(redis_url, tenant: str) -> tuple[int, int, int]:
    """The tenant's live leases, window entries and tokens charged, as Redis holds them."""
    client = aioredis.Redis.from_url(redis_url)
    window, tokens, streams = tenant_keys(tenant)
    try:
        return (await client.zcard(streams), await client.zcard(window),
                int(await client.hget(tokens, "_sum") or 0))  # fmt: skip
    finally:
        await client.aclose()


async def test_cancelling_the_sender_mid_batch_answers_pending_and_new_calls(redis_url):
    async with limiter_on(redis_url) as limiter:
        async with slow_redis(redis_url, spin_ms=400):
            calls = [asyncio.create_task(limiter.acquire("t", UNLIMITED, 1)) for _ in range(50)]
            await asyncio.sleep(0.01)
            in_flight = list(limiter.sender._in_flight)
            assert in_flight, "a batch is on the wire while Redis spins"
            for task in in_flight:
                task.cancel()
            outcomes = await decided(calls, within=1.0)
            assert all(isinstance(o, Unavailable) for o in outcomes), outcomes  # fail-closed policy
            await asyncio.gather(*in_flight, return_exceptions=True)
            assert limiter.sender.deaths == len(in_flight)
        fresh = await decided([limiter.acquire("t", UNLIMITED, 1) for _ in range(20)], within=2.0)
        assert all(isinstance(o, Lease) for o in fresh), fresh
        await settle(limiter)
        # the cancelled batch may have run in Redis: what it admitted was revoked
        assert await held(redis_url, "t") == (20, 20, 20)


async def test_a_sender_that_raises_answers_pending_and_new_calls(redis_url):
    async with limiter_on(redis_url) as limiter:
        real, failures = limiter._execute, []

        async def execute_failing_once(groups):
            if not failures:
                failures.append(sum(len(calls) for calls in groups.values()))
                raise RuntimeError("a bug in the sender")
            return await real(groups)

        limiter._execute = execute_failing_once
        first = await decided([limiter.acquire("t", UNLIMITED, 1) for _ in range(30)], within=1.0)
        # the dying batch's calls are answered (fail-closed policy), the others went on
        assert sum(isinstance(o, Unavailable) for o in first) == failures[0]
        assert sum(isinstance(o, Lease) for o in first) == 30 - failures[0]
        assert limiter.sender.deaths == 1
        after = await decided([limiter.acquire("t", UNLIMITED, 1) for _ in range(30)], within=2.0)
        assert all(isinstance(o, Lease) for o in after), after
        await settle(limiter)
        assert (await held(redis_url, "t"))[0] == 60 - failures[0]


async def test_a_cancel_swallowed_inside_the_send_cannot_wedge_the_limiter(redis_url):
    """The real cause of issue 21: Python 3.11's asyncio.wait_for (around every redis-py write)
    swallows a cancel that lands as its inner work completes. The old sender enforced its
    deadline by cancelling itself, so the swallowed cancel left its cancel count raised and
    the next late batch killed it; every call after waited for ever."""
    async with limiter_on(redis_url, ratelimit_timeout_ms=20.0) as limiter:
        real, batches = limiter._execute, []
        loop = asyncio.get_running_loop()

        async def execute(groups):
            if sum(len(calls) for calls in groups.values()) > 1:  # a batch, not a lone call
                batches.append(1)
                if len(batches) == 1:  # inner work done in the very loop turn the deadline fires
                    inner = loop.create_future()
                    loop.call_later(0.019, time.sleep, 0.003)
                    loop.call_later(0.0205, inner.set_result, None)
                    await asyncio.wait_for(inner, 10)
                elif len(batches) == 2:  # then a plain late answer
                    await asyncio.sleep(0.1)
            return await real(groups)

        limiter._execute = execute
        for _ in range(3):
            outcomes = await decided([limiter.acquire("t", UNLIMITED, 1) for _ in range(5)], within=2.0)
            assert all(isinstance(o, Lease | Unavailable) for o in outcomes), outcomes
        assert len(batches) >= 3 and all(isinstance(o, Lease) for o in outcomes)


async def test_answers_after_the_deadline_are_reconciled_exactly(redis_url):
    """300 admissions from 50 clients while Redis is slow past the limiter's deadline: afterwards
    the tenant's leases, window and tokens hold exactly what the clients were granted."""
    async with limiter_on(redis_url, ratelimit_timeout_ms=20.0, breaker_failures=3) as limiter:

        async def client(i: int):
            got = []
            for _ in range(6):
                with contextlib.suppress(Unavailable):
                    got.append(await limiter.acquire("acme", UNLIMITED, 10 + i))
                await asyncio.sleep(0.01)
            return got

        async with slow_redis(redis_url, spin_ms=45, pause_s=0.02):
            granted = [lease for leases in await decided([client(i) for i in range(50)], within=20)
                       for lease in leases]  # fmt: skip
        await settle(limiter)
        streams, window, tokens = await held(redis_url, "acme")
        assert (streams, window, tokens) == (len(granted), len(granted), sum(g.reserved_tokens for g in granted))
        assert 0 < len(granted) < 300, "the burst must have met both answers and timeouts"
        for lease in granted:
            await limiter.release(lease, lease.reserved_tokens)
        assert (await held(redis_url, "acme"))[0] == 0


async def test_a_tenants_flood_is_bounded_and_another_tenant_is_admitted(redis_url):
    async with limiter_on(redis_url, admission_max_waiting_per_tenant=32, max_concurrent_streams=20) as limiter:
        flood = [asyncio.create_task(limiter.acquire("flood", Limits(), 1)) for _ in range(500)]
        started = time.perf_counter()
        other = await asyncio.wait_for(limiter.acquire("quiet", Limits(), 1), 1.0)
        assert isinstance(other, Lease) and time.perf_counter() - started < 1.0
        outcomes = await decided(flood, within=2.0)
        admitted = [o for o in outcomes if isinstance(o, Lease)]
        refused = [o for o in outcomes if isinstance(o, Exception)]
        assert len(admitted) == 20
        assert all(isinstance(e, RateLimited) and "max_concurrent_streams" in e.message
                   and e.retry_after_s for e in refused), {type(e).__name__ for e in refused}  # fmt: skip
        # an unlimited-concurrency tenant is bounded by the waiting cap instead
        burst = await decided([limiter.acquire("wide", UNLIMITED, 1) for _ in range(200)], within=2.0)
        capped = [e for e in burst if isinstance(e, RateLimited)]
        assert capped and all("admission_max_waiting_per_tenant" in e.message for e in capped)
        await settle(limiter)
        assert (await held(redis_url, "flood"))[0] == 20


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_a_stalled_redis_answers_every_call_by_its_deadline(redis_url, policy):
    async with limiter_on(redis_url, ratelimit_timeout_ms=20.0, ratelimit_on_redis_down=policy) as limiter:
        async with slow_redis(redis_url, spin_ms=600):
            started = time.perf_counter()
            outcomes = await decided([limiter.acquire("t", UNLIMITED, 1) for _ in range(100)], within=1.0)
            assert time.perf_counter() - started < 0.5
        expected = Unavailable if policy == "closed" else Lease
        assert all(isinstance(o, expected) for o in outcomes), outcomes
        await settle(limiter)
        assert (await held(redis_url, "t"))[0] == 0  # nothing the callers were refused stays held


async def test_a_slow_redis_is_waited_for_not_taken_for_down(redis_url):
    """Issue 18: Redis busy for 400 ms (a script; a fork does the same) is slow, not down. Having
    answered just before, its late answers are waited for (up to `ratelimit_slow_wait_ms`), so
    no call is refused as "Redis down"; a Redis silent for longer than that is down again."""
    async with limiter_on(redis_url, ratelimit_timeout_ms=20.0, ratelimit_slow_wait_ms=1000.0,
                          breaker_failures=3) as limiter:
        await limiter.acquire("t", UNLIMITED, 1)  # Redis answers: it is alive
        async with slow_redis(redis_url, spin_ms=400, pause_s=0.6):
            started = time.perf_counter()
            outcomes = await decided([limiter.acquire("t", UNLIMITED, 1) for _ in range(100)], within=2.0)
            waited = time.perf_counter() - started
        assert all(isinstance(o, Lease) for o in outcomes), outcomes
        assert not limiter.breaker.is_open
        print(f"100 calls answered in {waited:.2f}s while Redis spun 400 ms")
        async with slow_redis(redis_url, spin_ms=3000):
            await asyncio.sleep(1.2)  # silent for longer than the slow wait: down
            started = time.perf_counter()
            late = await decided([limiter.acquire("t", UNLIMITED, 1)], within=2.0)
            assert isinstance(late[0], Unavailable) and time.perf_counter() - started < 0.5
