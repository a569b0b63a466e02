"""`llmserve status` shows the tenant numbers of every live scheduler replica combined (issue 19).

Two real scheduler processes share one queue. s1 is paused (SIGSTOP) while s0 dispatches
tenant a's requests, then s0 is paused while s1 dispatches tenant b's: each replica alone
knows one tenant. Status, asked of either, shows both tenants with the tokens, shares and
queue waits of the whole queue; a replica that stops leaves the combination at once.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.cli.redis_server import free_port
from llmserve.cli.status import collect, render
from llmserve.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.e2e.test_fair_share_processes import serving, spawn_scheduler
from tests.integration.scheduler.test_scheduling import workers
from tests.support.scripted_engine import ScriptedEngine
from tests.support.workload import enqueue, work_item

pytestmark = [pytest.mark.e2e]

N = 20  # requests per tenant, 3 prompt + 2 max_tokens each


async def own_tenants(port: int) -> dict[str, tuple[int, float]]:
    """What one replica alone says (GetQueueStats): tenant -> (tokens, wait p50)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetQueueStats(
            scheduler_pb2.GetQueueStatsRequest(), timeout=5)
    return {t.tenant: (t.tokens_last_minute, t.wait_p50_ms) for t in response.tenants}


async def dispatched_by(engine: ScriptedEngine, prefix: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(rid.startswith(prefix) for rid in engine.seen) < n:
        assert time.monotonic() < deadline, engine.seen
        await asyncio.sleep(0.02)


@pytest.mark.timeout(180)
async def test_status_combines_the_tenant_windows_of_two_scheduler_processes(redis_url, tmp_path):
    r = aioredis.Redis.from_url(redis_url)
    procs = []
    engine = ScriptedEngine(step_delay_s=0.001)
    try:
        s0, port0 = spawn_scheduler(redis_url, "s0", tmp_path / "s0.log")
        s1, port1 = spawn_scheduler(redis_url, "s1", tmp_path / "s1.log")
        procs += [s0, s1]
        await serving(port0)
        await serving(port1)
        async with workers(redis_url, [engine]):
            s1.send_signal(signal.SIGSTOP)  # s0 alone dispatches tenant a
            await enqueue(r, [work_item(f"a{i}", tenant="a") for i in range(N)])
            await dispatched_by(engine, "a", N)
            s0.send_signal(signal.SIGSTOP)
            s1.send_signal(signal.SIGCONT)  # s1 alone dispatches tenant b
            await enqueue(r, [work_item(f"b{i}", tenant="b") for i in range(N)])
            await dispatched_by(engine, "b", N)
            s0.send_signal(signal.SIGCONT)
            alone = {"s0": await own_tenants(port0), "s1": await own_tenants(port1)}
            assert set(alone["s0"]) == {"a"} and set(alone["s1"]) == {"b"}, alone  # each knows half

            deadline = time.monotonic() + 30
            while True:  # each replica republishes its window every second
                report = await collect(redis_url, f"127.0.0.1:{port0}", f"127.0.0.1:{free_port()}", 2.0)
                rows = {t.tenant: t for t in report.tenants}
                if report.tenant_schedulers == ["s0", "s1"] and sum(t.tokens_last_minute for t in rows.values()) == 10 * N:
                    break
                assert time.monotonic() < deadline, (report.tenant_schedulers, rows)
                await asyncio.sleep(0.1)
            assert [(t.tenant, t.tokens_last_minute, t.share, t.weight_share) for t in report.tenants] == [
                ("a", 5 * N, 0.5, 0.5), ("b", 5 * N, 0.5, 0.5)]
            # The quantiles are those of the union: here each tenant's waits come from one replica.
            assert rows["a"].wait_p50_ms == alone["s0"]["a"][1] and rows["b"].wait_p50_ms == alone["s1"]["b"][1]
            assert report.dispatched == N  # what s0 itself says it dispatched
            text = render(report)
            assert "TENANTS (2 live schedulers combined, last minute; fair share by tokens)" in text, text

            s1.terminate()  # a clean stop withdraws its window at once
            s1.wait(timeout=20)
            report = await collect(redis_url, f"127.0.0.1:{port0}", f"127.0.0.1:{free_port()}", 2.0)
            assert report.tenant_schedulers == ["s0"]
            assert [(t.tenant, t.tokens_last_minute) for t in report.tenants] == [("a", 5 * N)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in procs:
            p.wait(timeout=20)
        await r.aclose()
