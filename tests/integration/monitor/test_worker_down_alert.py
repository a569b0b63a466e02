"""Worker down, end to end: the registry in a real Redis empties -> webhook and SMTP hear it.

The worker is simulated by its heartbeat (what a real worker publishes); stopping the
heartbeat is what a dead worker looks like to everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.cli.redis_server import RedisServer
from llmserve.common.workers import WorkerLoad, publish_heartbeat
from llmserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from tests.integration.monitor.harness import running_monitor
from tests.unit.monitor.receivers import WebhookReceiver, smtp_server, wait_for_mail

RULES = """
channels:
  hook: {{type: webhook, url: "{hook}"}}
  mail: {{type: email, host: 127.0.0.1, port: {smtp_port}, to: ops@example.com}}
rules:
  - name: WorkerDown
    expr: max(llmserve.workers{{state="live",model=""}})
    comparison: "<"
    threshold: 1
    for: 1s
    severity: critical
    summary: "No live worker is left"
    channels: [log, hook, mail]
"""


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url


class Heartbeat:
    """A simulated worker's heartbeat loop, stopped cooperatively.

    Stopping by a flag (not by cancelling mid-command) leaves the Redis connection idle,
    so teardown never waits on a half-finished pipeline.
    """

    def __init__(self, r: aioredis.Redis, load: WorkerLoad):
        self._r, self._load = r, load
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while not self._stop.is_set():
            await publish_heartbeat(self._r, self._load, ttl_ms=600)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 5)


async def _scenario(redis_url: str, rules_path: str, hook: WebhookReceiver, inbox) -> None:
    r = aioredis.Redis.from_url(redis_url)
    load = WorkerLoad(
        worker_id="w0", address="127.0.0.1:1", models=["tiny"], total_kv_blocks=10, free_kv_blocks=10
    )
    beating = Heartbeat(r, load)
    async with (
        running_monitor(redis_url=redis_url, registry_poll_s=0.1, rules_path=rules_path) as mon,
        grpc.aio.insecure_channel(mon.grpc_address) as channel,
    ):
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        watch = stub.WatchAlerts(monitor_pb2.WatchAlertsRequest())
        async with asyncio.timeout(10):
            while (await stub.GetSummary(monitor_pb2.GetSummaryRequest())).overall.workers_live != 1:
                await asyncio.sleep(0.1)
        await beating.stop()  # the worker dies: its heartbeat expires after 600 ms
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        firing = await hook.wait_for(lambda b: b["status"] == "firing", timeout=60)
        await wait_for_mail(inbox, lambda m: "[FIRING] WorkerDown" in m["Subject"], timeout=60)
        assert loop.time() - stopped < 60
        assert firing["alerts"][0]["labels"]["alertname"] == "WorkerDown"
        alerts = (await stub.ListAlerts(monitor_pb2.ListAlertsRequest())).alerts
        assert [(a.name, a.state) for a in alerts] == [("WorkerDown", monitor_pb2.ALERT_STATE_FIRING)]
        states = []
        async for event in watch:
            states.append(event.alert.state)
            if event.alert.state == monitor_pb2.ALERT_STATE_FIRING:
                break
        assert monitor_pb2.ALERT_STATE_FIRING in states

        beating = Heartbeat(r, load)  # the worker is back
        await hook.wait_for(lambda b: b["status"] == "resolved", timeout=60)
        await wait_for_mail(inbox, lambda m: "[RESOLVED] WorkerDown" in m["Subject"], timeout=60)
        assert [b["status"] for b in hook.bodies] == ["firing", "resolved"]  # de-duplicated
        watch.cancel()
    await beating.stop()
    await r.aclose()


def test_worker_down_fires_to_webhook_and_smtp_then_resolves(redis_url, tmp_path):
    async def main():
        with smtp_server() as (smtp_port, inbox):
            async with WebhookReceiver() as hook:
                rules = tmp_path / "rules.yaml"
                rules.write_text(RULES.format(hook=hook.url, smtp_port=smtp_port))
                # Bounded, so a hang fails here with the awaiting line in the traceback
                # instead of running into pytest's global timeout.
                async with asyncio.timeout(120):
                    await _scenario(redis_url, str(rules), hook, inbox)

    asyncio.run(main())
