"""The scheduler's supervised loops with an injected exception: dispatch and recovery are
counted and restarted, and the scheduler goes on placing work."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.polling import wait_for
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack
from tests.support.supervision import count_failures, fail_once

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def generate(address: str, n: int = 3) -> pb.GenerateResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=n), metadata=AUTH,
                                   timeout=10)


async def test_a_failed_dispatch_round_is_counted_and_the_loop_restarts(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        service = stack.scheduler.service
        failures = count_failures(service.supervisor)
        service.core.run_once = fail_once(service.core.run_once)
        await wait_for(lambda: failures("dispatch") == 1)
        reply = await generate(stack.gateway_address)
        assert reply.usage.completion_tokens == 3
        assert stack.scheduler.exit_code == 0


async def test_a_failed_recovery_is_counted_and_retried(redis_url, catalog):
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
            service = stack.scheduler.service
            failures = count_failures(service.supervisor)
            recovery = service.core.recovery
            recovery._recover_worker = fail_once(recovery._recover_worker)
            await r.sadd(keys.WORKERS_SET, "ghost")  # registered, no heartbeat: dead
            await wait_for(lambda: failures("recovery") == 1)
            for _ in range(200):
                if not await r.sismember(keys.WORKERS_SET, "ghost"):
                    break
                await asyncio.sleep(0.02)
            assert not await r.sismember(keys.WORKERS_SET, "ghost")  # the retry recovered it
            assert (await generate(stack.gateway_address)).usage.completion_tokens == 3
    finally:
        await r.aclose()
