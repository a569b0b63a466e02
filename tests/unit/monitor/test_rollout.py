"""Split regression rules: parsing, and the A/B verdict over metrics a real SDK exported."""

from __future__ import annotations

import pytest

from llmserve.common.metrics import GatewayMetrics
from llmserve.monitor.otlp import MetricsIngest
from llmserve.monitor.rollout import RolloutRule, judge, measure, parse_rollout_rule
from llmserve.monitor.rules import RuleError, default_rules_path, load_rules, parse_rules
from llmserve.monitor.store import MetricStore
from tests.unit.monitor.helpers import FakeClock, sdk_meter

RULE = RolloutRule("R", window_s=60, min_samples=20, max_ttft_p50_ratio=1.5, max_ttft_p95_ratio=2.0,
                   min_ttft_delta_s=0.05, max_error_rate_increase=0.05)  # fmt: skip


def traffic(a_ttft: float, b_ttft: float, n_a: int = 100, n_b: int = 25, b_errors: int = 0):
    """A store holding what a gateway recorded for A (smol@v1) and B (smol@v2)."""
    clock = FakeClock()
    store = MetricStore(clock=clock)
    meter, export = sdk_meter()
    m = GatewayMetrics(meter)
    for served, n, ttft, errors in (("smol@v1", n_a, a_ttft, 0), ("smol@v2", n_b, b_ttft, b_errors)):
        for i in range(n):
            m.request_started(served, "t1", 5)
            if i < n - errors:
                m.first_token(served, "t1", ttft)
            m.request_finished(served, "t1", "ok" if i < n - errors else "internal", ttft)
    MetricsIngest(store).ingest(export())
    clock.advance(5)
    return store, clock()


def sides(store, now):
    return measure(store, "smol@v1", now, 60), measure(store, "smol@v2", now, 60)


def test_slow_b_regresses_on_ttft():
    a, b = sides(*traffic(0.02, 0.4))
    assert (a.ttft_count, b.ttft_count) == (100, 25)
    assert b.ttft_p50 == pytest.approx(0.4, rel=0.1) and a.ttft_p50 == pytest.approx(0.02, rel=0.1)
    reason = judge(RULE, a, b)
    assert reason is not None and reason.startswith("TTFT p50")


def test_similar_versions_pass():
    a, b = sides(*traffic(0.2, 0.22))
    assert judge(RULE, a, b) is None


def test_tiny_latencies_need_the_absolute_delta_too():
    a, b = sides(*traffic(0.002, 0.02))  # x10, but 18 ms apart
    assert judge(RULE, a, b) is None


def test_too_few_samples_give_no_verdict():
    a, b = sides(*traffic(0.02, 0.4, n_b=10))
    assert judge(RULE, a, b) is None


def test_errors_on_b_regress():
    a, b = sides(*traffic(0.02, 0.02, n_b=40, b_errors=8))
    assert (b.requests, b.errors) == (40, 8)
    reason = judge(RULE, a, b)
    assert reason is not None and reason.startswith("error rate 20.0%")


def test_rule_parsing():
    rule = parse_rollout_rule({"name": "R", "kind": "split_rollback", "window": "2m", "min_ttft_delta": "20ms",
                               "max_ttft_p95_ratio": None, "action": "alert"})  # fmt: skip
    assert (rule.window_s, rule.min_ttft_delta_s, rule.max_ttft_p95_ratio, rule.action) == (
        120,
        0.02,
        None,
        "alert",
    )
    assert rule.max_ttft_p50_ratio == 1.5 and rule.min_samples == 50
    with pytest.raises(RuleError, match="unknown fields"):
        parse_rules("rules: [{name: R, kind: split_rollback, max_ttft_ratio: 2}]")
    with pytest.raises(RuleError, match="unknown kind"):
        parse_rules("rules: [{name: R, kind: canary}]")
    with pytest.raises(RuleError, match="unique"):
        parse_rules("rules: [{name: R, kind: split_rollback}, {name: R, expr: 'sum(x)', threshold: 1}]")


def test_default_rules_hold_a_split_rollback_and_its_alert():
    rules = load_rules(default_rules_path())
    assert [r.name for r in rules.rollouts] == ["SplitRegression"]
    assert "SplitRolledBack" in [r.name for r in rules.rules]
    assert "SplitRegression" not in [r.name for r in rules.rules]
