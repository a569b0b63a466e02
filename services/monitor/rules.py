"""Alert rules and notification channels, loaded from YAML and validated at start.

File layout (see rules/default.yaml):

    defaults: {channels: [log], repeat_interval: 4h}
    channels:
      log:   {type: log}
      hooks: {type: webhook, url: "${LLMSERVE_ALERT_WEBHOOK_URL:-}"}
    rules:
      - name: TTFTHigh
        expr: p99(llmserve.ttft[5m])      # query.py syntax
        comparison: ">"                   # > >= < <= == !=
        threshold: 2.0
        for: 2m                           # must hold this long before firing
        severity: warning                 # info | warning | critical
        group_by: [model]                 # one alert per model
        only_if: "count(llmserve.ttft[5m]) >= 5"   # evaluated only while this holds
        absent_value: 0                   # value when nothing reports (default: no data)
        labels: {team: serving}
        summary: "TTFT p99 of {model} is {value:.2f}s"
        channels: [log, hooks]
      - name: SplitRegression           # another kind: see rollout.py
        kind: split_rollback
        window: 5m

`${VAR}` and `${VAR:-default}` are replaced from the environment, so secrets and URLs stay out
of the file. A channel whose URL or host comes out empty is disabled (and logged), not an error.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .query import parse, parse_duration
from .rollout import KIND as ROLLOUT_KIND
from .rollout import RolloutRule, parse_rollout_rule

COMPARISONS = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
SEVERITIES = ("info", "warning", "critical")
_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
_CONDITION = re.compile(r"^(?P<expr>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[\d.eE+-]+)\s*$")


class RuleError(ValueError):
    """A rules file that does not validate; the message names the rule and field."""


@dataclass(frozen=True)
class Condition:
    """`expr comparison threshold`."""

    expr: str
    comparison: str
    threshold: float

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise RuleError(f"comparison {self.comparison!r} is not one of {sorted(COMPARISONS)}")
        object.__setattr__(self, "node", parse(self.expr))

    def holds(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)

    @classmethod
    def from_text(cls, text: str) -> Condition:
        m = _CONDITION.match(text.strip())
        if not m:
            raise RuleError(f"condition {text!r} is not 'expression OP number'")
        return cls(m["expr"], m["op"], float(m["threshold"]))


@dataclass(frozen=True)
class Rule:
    """One alert rule."""

    name: str
    condition: Condition
    for_s: float = 0.0
    severity: str = "warning"
    group_by: tuple[str, ...] = ()
    only_if: Condition | None = None
    absent_value: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    channels: tuple[str, ...] = ("log",)
    repeat_interval_s: float = 4 * 3600.0

    def render_summary(self, group: dict[str, str], value: float) -> str:
        fields = _Blank(
            {
                **self.labels,
                **group,
                "value": value,
                "threshold": self.condition.threshold,
                "alertname": self.name,
            }
        )
        try:
            return (
                self.summary or f"{self.name}: {{value}} {self.condition.comparison} {{threshold}}"
            ).format_map(fields)
        except (ValueError, TypeError):  # a bad format spec must not stop the notification
            return f"{self.name}: {value} {self.condition.comparison} {self.condition.threshold}"


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True)
class ChannelConfig:
    """A named notification channel: type (log, webhook, slack, email) and its options."""

    name: str
    type: str
    options: dict[str, Any]
    enabled: bool = True


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    channels: dict[str, ChannelConfig]
    rollouts: tuple[RolloutRule, ...] = ()  # `kind: split_rollback` entries


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    source: Mapping[str, str] = os.environ if env is None else env
    return _ENV.sub(lambda m: source.get(m[1], m[2] or ""), text)


def seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return parse_duration(str(value).strip())


def _channel(name: str, raw: dict[str, Any]) -> ChannelConfig:
    kind = raw.get("type", name)
    if kind not in ("log", "webhook", "slack", "email"):
        raise RuleError(f"channel {name}: unknown type {kind!r}")
    options = {k: v for k, v in raw.items() if k != "type"}
    required = {"webhook": "url", "slack": "url", "email": "host"}.get(kind)
    enabled = not required or bool(str(options.get(required) or "").strip())
    if kind == "email" and enabled and not options.get("to"):
        raise RuleError(f"channel {name}: email needs 'to'")
    return ChannelConfig(name, kind, options, enabled)


def _rule(raw: dict[str, Any], defaults: dict[str, Any], channels: dict[str, ChannelConfig]) -> Rule:
    name = raw.get("name") or "?"
    try:
        severity = str(raw.get("severity", "warning")).lower()
        if severity not in SEVERITIES:
            raise RuleError(f"severity {severity!r} is not one of {SEVERITIES}")
        wanted = tuple(raw.get("channels") or defaults.get("channels") or ("log",))
        unknown = [c for c in wanted if c not in channels]
        if unknown:
            raise RuleError(f"unknown channels {unknown}")
        absent = raw.get("absent_value")
        return Rule(
            name=raw["name"],
            condition=Condition(str(raw["expr"]), str(raw.get("comparison", ">")), float(raw["threshold"])),
            for_s=seconds(raw.get("for", 0)),
            severity=severity,
            group_by=tuple(raw.get("group_by") or ()),
            only_if=Condition.from_text(raw["only_if"]) if raw.get("only_if") else None,
            absent_value=None if absent is None else float(absent),
            labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
            summary=str(raw.get("summary", "")),
            channels=wanted,
            repeat_interval_s=seconds(raw.get("repeat_interval", defaults.get("repeat_interval", "4h"))),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise RuleError(f"rule {name}: {e}") from e


def parse_rules(text: str, env: dict[str, str] | None = None) -> RuleSet:
    """Parse a rules document (after `${VAR}` expansion)."""
    doc = yaml.safe_load(expand_env(text, env)) or {}
    defaults = doc.get("defaults") or {}
    channels = {"log": ChannelConfig("log", "log", {})}
    for name, raw in (doc.get("channels") or {}).items():
        channels[name] = _channel(name, raw or {})
    entries = doc.get("rules") or ()
    rules = tuple(_rule(raw, defaults, channels) for raw in entries if raw.get("kind", "alert") == "alert")
    rollouts = tuple(_rollout(raw) for raw in entries if raw.get("kind", "alert") != "alert")
    names = [r.name for r in rules] + [r.name for r in rollouts]
    if len(set(names)) != len(names):
        raise RuleError("rule names must be unique")
    return RuleSet(rules, channels, rollouts)


def _rollout(raw: dict[str, Any]) -> RolloutRule:
    name = raw.get("name") or "?"
    if raw.get("kind") != ROLLOUT_KIND:
        raise RuleError(f"rule {name}: unknown kind {raw.get('kind')!r} (alert or {ROLLOUT_KIND})")
    try:
        return parse_rollout_rule(raw)
    except (KeyError, ValueError, TypeError) as e:
        raise RuleError(f"rule {name}: {e}") from e


def load_rules(path: str | Path, env: dict[str, str] | None = None) -> RuleSet:
    return parse_rules(Path(path).read_text(), env)


def default_rules_path() -> Path:
    return Path(__file__).with_name("rules") / "default.yaml"
