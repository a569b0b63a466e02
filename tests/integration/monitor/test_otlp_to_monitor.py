"""Real OpenTelemetry SDK exporters -> in-process monitor: GetSummary, /metrics, GetTrace."""

from __future__ import annotations

import asyncio
import random
import statistics

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate
from prometheus_client.parser import text_string_to_metric_families

from llmserve.common.metrics import GatewayMetrics, SchedulerMetrics, WorkerMetrics
from llmserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from tests.integration.monitor.harness import otlp_meter_provider, otlp_tracer_provider, running_monitor

N_OK, N_FAILED = 120, 3


def record_traffic(endpoint: str) -> list[float]:
    """What a gateway, a scheduler and a worker record for some traffic; returns the TTFTs."""
    rng = random.Random(3)
    gw_provider = otlp_meter_provider(endpoint, "gateway")
    worker_provider = otlp_meter_provider(endpoint, "worker")
    gw = GatewayMetrics(gw_provider.get_meter("llmserve"))
    sched = SchedulerMetrics(gw_provider.get_meter("llmserve"))
    worker = WorkerMetrics("w0", worker_provider.get_meter("llmserve"))
    ttfts = [rng.uniform(0.030, 0.090) for _ in range(N_OK)]
    for ttft in ttfts:
        gw.request_started("tiny", "t1", prompt_tokens=12)
        gw.first_token("tiny", "t1", ttft)
        gw.tokens_delivered("tiny", "t1", 8, gap_s=0.08)
        gw.request_finished("tiny", "t1", "ok", e2e_s=ttft + 0.08)
    for _ in range(N_FAILED):
        gw.request_started("tiny", "t2", prompt_tokens=12)
        gw.request_finished("tiny", "t2", "unavailable", e2e_s=0.01)
    sched.set_queue_depth("tiny", 1, 3)
    sched.set_workers({"tiny": 1}, live=1)
    worker.step("tiny", batch_size=4, prefill_tokens=48, decode_tokens=4, seconds=0.01)
    worker.set_kv_blocks("tiny", used=25, free=75)
    for provider in (gw_provider, worker_provider):
        assert provider.force_flush(10_000)
        provider.shutdown()
    return ttfts


def make_trace(endpoint: str) -> str:
    """One request's spans from three services, linked by propagated context like Redis messages."""
    providers = {name: otlp_tracer_provider(endpoint, name) for name in ("gateway", "scheduler", "worker")}
    carrier: dict[str, str] = {}
    with providers["gateway"].get_tracer("t").start_as_current_span("Generate") as root:
        propagate.inject(carrier)
        trace_id = format(root.get_span_context().trace_id, "032x")
    for name, span_name in (("scheduler", "dispatch"), ("worker", "generate")):
        ctx = propagate.extract(carrier)
        with providers[name].get_tracer("t").start_as_current_span(span_name, context=ctx):
            pass
    for provider in providers.values():
        provider.shutdown()
    return trace_id


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def test_summary_metrics_and_trace_after_otlp_export():
    async def main():
        async with running_monitor() as mon, grpc.aio.insecure_channel(mon.grpc_address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            ttfts = await asyncio.to_thread(record_traffic, mon.grpc_address)
            trace_id = await asyncio.to_thread(make_trace, mon.grpc_address)
            stub = monitor_pb2_grpc.MonitorServiceStub(channel)

            summary = await stub.GetSummary(monitor_pb2.GetSummaryRequest(window_seconds=120))
            (model,) = summary.models
            assert model.model == "tiny"
            assert model.requests_total == N_OK + N_FAILED
            assert dict(model.requests_by_status) == {"ok": N_OK, "unavailable": N_FAILED}
            assert model.error_rate == pytest.approx(N_FAILED / (N_OK + N_FAILED))
            assert model.ttft.count == N_OK
            assert model.ttft.p50 == pytest.approx(statistics.median(ttfts), rel=0.10)
            assert model.queue_depth == 3 and model.workers_live == 1
            assert model.kv_utilization == pytest.approx(0.25)
            assert summary.overall.requests_total == N_OK + N_FAILED

            status, text = await fetch(mon.http_url + "/metrics")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(text)}
            totals = {
                s.labels["status"]: s.value
                for s in families["llmserve_requests"].samples
                if s.name == "llmserve_requests_total"
            }
            assert totals == {"ok": N_OK, "unavailable": N_FAILED}
            assert families["llmserve_ttft_seconds"].type == "histogram"
            assert "llmserve_recommended_workers" in families

            trace = await stub.GetTrace(monitor_pb2.GetTraceRequest(trace_id=trace_id))
            assert {s.service for s in trace.spans} == {
                "llmserve-gateway",
                "llmserve-scheduler",
                "llmserve-worker",
            }
            assert {s.trace_id for s in trace.spans} == {trace_id}

            status, html = await fetch(mon.http_url + "/")
            assert status == 200 and "<canvas" in html and "://" not in html  # no CDN: self-contained
            status, _ = await fetch(mon.http_url + "/api/history")
            assert status == 200

    asyncio.run(main())
