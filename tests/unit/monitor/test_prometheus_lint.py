"""The monitor's /metrics as Prometheus' own tools and conventions judge it.

Regressions: `promtool check metrics` refused `llmserve_window_latency_seconds` (a gauge with
a `quantile` label); `llmserve_alerts` was absent while nothing fired (a "No data" panel);
the `instance` label clashed with the one Prometheus sets (renamed `exported_instance`).
"""

from __future__ import annotations

from llmserve.common.metrics import GatewayMetrics, SchedulerMetrics, WorkerMetrics
from llmserve.monitor.alerts import AlertEngine
from llmserve.monitor.autoscale import ScalingTargets
from llmserve.monitor.otlp import MetricsIngest
from llmserve.monitor.prometheus import StoreCollector, make_registry, render
from llmserve.monitor.rules import default_rules_path, load_rules
from llmserve.monitor.store import MetricStore
from llmserve.monitor.summary import summarize
from tests.support.prom import parse, promtool_check_metrics, value
from tests.unit.monitor.helpers import FakeClock, sdk_meter


def exposition(record) -> bytes:
    meter, export = sdk_meter()
    record(GatewayMetrics(meter), SchedulerMetrics(meter), WorkerMetrics("w1", meter))
    clock = FakeClock()
    store = MetricStore(clock=clock)
    MetricsIngest(store).ingest(export(), peer="ipv4:127.0.0.1:5555")
    alerts = AlertEngine(load_rules(default_rules_path()).rules, store, lambda n: None)
    summary = summarize(store, clock(), 60, 30, ScalingTargets())
    return render(make_registry(StoreCollector(store, alerts, lambda: summary, 30)))


def busy(gw: GatewayMetrics, sched: SchedulerMetrics, worker: WorkerMetrics) -> None:
    for i in range(30):
        gw.request_started("m", "t1", 5)
        gw.first_token("m", "t1", 0.05 + i * 0.001)
        gw.tokens_delivered("m", "t1", 3, 0.01)
        gw.request_finished("m", "t1", "ok", 0.3)
    gw.request_refused("m", "unauthenticated")
    sched.set_queue_depth("m", 0, 4)
    sched.dispatched("m", 0, 0.01)
    worker.model_started("m")
    worker.step("m", 4, 20, 3, 0.02)
    worker.set_kv_blocks("m", 10, 90)


def test_promtool_accepts_the_monitor_exposition_with_traffic_and_idle():
    promtool_check_metrics(exposition(busy))
    promtool_check_metrics(exposition(lambda *_: None))


def test_window_latency_is_a_summary():
    text = exposition(busy).decode()
    assert "# TYPE llmserve_window_latency_seconds summary" in text


def test_alerts_present_at_zero_for_every_rule_when_none_fire():
    samples = parse(exposition(lambda *_: None))
    alerts = samples["llmserve_alerts"]
    names = {s.labels["alertname"] for s in alerts}
    assert {"TTFTHigh", "ErrorRateHigh", "WorkerDown"} <= names
    assert all(s.value == 0 for s in alerts)
    assert {s.labels["state"] for s in alerts} == {"pending", "firing"}


def test_source_label_is_service_instance_not_instance():
    samples = parse(exposition(busy))
    requests = samples["llmserve_requests_total"]
    assert requests and all("instance" not in s.labels for s in requests)
    assert len({s.labels["service_instance"] for s in requests}) == 1 and requests[0].labels["service_instance"]
    assert value(samples, "llmserve_preemptions_total", worker="w1") == 0  # exported before any
