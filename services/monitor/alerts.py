"""The alert state machine: pending -> firing -> resolved, de-duplicated, repeated, silenced.

One alert exists per (rule, group labels); its fingerprint is the de-duplication key, so an
alert that keeps firing notifies once and then once per repeat interval, however often rules
are evaluated. A condition shorter than the rule's for-duration leaves a pending alert that
goes inactive without any notification. Silences mute notifications, not state.
The engine is synchronous and takes the time as an argument so tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from llmserve.common.logging import get_logger

from .query import Context, evaluate
from .rules import Condition, Rule
from .store import MetricStore

log = get_logger(__name__)


class State(enum.Enum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    INACTIVE = "inactive"


@dataclass
class Alert:
    """One rule's alert for one label set."""

    fingerprint: str
    rule: Rule
    labels: dict[str, str]  # alertname, severity, rule labels, group labels
    state: State
    value: float
    active_since: float
    fired_at: float = 0.0
    resolved_at: float = 0.0
    last_notified: float = 0.0
    silenced: bool = False

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def summary(self) -> str:
        return self.rule.render_summary(self.labels, self.value)


@dataclass(frozen=True)
class Notification:
    """What channels send: the alert as it is now, and whether it fires or resolves."""

    status: str  # "firing" | "resolved"
    alert: Alert
    channels: tuple[str, ...]


@dataclass
class Silence:
    """Mutes notifications of alerts whose labels equal every matcher, until `ends_at`."""

    id: str
    matchers: dict[str, str]
    ends_at: float
    comment: str = ""

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.matchers.items())


def fingerprint(rule_name: str, labels: dict[str, str]) -> str:
    text = rule_name + "\0" + "\0".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class AlertEngine:
    """Evaluates rules against the store and moves alerts through their states."""

    rules: tuple[Rule, ...]
    store: MetricStore
    notify: Callable[[Notification], None]
    window_s: float = 60.0
    stale_after_s: float = 30.0
    resolved_retention_s: float = 3600.0
    active: dict[str, Alert] = field(default_factory=dict)
    resolved: dict[str, Alert] = field(default_factory=dict)
    silences: dict[str, Silence] = field(default_factory=dict)
    _watchers: set[asyncio.Queue] = field(default_factory=set)
    _silence_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def evaluate(self, now: float) -> None:
        """One evaluation round of every rule."""
        self.silences = {k: s for k, s in self.silences.items() if s.ends_at > now}
        for rule in self.rules:
            try:
                values = self.rule_values(rule, now)
            except Exception:  # one broken rule must not stop the others
                log.exception("rule evaluation failed", rule=rule.name)
                continue
            self._update(rule, values, now)
        self.resolved = {
            k: a for k, a in self.resolved.items() if now - a.resolved_at < self.resolved_retention_s
        }

    def _values(self, condition: Condition, rule: Rule, now: float) -> dict[tuple[str, ...], float]:
        ctx = Context(self.store, now, self.window_s, self.stale_after_s, rule.group_by)
        result = evaluate(condition.node, ctx)  # type: ignore[attr-defined]
        if isinstance(result, float):
            return {("",) * len(rule.group_by): result}
        return result

    def rule_values(self, rule: Rule, now: float) -> dict[tuple[str, ...], float]:
        """Value per group where the rule's condition is to be checked (only_if holding)."""
        values = self._values(rule.condition, rule, now)
        if not values and rule.absent_value is not None:
            values = {("",) * len(rule.group_by): rule.absent_value}
        if rule.only_if is not None:
            gate = self._values(rule.only_if, rule, now)
            values = {k: v for k, v in values.items() if k in gate and rule.only_if.holds(gate[k])}
        return values

    def _update(self, rule: Rule, values: dict[tuple[str, ...], float], now: float) -> None:
        holding = set()
        for key, value in values.items():
            if not rule.condition.holds(value):
                continue
            group = {name: v for name, v in zip(rule.group_by, key, strict=True) if v}
            labels = {**rule.labels, **group, "alertname": rule.name, "severity": rule.severity}
            fp = fingerprint(rule.name, labels)
            holding.add(fp)
            self._hold(rule, fp, labels, value, now)
        for fp, alert in list(self.active.items()):
            if alert.rule is rule and fp not in holding:
                self._release(alert, now)

    def _hold(self, rule: Rule, fp: str, labels: dict[str, str], value: float, now: float) -> None:
        alert = self.active.get(fp)
        if alert is None:
            alert = self.active[fp] = Alert(fp, rule, labels, State.PENDING, value, now)
            self.resolved.pop(fp, None)
            self._publish(alert)
        alert.value = value
        if alert.state is State.PENDING and now - alert.active_since >= rule.for_s:
            alert.state, alert.fired_at = State.FIRING, now
            self._publish(alert)
        if alert.state is State.FIRING:
            self._maybe_notify(alert, now)

    def _maybe_notify(self, alert: Alert, now: float) -> None:
        silenced = any(s.matches(alert.labels) for s in self.silences.values())
        if silenced != alert.silenced:
            alert.silenced = silenced
            self._publish(alert)
        due = not alert.last_notified or now - alert.last_notified >= alert.rule.repeat_interval_s
        if not silenced and due:
            alert.last_notified = now
            self.notify(Notification("firing", replace(alert), alert.rule.channels))

    def _release(self, alert: Alert, now: float) -> None:
        del self.active[alert.fingerprint]
        if alert.state is State.PENDING:
            alert.state = State.INACTIVE  # a spike shorter than for-duration: nobody is told
            self._publish(alert)
            return
        alert.state, alert.resolved_at = State.RESOLVED, now
        self.resolved[alert.fingerprint] = alert
        self._publish(alert)
        if alert.last_notified:  # only those told it fired hear that it resolved
            self.notify(Notification("resolved", replace(alert), alert.rule.channels))

    def alerts(self, include_resolved: bool = False) -> list[Alert]:
        """Firing first, then pending, then (on request) resolved; newest first within each."""
        found = list(self.active.values()) + (list(self.resolved.values()) if include_resolved else [])
        order = {State.FIRING: 0, State.PENDING: 1, State.RESOLVED: 2}
        return sorted(found, key=lambda a: (order.get(a.state, 3), -a.active_since))

    def firing_count(self) -> int:
        return sum(1 for a in self.active.values() if a.state is State.FIRING)

    def add_silence(self, matchers: dict[str, str], ends_at: float, comment: str = "") -> Silence:
        silence = Silence(f"s{next(self._silence_ids)}", dict(matchers), ends_at, comment)
        self.silences[silence.id] = silence
        return silence

    def delete_silence(self, silence_id: str) -> bool:
        return self.silences.pop(silence_id, None) is not None

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue:
        """A queue that receives a copy of every alert after each state change."""
        queue: asyncio.Queue = asyncio.Queue(maxsize)
        self._watchers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._watchers.discard(queue)

    def _publish(self, alert: Alert) -> None:
        snapshot = replace(alert)
        for queue in self._watchers:
            if queue.full():  # a slow watcher loses its oldest events, never blocks evaluation
                queue.get_nowait()
            queue.put_nowait(snapshot)
