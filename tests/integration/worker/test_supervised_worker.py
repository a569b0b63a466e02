"""The worker's supervised loops with an injected exception: a dead intake or engine turns the
worker NOT_SERVING, ends its heartbeat (its work stays for recovery) and exits 1; a failed
heartbeat is counted and restarted."""

from __future__ import annotations

import asyncio
import json

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.common import redis_keys as keys
from tests.support.polling import wait_for
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import MODEL, model_worker, running_worker
from tests.support.supervision import count_failures, fail_once
from tests.support.workload import work_item


async def health_statuses(port: int, seen: list[int]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            async for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="")):
                seen.append(reply.status)
        except grpc.aio.AioRpcError:
            pass  # the server stopped


async def test_a_failed_intake_is_fatal(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with running_worker(redis_url, ScriptedEngine(), "w0") as app:
            runtime = app.service.runtime
            failures = count_failures(runtime.supervisor)
            seen: list[int] = []
            watcher = asyncio.create_task(health_statuses(app.port, seen))
            await wait_for(lambda: seen == [health_pb2.HealthCheckResponse.SERVING])
            runtime._take = fail_once(runtime._take)
            await asyncio.wait_for(app.wait_failed(), 10)
            await asyncio.wait_for(watcher, 10)
            assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
            assert failures("intake") == 1 and app.exit_code == 1
            assert await r.get(keys.heartbeat_key("w0")) is None  # dead to the schedulers at once
            assert await r.sismember(keys.WORKERS_SET, "w0")  # and still registered: recovery takes its work
    finally:
        await r.aclose()


async def test_a_failed_engine_step_is_fatal_and_leaves_the_work_for_recovery(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with model_worker(redis_url, "w0", engines={MODEL: ScriptedEngine()}, fail_step_after=3) as app:
            failures = count_failures(app.service.runtime.supervisor)
            await r.xadd(keys.worker_stream("w0"), {keys.PAYLOAD_FIELD: work_item("r1", max_tokens=50)
                                                    .SerializeToString()})
            await asyncio.wait_for(app.wait_failed(), 10)
            assert failures(f"engine-{MODEL}") == 1 and app.exit_code == 1
            assert await r.get(keys.heartbeat_key("w0")) is None
            assert await r.xlen(keys.worker_stream("w0")) == 1  # not acknowledged: recovery resumes it
    finally:
        await r.aclose()


async def test_a_failed_heartbeat_is_counted_and_restarted(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with running_worker(redis_url, ScriptedEngine(), "w0") as app:
            runtime = app.service.runtime
            failures = count_failures(runtime.supervisor)
            runtime._heartbeat = fail_once(runtime._heartbeat)
            await wait_for(lambda: failures("heartbeat") == 1)
            after = json.loads(await r.get(keys.heartbeat_key("w0")))["sent_unix_ms"]
            for _ in range(100):  # beats again after its backoff
                beat = await r.get(keys.heartbeat_key("w0"))
                if json.loads(beat)["sent_unix_ms"] > after:
                    break
                await asyncio.sleep(0.05)
            assert json.loads(await r.get(keys.heartbeat_key("w0")))["sent_unix_ms"] > after
            assert app.exit_code == 0 and runtime.supervisor.running("heartbeat")
    finally:
        await r.aclose()
