"""libs/common/metrics.py recorded with the real SDK, and the monitor's OTLP ingest of it."""

from __future__ import annotations

import pytest

from llmserve.common.metrics import (
    LATENCY_BUCKETS,
    GatewayMetrics,
    SchedulerMetrics,
    WorkerMetrics,
    install_process_metrics,
    status_label,
)
from llmserve.monitor.otlp import MetricsIngest
from llmserve.monitor.query import Context, evaluate, scalar
from llmserve.monitor.series import Kind
from llmserve.monitor.store import MetricStore
from llmserve.monitor.summary import summarize_model
from tests.unit.monitor.helpers import FakeClock, sdk_meter


def test_latency_buckets_step_by_at_most_ten_percent():
    assert LATENCY_BUCKETS[0] <= 0.001 and LATENCY_BUCKETS[-1] >= 120
    # 4 significant digits: each bound is within 0.05% of the exact geometric step
    assert all(b / a <= 1.1 * 1.0011 for a, b in zip(LATENCY_BUCKETS, LATENCY_BUCKETS[1:], strict=False))


def test_status_label():
    import grpc

    assert status_label(None) == "ok"
    assert status_label(grpc.StatusCode.RESOURCE_EXHAUSTED) == "resource_exhausted"


def test_gateway_scheduler_worker_metrics_arrive_in_the_store():
    meter, export = sdk_meter("gateway")
    gw, sched, worker = GatewayMetrics(meter), SchedulerMetrics(meter), WorkerMetrics("w1", meter)
    ttfts = [0.020 + 0.001 * i for i in range(50)]
    for ttft in ttfts:
        gw.request_started("m", "t1", prompt_tokens=10)
        gw.first_token("m", "t1", ttft)
        gw.tokens_delivered("m", "t1", 4, gap_s=0.040)
        gw.request_finished("m", "t1", "ok", e2e_s=0.5)
    gw.request_started("m", "t1", prompt_tokens=10)
    gw.request_finished("m", "t1", "internal", e2e_s=0.1)
    gw.rate_limited("t2", "requests")
    sched.set_queue_depth("m", 1, 7)
    sched.dispatched("m", 1, 0.003)
    sched.set_workers({"m": 1}, live=1)
    worker.step("m", batch_size=6, prefill_tokens=100, decode_tokens=6, seconds=0.02)
    worker.set_kv_blocks("m", used=30, free=70)
    worker.preempted("m")

    clock = FakeClock()
    store = MetricStore(clock=clock)
    assert MetricsIngest(store).ingest(export(), peer="ipv4:127.0.0.1:5") > 10
    s = summarize_model(store, "m", clock(), 60.0, 30.0)
    assert s.requests_total == 51 and s.requests_by_status == {"ok": 50, "internal": 1}
    assert s.error_rate == pytest.approx(1 / 51)
    assert s.ttft.count == 50 and s.ttft.p50 == pytest.approx(0.0445, rel=0.1)
    assert s.inter_token.p50 == pytest.approx(0.010, rel=0.1)
    assert (s.queue_depth, s.kv_utilization, s.workers_live, s.batch_size_mean) == (7, 0.3, 1, 6)
    labels = store.select("llmserve.requests")[0].label_dict
    assert labels["service"] == "gateway" and labels["instance"]  # replicas stay apart
    active = store.select("llmserve.requests.active")[0]
    assert active.kind is Kind.GAUGE and active.values[-1] == 0
    assert scalar(evaluate("rate(llmserve.ratelimit.rejections)", Context(store, clock()))) == pytest.approx(
        1 / 60
    )


def test_delta_temporality_is_accumulated():
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

    delta = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA}
    reader = InMemoryMetricReader(preferred_temporality=delta)
    gw = GatewayMetrics(MeterProvider(metric_readers=[reader]).get_meter("t"))
    store = MetricStore(clock=FakeClock())
    ingest = MetricsIngest(store)
    for _ in range(2):
        gw.request_started("m", "t", 1)
        gw.first_token("m", "t", 0.1)
        gw.request_finished("m", "t", "ok", 0.2)
        ingest.ingest(encode_metrics(reader.get_metrics_data()))
    assert summarize_model(store, None, store.clock(), 60, 30).requests_total == 2
    (ttft,) = store.select("llmserve.ttft")
    assert ttft.values[-1].count == 2


def test_process_metrics_observe_cpu_and_memory():
    meter, export = sdk_meter("worker")
    install_process_metrics(meter)
    store = MetricStore(clock=FakeClock())
    MetricsIngest(store).ingest(export())
    (rss,) = store.select("llmserve.process.memory.rss")
    assert rss.values[-1] > 1_000_000
    assert store.select("llmserve.process.cpu.utilization")
