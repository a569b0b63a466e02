"""`llmserve status` against real Redis and in-process services (ScriptedEngine workers)."""

from __future__ import annotations

import argparse
import asyncio
import time

import pytest
import redis.asyncio as aioredis

from llmserve.cli.redis_server import free_port
from llmserve.cli.status import collect, render, run_status
from llmserve.common import redis_keys as keys
from llmserve.monitor.v1 import monitor_pb2 as mpb
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import INTERNAL_SECRET, MODEL, running_stack
from tests.unit.cli.fake_monitor import FakeMonitor


@pytest.fixture(autouse=True)
def _operator(monkeypatch):
    # `llmserve status` calls the scheduler's internal port: as an operator with the secret.
    monkeypatch.setenv("LLMSERVE_INTERNAL_SECRET", INTERNAL_SECRET)


def alert_fired_42s_ago() -> mpb.Alert:
    return mpb.Alert(
        name="WorkerDown",
        severity=mpb.SEVERITY_CRITICAL,
        state=mpb.ALERT_STATE_FIRING,
        summary="no live worker for SmolLM2",
        fired_unix_ms=int(time.time() * 1000) - 42_000,
    )


async def wait_for_workers(redis_url: str, n: int) -> None:
    r = aioredis.from_url(redis_url)
    for _ in range(100):
        if len(await r.keys(keys.heartbeat_key("*"))) >= n:
            break
        await asyncio.sleep(0.05)
    await r.aclose()


async def test_status_shows_workers_queues_kv_and_alerts(redis_url, catalog):
    engines = [ScriptedEngine(total_blocks=100), ScriptedEngine(total_blocks=50)]
    async with (
        running_stack(redis_url, engines, catalog) as stack,
        FakeMonitor([]) as monitor,
    ):
        await wait_for_workers(redis_url, 2)
        monitor.alerts = [alert_fired_42s_ago()]
        r = aioredis.from_url(redis_url)
        await r.sadd(keys.WORKERS_SET, "w-gone")  # registered, but its heartbeat expired
        await r.aclose()
        report = await collect(redis_url, f"127.0.0.1:{stack.scheduler.port}", f"127.0.0.1:{monitor.port}")
    text = render(report)
    assert report.errors == {}
    assert [w.worker_id for w in report.workers] == ["w0", "w1"] and report.dead_workers == ["w-gone"]
    lines = text.splitlines()
    assert lines[0] == "WORKERS (2 live, 1 silent)"
    w0 = next(line for line in lines if line.startswith("w0 "))
    assert MODEL in w0 and "0/100" in w0 and "serving" in w0
    assert any(line.startswith("w-gone") and "silent" in line for line in lines)
    model_row = lines[lines.index("MODELS") + 3]
    assert model_row.split() == [MODEL, "2", "0", "0", "0%", "-"]  # no prompt yet: no hit rate
    alert_row = lines[lines.index("ALERTS") + 3]
    assert alert_row.split()[:4] == ["WorkerDown", "critical", "firing", "42s"]
    assert "no live worker for SmolLM2" in alert_row


async def test_status_names_what_is_down_and_still_shows_the_rest(redis_url):
    args = argparse.Namespace(
        redis_url=redis_url,
        scheduler=f"127.0.0.1:{free_port()}",
        monitor=f"127.0.0.1:{free_port()}",
        timeout=0.5,
        json=False,
    )
    assert await asyncio.to_thread(run_status, args) == 0
    report = await collect(args.redis_url, args.scheduler, args.monitor, 0.5)
    assert set(report.errors) == {"scheduler", "monitor"}
    text = render(report)
    assert "(monitor unreachable)" in text and "UNREACHABLE" in text

    args.redis_url = f"redis://127.0.0.1:{free_port()}/0"
    assert await asyncio.to_thread(run_status, args) == 2, "nothing answered"


async def test_status_shows_each_tenants_token_share_and_queue_wait(redis_url, catalog):
    from tests.support.workload import enqueue, work_item

    engines = [ScriptedEngine(step_delay_s=0)]
    async with running_stack(redis_url, engines, catalog) as stack:
        await wait_for_workers(redis_url, 1)
        r = aioredis.from_url(redis_url)
        await enqueue(r, [work_item(f"{t}{i}", tenant=t, max_tokens=2) for i in range(10) for t in ("a", "b")])
        await r.aclose()
        for _ in range(200):
            if len(engines[0].seen) == 20:
                break
            await asyncio.sleep(0.02)
        for _ in range(100):  # the scheduler publishes its window to Redis every second
            report = await collect(redis_url, f"127.0.0.1:{stack.scheduler.port}", f"127.0.0.1:{free_port()}", 1.0)
            if sum(t.tokens_last_minute for t in report.tenants) == 100:
                break
            await asyncio.sleep(0.05)
    assert [(t.tenant, t.tokens_last_minute, t.share, t.weight_share) for t in report.tenants] == [
        ("a", 50, 0.5, 0.5), ("b", 50, 0.5, 0.5)]  # 10 x (3 prompt + 2 max_tokens) each
    lines = render(report).splitlines()
    row = lines[lines.index("TENANTS (1 live scheduler combined, last minute; fair share by tokens)") + 3].split()
    assert row[:5] == ["a", "1", "50", "50%", "50%"] and row[-1] == "0"
