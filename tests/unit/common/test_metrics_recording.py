"""What the per-step and per-refresh metric calls record: unchanged gauges are not set again
(each set is SDK work on the engine thread, every step) yet every collection still reports
their value; a step's token count is not recorded as a phase duration."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from llmserve.common.metrics import SchedulerMetrics, WorkerMetrics


class CountingGauge:
    def __init__(self, real):
        self.real, self.sets = real, 0

    def set(self, value, attributes=None):
        self.sets += 1
        self.real.set(value, attributes)


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple, float]:
    data = reader.get_metrics_data()
    return {tuple(sorted(p.attributes.items())): p.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == name
            for p in m.data.data_points}


def _setup():
    reader = InMemoryMetricReader()
    return reader, MeterProvider(metric_readers=[reader]).get_meter("llmserve")


def test_kv_and_sequence_gauges_are_set_only_on_change_and_still_exported_every_collection():
    reader, meter = _setup()
    m = WorkerMetrics("w1", meter)
    m.kv_used, m.sequences = CountingGauge(m.kv_used), CountingGauge(m.sequences)
    for _ in range(5):  # five steps of one running sequence, KV unchanged
        m.set_kv_blocks("tiny", used=3, free=97)
        m.set_sequences("tiny", {("running", 2): 1})
        assert _points(reader, "llmserve.kv.blocks.used") == {(("model", "tiny"), ("worker", "w1")): 3}
    assert m.kv_used.sets == 1
    assert m.sequences.sets == 6  # 2 states x 3 priority classes, once
    m.set_kv_blocks("tiny", used=4, free=96)
    m.set_sequences("tiny", {})  # it finished
    assert m.kv_used.sets == 2 and m.sequences.sets == 7
    assert _points(reader, "llmserve.kv.blocks.used") == {(("model", "tiny"), ("worker", "w1")): 4}
    running = _points(reader, "llmserve.engine.sequences")
    assert running[(("model", "tiny"), ("priority", "2"), ("state", "running"), ("worker", "w1"))] == 0


def test_the_step_token_count_is_not_a_phase_duration():
    reader, meter = _setup()
    m = WorkerMetrics("w1", meter)
    m.step_phases("tiny", {"forward": 0.01, "total": 0.012, "num_tokens": 16.0})
    data = reader.get_metrics_data()
    phases = {dict(p.attributes)["phase"] for rm in data.resource_metrics for sm in rm.scope_metrics
              for metric in sm.metrics if metric.name == "llmserve.step.phase.duration"
              for p in metric.data.data_points}
    assert phases == {"forward", "total"}


def test_scheduler_registry_gauges_are_set_only_on_change():
    reader, meter = _setup()
    m = SchedulerMetrics(meter)
    m.workers, m.depth = CountingGauge(m.workers), CountingGauge(m.depth)
    for _ in range(10):  # ten registry refreshes, nothing changed
        m.set_workers({"tiny": 1}, live=1)
        m.set_queue_depth("tiny", 2, 0)
    assert (m.workers.sets, m.depth.sets) == (3, 1)
    m.set_workers({"tiny": 2}, live=2)
    assert m.workers.sets == 5
    assert _points(reader, "llmserve.workers")[(("model", "tiny"), ("state", "live"))] == 2
