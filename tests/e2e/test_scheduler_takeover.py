"""A scheduler process SIGKILLed while it holds work (no worker could take it yet): a live
peer takes the held entries over and dispatches them within 5 s, not after 40."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from llmserve.cli.redis_server import free_port
from llmserve.cli.suite import health_status
from llmserve.common import redis_keys as keys
from llmserve.common.server import GrpcApp
from llmserve.common.workers import ModelLoad, WorkerLoad, publish_heartbeat
from llmserve.scheduler.app import SchedulerService
from llmserve.scheduler.settings import SchedulerSettings
from tests.support.workload import MODEL, enqueue, work_item

pytestmark = [pytest.mark.e2e]


def spawn_scheduler(redis_url: str, port: int, log_path) -> subprocess.Popen:
    env = dict(os.environ, REDIS_URL=redis_url, LLMSERVE_SCHEDULER_PORT=str(port),
               LLMSERVE_SCHEDULER_SCHEDULER_ID="doomed", LLMSERVE_SCHEDULER_MODELS=MODEL)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "llmserve.scheduler"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


async def held_by(r: aioredis.Redis, consumer: str) -> int:
    stream = keys.request_stream(MODEL)
    if not await r.exists(stream):
        return 0
    consumers = await r.xinfo_consumers(stream, keys.SCHEDULER_GROUP)
    return sum(c["pending"] for c in consumers if c["name"] in (consumer, consumer.encode()))


@pytest.mark.timeout(120)
async def test_held_work_of_a_killed_scheduler_is_dispatched_within_5s(redis_url, tmp_path):
    r = aioredis.Redis.from_url(redis_url)
    port = free_port()
    doomed = spawn_scheduler(redis_url, port, tmp_path / "scheduler.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if health_status(port, timeout=0.5) == health_pb2.HealthCheckResponse.SERVING:
                    break
            except Exception:  # not listening yet
                pass
            await asyncio.sleep(0.1)
        await enqueue(r, [work_item(f"r{i}") for i in range(3)])
        while await held_by(r, "doomed") < 3:  # no worker yet: it holds them
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        settings = SchedulerSettings(redis_url=redis_url, port=0, scheduler_id="peer", models=[MODEL],
                                     registry_refresh_ms=50)
        async with GrpcApp(SchedulerService(settings), settings):
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait()
            killed = time.monotonic()
            load = WorkerLoad("w1", "127.0.0.1:9", [MODEL], 1000, 1000,
                              model_loads={MODEL: ModelLoad(1000, 1000)})
            await publish_heartbeat(r, load, ttl_ms=60_000)
            while await r.xlen(keys.worker_stream("w1")) < 3:
                assert time.monotonic() - killed < 30, "held work never moved"
                await asyncio.sleep(0.05)
            took = time.monotonic() - killed
        print(f"held work dispatched {took:.2f}s after the kill")
        assert took < 5.0
    finally:
        if doomed.poll() is None:
            doomed.kill()
        await r.aclose()
