"""A request delivered twice to the worker that runs it: the copy of an attempt it already
holds is acknowledged and dropped; a newer attempt replaces the old sequence. Either way the
worker keeps taking work (it used to lose its intake task to the engine's duplicate-id error)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.tokensink.v1 import token_sink_pb2
from tests.support.polling import wait_for
from tests.support.recording_sink import recording_sink
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import running_worker
from tests.support.workload import work_item

STREAM = keys.worker_stream("w0")


def expected(n: int, first: int = 0) -> list[tuple[int, int]]:
    """ScriptedEngine's tokens for prompt [1, 2, 3]: token i is (3 + i + 1) % 1000."""
    return [(i, (4 + i) % 1000) for i in range(first, n)]


async def put(r: aioredis.Redis, item) -> None:
    await r.xadd(STREAM, {keys.PAYLOAD_FIELD: item.SerializeToString()})


async def test_a_copy_of_a_running_entry_is_ignored_and_the_worker_keeps_serving(redis_url):
    engine = ScriptedEngine(step_delay_s=0.01)
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with recording_sink() as sink, running_worker(redis_url, engine, "w0"):
            await put(r, work_item("orig", max_tokens=60, reply_to=sink.address))
            await wait_for(lambda: len(sink.tokens("orig")) >= 3)
            (_, fields), = await r.xrange(STREAM)
            await r.xadd(STREAM, {keys.PAYLOAD_FIELD: fields[keys.PAYLOAD_FIELD.encode()]})  # the copy
            await wait_for(lambda: sink.outcome("orig") is not None)
            assert sink.outcome("orig") == token_sink_pb2.OUTCOME_LENGTH
            assert sink.tokens("orig") == expected(60)  # each index once, in order
            assert engine.seen.count("orig") == 1
            await put(r, work_item("after", max_tokens=5, reply_to=sink.address))
            await wait_for(lambda: sink.outcome("after") is not None)
            assert sink.tokens("after") == expected(5)
            for _ in range(200):  # acknowledged entries are deleted with the next flush
                if await r.xlen(STREAM) == 0:
                    break
                await asyncio.sleep(0.02)
            assert await r.xlen(STREAM) == 0  # the copy was acknowledged and deleted too
    finally:
        await r.aclose()


async def test_a_newer_attempt_replaces_the_sequence_held_here(redis_url):
    engine = ScriptedEngine(step_delay_s=0.01)
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with recording_sink() as sink, running_worker(redis_url, engine, "w0"):
            await put(r, work_item("req", max_tokens=60, reply_to=sink.address))
            await wait_for(lambda: len(sink.tokens("req")) >= 3)
            newer = work_item("req", max_tokens=60, reply_to=sink.address)
            newer.attempt = 2
            newer.resume_token_ids.extend(t for _, t in expected(3))
            await put(r, newer)
            await wait_for(lambda: any(c.outcome for c in sink.of("req", attempt=2)))
            assert sink.tokens("req", attempt=2) == expected(60, first=3)
            assert not any(c.outcome for c in sink.of("req", attempt=1))  # the old one just stopped
            assert engine.seen.count("req") == 2
            await put(r, work_item("after", max_tokens=5, reply_to=sink.address))
            await wait_for(lambda: sink.outcome("after") is not None)
            assert sink.tokens("after") == expected(5)
    finally:
        await r.aclose()
