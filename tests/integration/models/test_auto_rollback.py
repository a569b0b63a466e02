"""Automatic rollback, end to end: a split whose B version is slow is cleared by the monitor.

Gateway, scheduler and two workers (`smol@v1` fast, `smol@v2` slow) in-process over real
Redis; the gateway's metrics go over real OTLP to an in-process monitor every 200 ms; the
monitor's rules compare the split's sides and clear B through the registry, and an alert rule
fires on the recorded action (a webhook receives it). The injected fault is latency, not
errors, so no client request fails: B's requests are slow but succeed, and once B is out of
the split every new request goes to A.
"""

from __future__ import annotations

import asyncio
import time

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from llmserve.common.metrics import GatewayMetrics
from tests.integration.models.routing_support import NAME, NO_CATALOG, UNLIMITED, load_until, two_versions
from tests.integration.monitor.harness import running_monitor
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import running_stack
from tests.unit.monitor.receivers import WebhookReceiver

WINDOW_S = 30
RULES = """
channels:
  hook: {{type: webhook, url: "http://127.0.0.1:{port}/hook"}}
rules:
  - name: SplitRegression
    kind: split_rollback
    window: {window}s
    min_samples: 15
    max_ttft_p50_ratio: 2.0
    max_ttft_p95_ratio: 3.0
    min_ttft_delta: 50ms
    max_error_rate_increase: 0.05
  - name: SplitRolledBack
    expr: increase(llmserve.rollout.actions[5m])
    comparison: ">"
    threshold: 0
    severity: critical
    group_by: [model, alias, version, target, action, reason]
    summary: "{{model}}@{{alias}}: {{action}} {{version}} -> {{target}} ({{reason}})"
    channels: [log, hook]
"""


def exporting_metrics(endpoint: str) -> tuple[GatewayMetrics, MeterProvider]:
    """Gateway metrics as a deployed gateway exports them, every 200 ms instead of 5 s."""
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=5), export_interval_millis=200
    )
    provider = MeterProvider(
        resource=Resource.create({"service.name": "llmserve-gateway"}), metric_readers=[reader]
    )
    return GatewayMetrics(provider.get_meter("llmserve")), provider


async def wait_for_split_cleared(registry, timeout: float) -> float:
    async with asyncio.timeout(timeout):
        while (await registry.aliases(NAME))["active"].split:
            await asyncio.sleep(0.1)
    return time.monotonic()


async def test_slow_b_is_rolled_back_within_the_window_and_no_request_fails(redis_url, tiny_dir, tmp_path):
    registry = await two_versions(redis_url, tiny_dir)
    await registry.set_split(NAME, {"v2": 50})
    fast, slow = ScriptedEngine(step_delay_s=0.002), ScriptedEngine(step_delay_s=0.3)
    overrides = {"split_sticky_by": "request", "registry_cache_s": 0.3, **UNLIMITED}
    async with WebhookReceiver() as hook:
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES.format(port=hook.port, window=WINDOW_S))
        async with (
            running_monitor(redis_url=redis_url, registry_poll_s=0.5, rules_path=str(rules)) as mon,
            running_stack(
                redis_url, [fast, slow], NO_CATALOG, overrides, models=[f"{NAME}@v1", f"{NAME}@v2"]
            ) as stack,
        ):
            metrics, provider = exporting_metrics(mon.grpc_address)
            stack.gateway.service.generation.metrics = metrics
            stop = asyncio.Event()
            started = time.monotonic()
            load = asyncio.create_task(load_until(stack.gateway_address, stop, 8, "ab", max_tokens=2))
            try:
                cleared = await wait_for_split_cleared(registry, WINDOW_S)
                await asyncio.sleep(1.5)  # traffic goes on after the rollback
            finally:
                stop.set()
                outcomes = await load
                await asyncio.to_thread(provider.shutdown)
            firing = await hook.wait_for(lambda b: b["status"] == "firing", timeout=10)
    events = await registry.events(NAME)
    alias = (await registry.aliases(NAME))["active"]
    await registry.redis.aclose()

    assert cleared - started < WINDOW_S
    assert [o for o in outcomes if o.error] == []
    assert any(o.model == f"{NAME}@v2" for o in outcomes)  # B did get traffic before
    after = [o for o in outcomes if o.started > cleared + 0.3]  # the gateway's cache expired
    assert after and all(o.model == f"{NAME}@v1" for o in after)
    assert (alias.version, alias.split) == ("v1", {})
    assert [(e["version"], e["by"]) for e in events] == [("v2", "monitor:SplitRegression")]
    assert events[0]["reason"].startswith("TTFT p")
    labels = firing["alerts"][0]["labels"]
    assert (labels["alertname"], labels["version"], labels["target"], labels["action"]) == (
        "SplitRolledBack",
        f"{NAME}@v2",
        f"{NAME}@v1",
        "rolled_back",
    )
