"""Rolling windows: counter increases, histogram deltas and percentile estimates."""

from __future__ import annotations

import random

import pytest

from llmserve.common import stats
from llmserve.common.metrics import LATENCY_BUCKETS
from llmserve.monitor.series import HistSample, Kind, Series, merge_hists, quantile
from llmserve.monitor.store import Matcher, MetricStore
from tests.unit.monitor.helpers import FakeClock


def hist_of(values: list[float], bounds: tuple[float, ...]) -> HistSample:
    import bisect

    buckets = [0.0] * (len(bounds) + 1)
    for v in values:
        buckets[bisect.bisect_left(bounds, v)] += 1  # OTLP buckets are (previous, bound]
    return HistSample(float(len(values)), float(sum(values)), tuple(buckets))


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_percentiles_from_latency_buckets_are_within_ten_percent(q):
    rng = random.Random(7)
    values = [rng.lognormvariate(-3.0, 0.6) for _ in range(5000)]  # ~50 ms median, long tail
    estimate = quantile(q, LATENCY_BUCKETS, hist_of(values, LATENCY_BUCKETS))
    assert estimate == pytest.approx(stats.quantile(values, q, method="floor"), rel=0.10)


def test_quantile_edge_cases():
    bounds = (1.0, 2.0, 4.0)
    assert quantile(0.5, bounds, HistSample(0, 0, (0, 0, 0, 0))) is None
    assert quantile(0.5, bounds, HistSample(2, 20, (0, 0, 0, 2))) == 4.0  # overflow bucket: last bound
    assert quantile(0.5, bounds, HistSample(2, 3, (0, 2, 0, 0))) == pytest.approx(1.5)


def test_counter_increase_counts_a_restart_as_a_new_start():
    s = Series("c", (), Kind.COUNTER, start_t=0.0)
    for t, v in [(10, 100.0), (20, 110.0), (30, 5.0), (40, 8.0)]:
        s.add(t, v)
    assert s.increase(since=15) == pytest.approx(10 + 5 + 3)  # baseline is the sample at t=10


def test_series_started_inside_the_window_counts_from_zero():
    # Requests served before the first export still count: the series began in the window.
    s = Series("c", (), Kind.COUNTER)
    s.add(105.0, 42.0, start_t=100.0)
    assert s.increase(since=90.0) == 42.0
    old = Series("c", (), Kind.COUNTER)
    old.add(105.0, 42.0, start_t=50.0)  # began before the window: no baseline to trust
    assert old.increase(since=90.0) == 0.0


def test_histogram_delta_over_the_window_only():
    bounds = (1.0, 2.0)
    s = Series("h", (), Kind.HISTOGRAM, bounds=bounds, start_t=0.0)
    s.add(10.0, HistSample(3, 3.0, (3, 0, 0)))
    s.add(70.0, HistSample(5, 6.0, (3, 1, 1)))
    delta = s.hist_delta(since=60.0)
    assert delta.count == 2 and delta.buckets == (0, 1, 1)
    assert merge_hists([delta, delta]).buckets == (0, 2, 2)


def test_store_selects_by_label_matchers_and_prunes():
    clock = FakeClock(1000.0)
    store = MetricStore(retention_s=60, max_series=3, clock=clock)
    store.record("r", Kind.COUNTER, {"status": "ok", "model": "a"}, 1.0)
    store.record("r", Kind.COUNTER, {"status": "internal", "model": "a"}, 1.0)
    store.record("r", Kind.COUNTER, {"status": "unavailable", "model": "b"}, 1.0)
    assert store.record("r", Kind.COUNTER, {"status": "x"}, 1.0) is None  # over max_series
    assert store.dropped_series == 1
    errors = store.select("r", [Matcher("status", "=~", "internal|unavailable")])
    assert len(errors) == 2
    assert len(store.select("r", [Matcher("status", "!=", "ok"), Matcher("model", "=", "a")])) == 1
    clock.advance(61)
    store.record("r", Kind.COUNTER, {"status": "ok", "model": "a"}, 2.0)
    store.prune()
    assert len(store) == 1


def test_stale_gauge_reads_none():
    s = Series("g", (), Kind.GAUGE)
    s.add(100.0, 3.0)
    assert s.latest(now=120.0, stale_after=30.0) == 3.0
    assert s.latest(now=131.0, stale_after=30.0) is None
