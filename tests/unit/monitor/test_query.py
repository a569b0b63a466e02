"""The rule expression language: parsing, grouping, arithmetic."""

from __future__ import annotations

import pytest

from llmserve.monitor.query import Context, QueryError, evaluate, parse, scalar
from llmserve.monitor.series import Kind
from llmserve.monitor.store import MetricStore
from tests.unit.monitor.helpers import FakeClock


@pytest.fixture
def store():
    clock = FakeClock(1000.0)
    s = MetricStore(clock=clock)
    for model, ok, failed in (("a", 90.0, 10.0), ("b", 50.0, 0.0)):
        s.record("llmserve.requests", Kind.COUNTER, {"model": model, "status": "ok"}, ok, start_t=990.0)
        s.record(
            "llmserve.requests", Kind.COUNTER, {"model": model, "status": "internal"}, failed, start_t=990.0
        )
        s.record("llmserve.kv.blocks.used", Kind.GAUGE, {"model": model, "worker": f"w-{model}"}, 30.0)
        s.record("llmserve.kv.blocks.free", Kind.GAUGE, {"model": model, "worker": f"w-{model}"}, 10.0)
    return s


def test_error_ratio_grouped_by_model(store):
    ctx = Context(store, 1000.0, window_s=60, group_by=("model",))
    expr = 'increase(llmserve.requests{status=~"internal|unavailable"}[5m]) / increase(llmserve.requests[5m])'
    assert evaluate(expr, ctx) == {("a",): pytest.approx(0.1), ("b",): 0.0}


def test_gauge_ratio_and_scalars(store):
    ctx = Context(store, 1000.0)
    value = evaluate(
        "sum(llmserve.kv.blocks.used) / (sum(llmserve.kv.blocks.used) + sum(llmserve.kv.blocks.free))", ctx
    )
    assert scalar(value) == pytest.approx(0.75)
    assert evaluate("2 * (1 + 2) - -1", ctx) == 7.0


def test_division_by_zero_and_missing_metrics_give_no_data(store):
    ctx = Context(store, 1000.0)
    assert evaluate("sum(llmserve.kv.blocks.used) / 0", ctx) == {}
    assert evaluate("p99(llmserve.nothing[1m])", ctx) == {}
    assert scalar(evaluate("max(llmserve.nothing)", ctx)) is None


def test_gauges_go_stale(store):
    assert evaluate("sum(llmserve.kv.blocks.used)", Context(store, 1100.0, stale_after_s=30)) == {}


@pytest.mark.parametrize("bad", ["rate(", "nope(x)", "sum(x{a>1})", "rate(x[5q])", "1 +", "sum(x) sum(y)"])
def test_bad_expressions_are_rejected(bad):
    with pytest.raises(QueryError):
        parse(bad)
