"""A small PromQL-like expression language over the store, for alert rules and summaries.

    expr     := term (('+' | '-') term)*
    term     := factor (('*' | '/') factor)*
    factor   := NUMBER | '(' expr ')' | '-' factor | FUNC '(' [NUMBER ','] selector ')'
    selector := metric.name ['{' label OP "value", ... '}'] ['[' 30s | 5m | 1h ']']

Functions over a window (default: the context's window): `rate`, `increase` (counters);
`p50`, `p90`, `p95`, `p99`, `quantile(q, ...)`, `mean`, `count` (histograms). Functions over
the latest non-stale values: `sum`, `max`, `min`, `avg`. Label operators: = != =~ !~.

Each function aggregates the selected series into groups by the context's `group_by` labels
(a rule's `group_by: [model]` gives one value per model). A result is a float (a scalar) or
a dict from group key to value; binary operators match groups, scalars apply to every group,
and dividing by zero leaves the group out (no data, not infinity).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .series import Kind, Series, merge_hists, quantile
from .store import Matcher, MetricStore

Value = float | dict[tuple[str, ...], float]

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![smh\w]))
  | (?P<duration>\d+(?:\.\d+)?[smh])
  | (?P<name>[A-Za-z_][\w.]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>=~|!~|!=|=|[-+*/(){}\[\],])
)""",
    re.VERBOSE,
)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
WINDOW_FUNCS = {"rate", "increase", "mean", "count", "quantile", *_QUANTILES}
INSTANT_FUNCS = {"sum", "max", "min", "avg"}


class QueryError(ValueError):
    """An expression that does not parse."""


@dataclass
class Context:
    """What an evaluation needs besides the expression."""

    store: MetricStore
    now: float
    window_s: float = 60.0
    stale_after_s: float = 30.0
    group_by: tuple[str, ...] = ()
    matchers: tuple[Matcher, ...] = field(default_factory=tuple)  # added to every selector


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"unexpected {text[pos : pos + 10]!r} at {pos}")
        tokens.append((m.lastgroup or "", m.group(m.lastgroup or 0)))
        pos = m.end()
    return tokens


def parse_duration(text: str) -> float:
    return float(text[:-1]) * _UNITS[text[-1]]


@dataclass(frozen=True)
class Call:
    func: str
    metric: str
    matchers: tuple[Matcher, ...]
    window_s: float | None
    q: float | None = None


@dataclass(frozen=True)
class BinOp:
    op: str
    left: object
    right: object


class _Parser:
    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.peek()
        if (value is not None and v != value) or (kind is not None and k != kind):
            raise QueryError(f"expected {value or kind}, found {v or 'end'!r}")
        self.i += 1
        return v

    def expr(self):
        node = self.term()
        while self.peek()[1] in ("+", "-"):
            node = BinOp(self.take(), node, self.term())
        return node

    def term(self):
        node = self.factor()
        while self.peek()[1] in ("*", "/"):
            node = BinOp(self.take(), node, self.factor())
        return node

    def factor(self):
        kind, value = self.peek()
        if kind == "number":
            self.i += 1
            return float(value)
        if value == "(":
            self.take("(")
            node = self.expr()
            self.take(")")
            return node
        if value == "-":
            self.take("-")
            return BinOp("-", 0.0, self.factor())
        if kind == "name":
            return self.call()
        raise QueryError(f"unexpected {value or 'end'!r}")

    def call(self) -> Call:
        func = self.take(kind="name")
        if func not in WINDOW_FUNCS | INSTANT_FUNCS:
            raise QueryError(f"unknown function {func!r}")
        self.take("(")
        q = _QUANTILES.get(func)
        if func == "quantile":
            q = float(self.take(kind="number"))
            self.take(",")
        metric = self.take(kind="name")
        matchers = self.matchers() if self.peek()[1] == "{" else ()
        window = None
        if self.peek()[1] == "[":
            self.take("[")
            window = parse_duration(self.take(kind="duration"))
            self.take("]")
        self.take(")")
        return Call(func, metric, matchers, window, q)

    def matchers(self) -> tuple[Matcher, ...]:
        self.take("{")
        found = []
        while self.peek()[1] != "}":
            label = self.take(kind="name")
            op = self.take(kind="op")
            if op not in ("=", "!=", "=~", "!~"):
                raise QueryError(f"bad label operator {op!r}")
            found.append(Matcher(label, op, self.take(kind="string")[1:-1].replace('\\"', '"')))
            if self.peek()[1] == ",":
                self.take(",")
        self.take("}")
        return tuple(found)


