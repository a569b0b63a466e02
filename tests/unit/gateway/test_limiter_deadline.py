"""The rate limiter's Redis deadline: on time it times out, a stall of our own does not count,
and a cancel from outside stays a cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmserve.gateway.admission.ratelimit import RateLimiter
from llmserve.gateway.settings import GatewaySettings


@pytest.fixture
async def limiter():
    limiter = RateLimiter(GatewaySettings(redis_url="redis://127.0.0.1:1/0", ratelimit_timeout_ms=20))
    yield limiter
    await limiter.close()


async def answer_after(seconds: float, value="answer"):
    await asyncio.sleep(seconds)
    return value


async def test_an_answer_within_the_deadline_is_returned(limiter):
    assert await limiter._within_deadline(answer_after(0.001), 1) == "answer"


async def test_no_answer_in_time_is_a_timeout(limiter):
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await limiter._within_deadline(answer_after(5), 1)
    assert time.perf_counter() - started < 1


async def test_a_stall_of_this_process_gets_one_more_deadline(limiter):
    async def stalled_then_answered():
        time.sleep(0.05)  # the event loop is blocked past the 20 ms deadline...
        return await answer_after(0.005)  # ...and the answer comes right after

    assert await limiter._within_deadline(stalled_then_answered(), 1) == "answer"


async def test_a_cancel_from_outside_stays_a_cancel(limiter):
    task = asyncio.create_task(limiter._within_deadline(answer_after(5), 1))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
