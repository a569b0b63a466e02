"""Fair share by tokens with two real scheduler processes sharing one queue (issue 19).

Scheduler process s0 alone reads every long-prompt request (20x longer prompts); then s1
starts and the short-prompt requests come, read by both. With equal weights each tenant still
gets 50% ± 10% of the dispatched tokens, since both replicas order by the one clock in Redis.
(Per-replica clocks give the long tenant about a third; counting requests, about 95%.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from llmserve.cli.redis_server import free_port
from llmserve.cli.suite import health_status
from llmserve.common import redis_keys as keys
from tests.integration.scheduler.test_fair_tokens import LONG, SHORT, WINDOW, _item, _long_share
from tests.integration.scheduler.test_scheduling import workers
from tests.support.scripted_engine import ScriptedEngine
from tests.support.workload import MODEL, enqueue

pytestmark = [pytest.mark.e2e]


def spawn_scheduler(redis_url: str, scheduler_id: str, log_path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, LLMSERVE_SCHEDULER_PORT=str(port),
               LLMSERVE_SCHEDULER_SCHEDULER_ID=scheduler_id, LLMSERVE_SCHEDULER_MODELS=MODEL,
               LLMSERVE_SCHEDULER_MAX_WORKER_BACKLOG="2", LLMSERVE_SCHEDULER_REGISTRY_REFRESH_MS="20")
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "llmserve.scheduler"], env=env, stdout=log,
                                stderr=subprocess.STDOUT), port


async def serving(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if health_status(port, timeout=0.5) == health_pb2.HealthCheckResponse.SERVING:
                return
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("scheduler never served")


async def held(r: aioredis.Redis, *consumers: str) -> int:
    info = await r.xinfo_consumers(keys.request_stream(MODEL), keys.SCHEDULER_GROUP)
    names = set(consumers) | {c.encode() for c in consumers}
    return sum(c["pending"] for c in info if c["name"] in names)


async def until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_two_scheduler_processes_split_tokens_evenly(redis_url, tmp_path):
    r = aioredis.Redis.from_url(redis_url)
    longs = [_item(f"long{i}", "long", LONG) for i in range(60)]
    shorts = [_item(f"short{i}", "short", SHORT) for i in range(700)]
    procs = []
    try:
        s0, port0 = spawn_scheduler(redis_url, "s0", tmp_path / "s0.log")
        procs.append(s0)
        await serving(port0)
        await enqueue(r, longs)
        await until(lambda: _held_is(r, len(longs), "s0"))
        s1, port1 = spawn_scheduler(redis_url, "s1", tmp_path / "s1.log")
        procs.append(s1)
        await serving(port1)
        await enqueue(r, shorts)
        await until(lambda: _held_is(r, len(longs) + len(shorts), "s0", "s1"))
        engine = ScriptedEngine(step_delay_s=0.002)
        async with workers(redis_url, [engine], max_backlog=2):
            deadline = time.monotonic() + 120
            while len(engine.seen) < WINDOW:
                assert time.monotonic() < deadline, len(engine.seen)
                await asyncio.sleep(0.05)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
        await r.aclose()
    share = _long_share(engine.seen)
    print(f"long tenant's share of dispatched tokens, two scheduler processes: {share:.2f}")
    assert abs(share - 0.5) <= 0.1, share


async def _held_is(r: aioredis.Redis, n: int, *consumers: str) -> bool:
    return await held(r, *consumers) == n
