"""A Redis restart is not a mass worker death.

Redis comes back from its AOF with every heartbeat key already expired; before the scheduler
waited for workers to re-announce, it fenced and requeued all in-flight work (a wasted attempt
each). Real redis-server killed with SIGKILL (AOF everysec), in-process worker and scheduler.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.common.server import GrpcApp
from llmserve.gateway.app import GatewayService
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.settings import GatewaySettings
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.scheduler.app import SchedulerService
from llmserve.scheduler.redis_liveness import RedisLiveness
from llmserve.scheduler.settings import SchedulerSettings
from llmserve.worker.app import WorkerService
from llmserve.worker.settings import WorkerSettings
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL

# The worker re-announces up to 2 s after Redis is back: long enough for the old rule to act.
TTL_MS, INTERVAL_MS, DOWN_S, TOKENS = 2500, 2000, 3.0, 200


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def test_liveness_waits_out_a_young_or_new_redis(tmp_path):
    redis = RedisServer(data_dir=tmp_path / "r", appendonly=True).start()
    try:
        from llmserve.common import redis_client
        client = redis_client.connect(redis.url, socket_timeout=2)
        liveness = RedisLiveness(client, grace_s=1.0)
        assert not await liveness.heartbeats_trusted()  # just started: uptime < grace
        await asyncio.sleep(1.2)
        assert await liveness.heartbeats_trusted()
        await asyncio.to_thread(redis.process.kill)
        await asyncio.to_thread(redis.process.wait)
        redis.start()  # from this thread: the child dies with the thread that forked it (PDEATHSIG)
        assert not await liveness.heartbeats_trusted()  # a new run_id
        await asyncio.sleep(1.2)
        assert await liveness.heartbeats_trusted()
        await client.aclose()
    finally:
        redis.stop()


async def _stream(stub, i: int) -> tuple[list[int], str]:
    indexes, finish = [], 0
    call = stub.GenerateStream(pb.GenerateRequest(model=MODEL, prompt=f"go {i}", max_tokens=TOKENS),
                               metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=60)
    async for m in call:
        indexes.extend(range(m.index, m.index + len(m.token_ids)))
        finish = m.finish_reason or finish
    return indexes, finish


@pytest.mark.timeout(120)
@pytest.mark.parametrize("grace_ms,requeued", [(4000, False), (0, True)], ids=["grace", "no-grace"])
async def test_a_redis_restart_requeues_nothing_when_no_worker_died(tmp_path, catalog, grace_ms, requeued):
    redis = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    common = {"redis_url": redis.url, "port": 0, "drain_seconds": 2}
    try:
        w = WorkerSettings(**common, worker_id="w0", heartbeat_interval_ms=INTERVAL_MS, heartbeat_ttl_ms=TTL_MS)
        s = SchedulerSettings(**common, scheduler_id="s0", registry_refresh_ms=50, redis_restart_grace_ms=grace_ms)
        g = GatewaySettings(**common, api_keys=[f"t1={API_KEY}"], ratelimit_timeout_ms=1000.0)
        async with (
            GrpcApp(WorkerService(w, engine=ScriptedEngine(step_delay_s=0.05), model_name=MODEL), w),
            GrpcApp(SchedulerService(s), s) as scheduler,
            GrpcApp(GatewayService(g, catalog=catalog), g) as gateway,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        ):
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            streams = [asyncio.create_task(_stream(stub, i)) for i in range(4)]
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis.process.kill)  # SIGKILL: only what AOF everysec kept
            await asyncio.to_thread(redis.process.wait)
            await asyncio.sleep(DOWN_S)  # longer than the heartbeats' TTL
            redis.start()  # from this thread: the child dies with the thread that forked it (PDEATHSIG)
            started = time.monotonic()
            results = await asyncio.gather(*streams, return_exceptions=True)
            recovered = scheduler.service.core.recovery.recovered
            print(f"recovered={recovered} after {time.monotonic() - started:.1f}s")
            if requeued:
                assert recovered > 0  # the old rule: every live worker looked dead
            else:
                assert recovered == 0
                for r in results:
                    assert not isinstance(r, BaseException), r
                    indexes, finish = r
                    assert indexes == list(range(TOKENS)) and finish == pb.FINISH_REASON_LENGTH
    finally:
        redis.stop()
