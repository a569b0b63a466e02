"""Automatic rollback of traffic splits: when version B of a split regresses against A, send
its share back to A.

A registry alias with a split (`llmserve models split NAME v3=10`) sends part of its traffic to
B (`name@v3`) and the rest to A (the alias's own version). Gateways label their metrics with
the served model id (`name@vN`), so the store holds both sides. Each evaluation round, a rule
of `kind: split_rollback` compares them over its window (never reaching back before the split
was set): TTFT p50 and p95 ratios B/A, and B's server-error rate minus A's. With enough
samples on both sides and a limit exceeded, B is taken out of the split in Redis (atomically,
recorded in the model's event list) and a `llmserve.rollout.actions` counter is recorded in
the store, which an ordinary alert rule turns into a notification (rules/default.yaml).

    - name: SplitRegression
      kind: split_rollback
      window: 5m                      # compare the last 5 minutes of the split
      min_samples: 50                 # per side: TTFT observations, and finished requests
      max_ttft_p50_ratio: 1.5         # B's p50 over A's; omit to skip
      max_ttft_p95_ratio: 2.0
      min_ttft_delta: 50ms            # a ratio between tiny latencies is noise
      max_error_rate_increase: 0.05   # B's error rate minus A's
      action: rollback                # or `alert`: record and notify only
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmserve.common.logging import get_logger
from llmserve.common.metrics import SERVER_ERROR_STATUSES

from .query import Call, Context, evaluate, parse_duration, scalar
from .series import Kind
from .store import Matcher, MetricStore

log = get_logger(__name__)
KIND = "split_rollback"
ACTIONS_METRIC = "llmserve.rollout.actions"
_ERRORS = Matcher("status", "=~", "|".join(SERVER_ERROR_STATUSES))


@dataclass(frozen=True)
class RolloutRule:
    """When B of a split counts as regressed, and what to do about it."""

    name: str
    window_s: float = 300.0
    min_samples: int = 50
    max_ttft_p50_ratio: float | None = 1.5
    max_ttft_p95_ratio: float | None = 2.0
    min_ttft_delta_s: float = 0.05
    max_error_rate_increase: float | None = 0.05
    action: str = "rollback"  # "rollback" | "alert"


def parse_rollout_rule(raw: dict[str, Any]) -> RolloutRule:
    """A `kind: split_rollback` entry of the rules file; ValueError names the bad field."""
    known = {"name", "kind", "window", "min_samples", "max_ttft_p50_ratio", "max_ttft_p95_ratio",
             "min_ttft_delta", "max_error_rate_increase", "action"}  # fmt: skip
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} for kind {KIND}")
    action = str(raw.get("action", "rollback"))
    if action not in ("rollback", "alert"):
        raise ValueError(f"action {action!r} is not rollback or alert")
    defaults = RolloutRule("")
    return RolloutRule(
        name=str(raw["name"]),
        window_s=_seconds(raw.get("window", defaults.window_s)),
        min_samples=int(raw.get("min_samples", defaults.min_samples)),
        max_ttft_p50_ratio=_optional(raw, "max_ttft_p50_ratio", defaults.max_ttft_p50_ratio),
        max_ttft_p95_ratio=_optional(raw, "max_ttft_p95_ratio", defaults.max_ttft_p95_ratio),
        min_ttft_delta_s=_seconds(raw.get("min_ttft_delta", defaults.min_ttft_delta_s)),
        max_error_rate_increase=_optional(raw, "max_error_rate_increase", defaults.max_error_rate_increase),
        action=action,
    )


def _seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    return float(text[:-2]) / 1000 if text.endswith("ms") else parse_duration(text)


def _optional(raw: dict[str, Any], key: str, default: float | None) -> float | None:
    value = raw.get(key, default)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Side:
    """One version's traffic over the window."""

    served: str
    ttft_count: float
    ttft_p50: float | None
    ttft_p95: float | None
    requests: float
    errors: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def measure(store: MetricStore, served: str, now: float, window_s: float) -> Side:
    """TTFT and request outcomes of served model id `served` over the last `window_s`."""
    ctx = Context(store, now, window_s)
    model = Matcher("model", "=", served)

    def value(func: str, metric: str, q: float | None = None, *extra: Matcher) -> float | None:
        return scalar(evaluate(Call(func, metric, (model, *extra), window_s, q), ctx))

    return Side(
        served=served,
        ttft_count=value("count", "llmserve.ttft") or 0.0,
        ttft_p50=value("quantile", "llmserve.ttft", 0.5),
        ttft_p95=value("quantile", "llmserve.ttft", 0.95),
        requests=value("increase", "llmserve.requests") or 0.0,
        errors=value("increase", "llmserve.requests", None, _ERRORS) or 0.0,
    )


