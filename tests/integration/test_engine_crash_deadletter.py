"""A request that crashes every engine it runs on: each worker goes down (NOT_SERVING, exit 1)
and recovery resumes the request on the next one, until the attempt budget is spent; then it
is dead-lettered and its client gets an explicit error at once, not at its deadline."""

from __future__ import annotations

import contextlib
import time

import grpc
import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.server import GrpcApp
from llmserve.gateway.app import GatewayService
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.settings import GatewaySettings
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.scheduler.app import SchedulerService
from llmserve.scheduler.settings import SchedulerSettings
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, model_worker

AUTH = (("authorization", f"Bearer {API_KEY}"),)


async def test_a_request_that_crashes_every_engine_is_dead_lettered(redis_url):
    common = {"redis_url": redis_url, "port": 0, "drain_seconds": 2}
    r = aioredis.Redis.from_url(redis_url)
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(
            model_worker(redis_url, f"w{i}", engines={MODEL: ScriptedEngine(step_delay_s=0.01)}, fail_step_after=2))
            for i in range(3)]
        sched = SchedulerSettings(**common, scheduler_id="s0", registry_refresh_ms=20, max_attempts=3)
        await stack.enter_async_context(GrpcApp(SchedulerService(sched), sched))
        gw = GatewaySettings(**common, api_keys=[f"t1={API_KEY}"], ratelimit_timeout_ms=1000.0)
        gateway = await stack.enter_async_context(GrpcApp(GatewayService(gw, catalog=ModelCatalog.load([MODEL])), gw))
        started = time.monotonic()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            try:
                await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=50, request_id="poison"),
                                    metadata=AUTH, timeout=60)
                raise AssertionError("the request should have failed")
            except grpc.aio.AioRpcError as e:
                error = e
        assert time.monotonic() - started < 30
        assert "dead-lettered" in (error.details() or ""), error
        assert [w.exit_code for w in workers] == [1, 1, 1]  # each engine crash took its worker down
        assert await r.xlen(keys.DEADLETTER_STREAM) == 1
    await r.aclose()
