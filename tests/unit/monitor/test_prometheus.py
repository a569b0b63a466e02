"""/metrics text parses with prometheus_client's parser and carries what the store holds."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from llmserve.common.metrics import GatewayMetrics, SchedulerMetrics
from llmserve.monitor.alerts import AlertEngine
from llmserve.monitor.autoscale import ScalingTargets
from llmserve.monitor.otlp import MetricsIngest
from llmserve.monitor.prometheus import StoreCollector, make_registry, prom_name, render
from llmserve.monitor.store import MetricStore
from llmserve.monitor.summary import summarize
from tests.unit.monitor.helpers import FakeClock, sdk_meter


def test_prom_names():
    assert prom_name("llmserve.ttft", "s") == "llmserve_ttft_seconds"
    assert prom_name("llmserve.process.memory.rss", "By") == "llmserve_process_memory_rss_bytes"
    assert prom_name("llmserve.requests", "{request}") == "llmserve_requests"


def test_exposition_parses_and_holds_counters_histograms_and_derived_series():
    meter, export = sdk_meter()
    gw, sched = GatewayMetrics(meter), SchedulerMetrics(meter)
    for i in range(20):
        gw.request_started("m", "t1", 5)
        gw.first_token("m", "t1", 0.05 + i * 0.001)
        gw.request_finished("m", "t1", "ok", 0.3)
    sched.set_queue_depth("m", 0, 40)
    clock = FakeClock()
    store = MetricStore(clock=clock)
    MetricsIngest(store).ingest(export())
    alerts = AlertEngine((), store, lambda n: None)
    summary = summarize(store, clock(), 60, 30, ScalingTargets(queue_per_worker=8))
    registry = make_registry(StoreCollector(store, alerts, lambda: summary, 30))
    families = {f.name: f for f in text_string_to_metric_families(render(registry).decode())}

    (total,) = [s for s in families["llmserve_requests"].samples if s.name == "llmserve_requests_total"]
    assert total.value == 20 and total.labels["status"] == "ok" and total.labels["service"] == "gateway"
    ttft = families["llmserve_ttft_seconds"]
    assert ttft.type == "histogram"
    inf = [s for s in ttft.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert inf[0].value == 20
    assert families["llmserve_queue_depth"].samples[0].value == 40
    assert families["llmserve_recommended_workers"].samples[0].value == 5
    p50 = [
        s
        for s in families["llmserve_window_latency_seconds"].samples
        if s.labels == {"model": "m", "metric": "ttft", "quantile": "0.5"}
    ]
    assert 0.05 < p50[0].value < 0.07