def parse(text: str):
    """Parse an expression; raises QueryError with the position of the problem."""
    parser = _Parser(text)
    node = parser.expr()
    if parser.i != len(parser.tokens):
        raise QueryError(f"unexpected {parser.peek()[1]!r} after the expression")
    return node


def evaluate(node, ctx: Context) -> Value:
    """Evaluate a parsed expression (or a string) against the store."""
    if isinstance(node, str):
        node = parse(node)
    if isinstance(node, float):
        return node
    if isinstance(node, BinOp):
        return _binop(_ARITH[node.op], evaluate(node.left, ctx), evaluate(node.right, ctx))
    return _call(node, ctx)


def _apply(fn, a: float, b: float) -> float | None:
    try:
        return fn(a, b)
    except ZeroDivisionError:
        return None


def _binop(fn, left: Value, right: Value) -> Value:
    if isinstance(left, float) and isinstance(right, float):
        result = _apply(fn, left, right)
        return {} if result is None else result
    lv = left if isinstance(left, dict) else None
    rv = right if isinstance(right, dict) else None
    keys = (lv.keys() & rv.keys()) if lv is not None and rv is not None else (lv or rv or {}).keys()
    out = {}
    for k in keys:
        a = lv[k] if lv is not None else left
        b = rv[k] if rv is not None else right
        result = _apply(fn, a, b)  # type: ignore[arg-type]
        if result is not None:
            out[k] = result
    return out


def _groups(series: list[Series], by: tuple[str, ...]) -> dict[tuple[str, ...], list[Series]]:
    groups: dict[tuple[str, ...], list[Series]] = {}
    for s in series:
        labels = s.label_dict
        groups.setdefault(tuple(labels.get(label, "") for label in by), []).append(s)
    return groups


def _call(call: Call, ctx: Context) -> dict[tuple[str, ...], float]:
    series = ctx.store.select(call.metric, (*call.matchers, *ctx.matchers))
    window = call.window_s or ctx.window_s
    since = ctx.now - window
    out: dict[tuple[str, ...], float] = {}
    for key, members in _groups(series, ctx.group_by).items():
        value = _aggregate(call, members, ctx, since, window)
        if value is not None:
            out[key] = value
    return out


def _aggregate(call: Call, members: list[Series], ctx: Context, since: float, window: float) -> float | None:
    if call.func in ("rate", "increase"):
        total = sum(s.increase(since) for s in members if s.kind is not Kind.HISTOGRAM)
        return total / window if call.func == "rate" else total
    if call.func in WINDOW_FUNCS:
        hists = [s for s in members if s.kind is Kind.HISTOGRAM]
        if not hists:
            return None
        bounds = hists[0].bounds
        merged = merge_hists([s.hist_delta(since) for s in hists if s.bounds == bounds])
        if call.func == "count":
            return merged.count
        if call.func == "mean":
            return merged.total / merged.count if merged.count else None
        return quantile(call.q or 0.5, bounds, merged)
    latest = [v for s in members if (v := s.latest(ctx.now, ctx.stale_after_s)) is not None]
    if not latest:
        return None
    if call.func == "sum":
        return float(sum(latest))
    if call.func == "max":
        return float(max(latest))
    if call.func == "min":
        return float(min(latest))
    return float(sum(latest) / len(latest))


def scalar(value: Value) -> float | None:
    """A result as one number: the scalar, the only group's value, or the sum of groups."""
    if isinstance(value, float):
        return value
    return float(sum(value.values())) if value else None
