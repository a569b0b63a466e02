"""After Redis restarts, the first request through every service succeeds.

Every pooled connection is stale after a restart; before the shared client retried a refused
connection once, the first use of each failed ("request queue unreachable", "rate limiter
unreachable"), so idle gateways refused good requests for a while after Redis was back.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def _generate(stub, i: int) -> str:
    reply = await stub.Generate(pb.GenerateRequest(model=MODEL, prompt=f"hello {i}", max_tokens=3),
                                metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=20)
    return reply.text


@pytest.mark.timeout(120)
async def test_the_first_requests_after_a_redis_restart_succeed(tmp_path, catalog):
    redis = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    try:
        async with (
            running_stack(redis.url, [ScriptedEngine()], catalog) as stack,
            grpc.aio.insecure_channel(stack.gateway_address) as channel,
        ):
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            # Several concurrent requests so that several pooled connections exist.
            assert all(await asyncio.gather(*(_generate(stub, i) for i in range(4))))
            await asyncio.to_thread(redis.stop_process)
            redis.start()  # from this thread: the child dies with the thread that forked it (PDEATHSIG)
            await asyncio.sleep(0.5)  # the worker's next heartbeat re-announces it
            for i in range(4):  # one at a time: each may meet another stale connection
                assert await _generate(stub, 10 + i)
            assert all(await asyncio.gather(*(_generate(stub, 20 + i) for i in range(4))))
    finally:
        redis.stop()
