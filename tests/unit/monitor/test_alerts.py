"""Alert rules: for-duration, pending -> firing -> resolved, de-duplication, repeat, silences."""

from __future__ import annotations

import pytest

from llmserve.monitor.alerts import AlertEngine, State
from llmserve.monitor.rules import RuleError, default_rules_path, load_rules, parse_rules
from llmserve.monitor.series import Kind
from llmserve.monitor.store import MetricStore
from tests.unit.monitor.helpers import FakeClock

RULES = """
rules:
  - name: QueueDeep
    expr: sum(llmserve.queue.depth)
    comparison: ">"
    threshold: 10
    for: 30s
    repeat_interval: 10m
    severity: critical
    group_by: [model]
    labels: {team: serving}
    summary: "{value:.0f} waiting for {model}"
"""


class Harness:
    def __init__(self, text: str = RULES):
        self.clock = FakeClock()
        self.store = MetricStore(clock=self.clock)
        self.sent = []
        self.engine = AlertEngine(parse_rules(text).rules, self.store, self.sent.append, stale_after_s=1e9)

    def depth(self, value: float, model: str = "m") -> None:
        self.store.record("llmserve.queue.depth", Kind.GAUGE, {"model": model}, value)

    def run(self, seconds: float, step: float = 5.0) -> None:
        """Evaluate every `step` seconds for `seconds`."""
        end = self.clock.t + seconds
        while self.clock.t < end:
            self.clock.advance(step)
            self.engine.evaluate(self.clock.t)

    def statuses(self) -> list[str]:
        return [n.status for n in self.sent]


def test_a_spike_shorter_than_for_duration_does_not_fire():
    h = Harness()
    watch = h.engine.subscribe()
    h.depth(50)
    h.run(20)
    assert [a.state for a in h.engine.alerts()] == [State.PENDING]
    h.depth(0)
    h.run(60)
    assert h.engine.alerts() == [] and h.sent == []
    events = [watch.get_nowait().state for _ in range(watch.qsize())]
    assert events == [State.PENDING, State.INACTIVE]


def test_pending_then_firing_then_resolved_with_one_notification_each():
    h = Harness()
    h.depth(50)
    h.run(25)
    assert h.sent == []
    h.run(10)
    (alert,) = h.engine.alerts()
    assert alert.state is State.FIRING
    assert alert.labels == {"model": "m", "team": "serving", "alertname": "QueueDeep", "severity": "critical"}
    assert alert.summary == "50 waiting for m"
    h.run(120)  # keeps firing: de-duplicated, no repeat before the repeat interval
    assert h.statuses() == ["firing"]
    h.depth(3)
    h.run(5)
    assert h.statuses() == ["firing", "resolved"]
    assert h.engine.alerts() == []
    (resolved,) = h.engine.alerts(include_resolved=True)
    assert resolved.state is State.RESOLVED and resolved.resolved_at > resolved.fired_at


def test_repeat_interval_renotifies_a_long_firing_alert():
    h = Harness()
    h.depth(50)
    h.run(30 + 600 + 5)
    assert h.statuses() == ["firing", "firing"]


def test_one_alert_per_group():
    h = Harness()
    h.depth(50, "a")
    h.depth(60, "b")
    h.depth(1, "c")
    h.run(35)
    assert sorted(n.alert.labels["model"] for n in h.sent) == ["a", "b"]
    assert len({n.alert.fingerprint for n in h.sent}) == 2


def test_silence_mutes_notifications_but_not_state():
    h = Harness()
    h.engine.add_silence({"alertname": "QueueDeep", "model": "m"}, ends_at=h.clock.t + 100)
    h.depth(50)
    h.run(60)
    (alert,) = h.engine.alerts()
    assert alert.state is State.FIRING and alert.silenced and h.sent == []
    h.run(60)  # the silence ended: the firing alert is told now
    assert h.statuses() == ["firing"]


def test_absent_value_and_only_if():
    h = Harness("""
rules:
  - name: NoTokens
    expr: increase(llmserve.tokens.out[2m])
    comparison: "<="
    threshold: 0
    absent_value: 0
    only_if: "sum(llmserve.requests.active) > 0"
""")
    h.run(10)
    assert h.sent == []  # nothing in flight: the gate is closed
    h.store.record("llmserve.requests.active", Kind.GAUGE, {}, 2.0)
    h.run(5)
    assert h.statuses() == ["firing"] and h.sent[0].alert.value == 0


def test_default_rules_load_and_reference_known_channels():
    rules = load_rules(default_rules_path(), env={})
    names = {r.name for r in rules.rules}
    assert {
        "TTFTHigh",
        "ErrorRateHigh",
        "QueueDepthHigh",
        "KVCacheSaturated",
        "WorkerDown",
        "NoTokensProduced",
        "RateLimiterFailingOpen",
    } <= names
    assert not rules.channels["webhook"].enabled  # no URL in the environment
    enabled = load_rules(default_rules_path(), env={"LLMSERVE_ALERT_WEBHOOK_URL": "http://x/hook"})
    assert enabled.channels["webhook"].options["url"] == "http://x/hook"


def test_default_worker_down_rule_fires_when_registry_shows_no_live_worker():
    h = Harness(default_rules_path().read_text())
    h.store.record("llmserve.workers", Kind.GAUGE, {"state": "live"}, 1.0)
    h.run(30)
    assert h.sent == []
    h.store.record("llmserve.workers", Kind.GAUGE, {"state": "live"}, 0.0)
    h.run(15)
    assert [(n.status, n.alert.name) for n in h.sent] == [("firing", "WorkerDown")]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("rules: [{name: x, expr: 'sum(a)', threshold: 1, comparison: '=>'}]", "comparison"),
        ("rules: [{name: x, expr: 'sum(', threshold: 1}]", "rule x"),
        ("rules: [{name: x, expr: 'sum(a)', threshold: 1, channels: [pager]}]", "unknown channels"),
        ("rules: [{name: x, expr: 'sum(a)', threshold: 1, severity: loud}]", "severity"),
        ("channels: {c: {type: email, host: h}}", "to"),
    ],
)
def test_invalid_rules_name_the_problem(bad, words):
    with pytest.raises(RuleError, match=words):
        parse_rules(bad)