def judge(rule: RolloutRule, a: Side, b: Side) -> str | None:
    """Why B regressed against A, or None (also when either side has too few samples)."""
    if a.ttft_count >= rule.min_samples and b.ttft_count >= rule.min_samples:
        for label, limit, va, vb in (("p50", rule.max_ttft_p50_ratio, a.ttft_p50, b.ttft_p50),
                                     ("p95", rule.max_ttft_p95_ratio, a.ttft_p95, b.ttft_p95)):  # fmt: skip
            if limit is None or not va or vb is None or vb - va <= rule.min_ttft_delta_s:
                continue
            if vb / va > limit:
                return f"TTFT {label} {vb:.3f}s vs {va:.3f}s (x{vb / va:.2f} > x{limit:g})"
    limit = rule.max_error_rate_increase
    enough = a.requests >= rule.min_samples and b.requests >= rule.min_samples
    worse = b.error_rate - a.error_rate
    if limit is not None and enough and worse > limit:
        return f"error rate {b.error_rate:.1%} vs {a.error_rate:.1%} (+{worse:.1%} > {limit:.1%})"
    return None


class RolloutGuard:
    """Watches every split in the registry; run once per monitor evaluation round."""

    def __init__(self, rules: tuple[RolloutRule, ...], store: MetricStore, registry):
        self.rules = rules
        self.store = store
        self.registry = registry  # llmserve.common.models.registry.ModelRegistry
        self._counts: dict[tuple, int] = {}
        self._flagged: set[tuple] = set()  # (rule, split state) already alerted on (action: alert)

    async def evaluate(self, now: float) -> None:
        for name, aliases in (await self.registry.all_aliases()).items():
            for alias in aliases.values():
                for version in list(alias.split):
                    for rule in self.rules:
                        if await self._check(rule, name, alias, version, now):
                            break  # B is out of the split: no other rule needs to judge it

    async def _check(self, rule: RolloutRule, name: str, alias, version: str, now: float) -> bool:
        # Only what happened since the split was set counts (an earlier run of B is history).
        window = max(1.0, min(rule.window_s, now - alias.updated_at))
        a = measure(self.store, f"{name}@{alias.version}", now, window)
        b = measure(self.store, f"{name}@{version}", now, window)
        reason = judge(rule, a, b)
        if reason is None:
            return False
        if rule.action == "alert":
            key = (rule.name, name, alias.name, version, alias.updated_at)
            if key not in self._flagged:
                self._flagged.add(key)
                self._record(rule, name, alias, version, "regression_detected", reason, now)
            return False
        cleared = await self.registry.clear_split(
            name, alias.name, version, by=f"monitor:{rule.name}", reason=reason
        )
        if cleared is not None:  # None: someone else (another monitor, an operator) was first
            self._record(rule, name, alias, version, "rolled_back", reason, now)
        return True

    def _record(self, rule: RolloutRule, name: str, alias, version: str, action: str, reason: str,
                now: float) -> None:  # fmt: skip
        labels = {"model": name, "alias": alias.name, "version": f"{name}@{version}",
                  "target": f"{name}@{alias.version}", "action": action, "rule": rule.name,
                  "reason": reason}  # fmt: skip
        key = tuple(sorted(labels.items()))
        self._counts[key] = self._counts.get(key, 0) + 1
        self.store.record(ACTIONS_METRIC, Kind.COUNTER, labels, float(self._counts[key]), t=now, start_t=now,
                          unit="{action}", description="Traffic-split actions taken by the monitor.")  # fmt: skip
        log.warning("traffic split " + action.replace("_", " "), model=name, alias=alias.name,
                    version=version, target=alias.version, reason=reason, rule=rule.name)  # fmt: skip
