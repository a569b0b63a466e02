"""Serving summaries over a rolling window, overall and per model, and their recent history.

The same numbers feed GetSummary, the dashboard's JSON, the derived Prometheus gauges and
the autoscaling signal, so what an operator sees in each place agrees.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field

from llmserve.common.metrics import SERVER_ERROR_STATUSES

from .autoscale import Load, ScalingTargets, recommend
from .query import Context, evaluate, scalar
from .series import as_float
from .store import Matcher, MetricStore

_ERRORS = "|".join(SERVER_ERROR_STATUSES)
# Metrics whose `model` label names the models a summary covers.
_MODEL_SOURCES = (
    "llmserve.requests",
    "llmserve.requests.active",
    "llmserve.queue.depth",
    "llmserve.workers",
    "llmserve.kv.blocks.used",
    "llmserve.engine.tokens",
)


@dataclass
class Percentiles:
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    count: int = 0


@dataclass
class ModelSummary:
    """See llmserve.monitor.v1.ModelSummary for each field's meaning."""

    model: str = ""
    requests_total: int = 0
    requests_in_window: int = 0
    request_rate: float = 0.0
    error_rate: float = 0.0
    requests_by_status: dict[str, int] = field(default_factory=dict)
    ttft: Percentiles = field(default_factory=Percentiles)
    inter_token: Percentiles = field(default_factory=Percentiles)
    e2e: Percentiles = field(default_factory=Percentiles)
    queue_wait: Percentiles = field(default_factory=Percentiles)
    tokens_in_rate: float = 0.0
    tokens_out_rate: float = 0.0
    queue_depth: float = 0.0
    batch_size_mean: float = 0.0
    kv_blocks_used: float = 0.0
    kv_blocks_free: float = 0.0
    kv_utilization: float = 0.0
    preemption_rate: float = 0.0
    workers_live: int = -1
    ratelimit_rejection_rate: float = 0.0


@dataclass
class Summary:
    window_s: float
    overall: ModelSummary
    models: list[ModelSummary]
    recommended_workers: int
    firing_alerts: int
    computed_at: float

    def to_json(self) -> dict:
        return asdict(self)


def models_seen(store: MetricStore) -> list[str]:
    found = {s.label_dict.get("model", "") for name in _MODEL_SOURCES for s in store.select(name)}
    return sorted(m for m in found if m)


def _lifetime_by(store: MetricStore, name: str, matchers: tuple[Matcher, ...], label: str) -> dict[str, int]:
    """Latest cumulative counts (since each exporter started), summed by one label."""
    out: dict[str, int] = {}
    for s in store.select(name, matchers):
        if s.values:
            key = s.label_dict.get(label, "")
            out[key] = out.get(key, 0) + int(round(as_float(s.values[-1])))
    return out


class _Eval:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def __call__(self, expr: str) -> float | None:
        return scalar(evaluate(expr, self.ctx))

    def num(self, expr: str) -> float:
        return self(expr) or 0.0

    def percentiles(self, metric: str) -> Percentiles:
        return Percentiles(
            self.num(f"p50({metric})"),
            self.num(f"p95({metric})"),
            self.num(f"p99({metric})"),
            int(self.num(f"count({metric})")),
        )


def summarize_model(
    store: MetricStore, model: str | None, now: float, window_s: float, stale_after_s: float
) -> ModelSummary:
    """One model's summary (model None: the aggregate over every model)."""
    matchers = () if model is None else (Matcher("model", "=", model),)
    ev = _Eval(Context(store, now, window_s, stale_after_s, (), matchers))
    by_status = _lifetime_by(store, "llmserve.requests", matchers, "status")
    in_window = ev.num("increase(llmserve.requests)")
    errors = ev.num(f'increase(llmserve.requests{{status=~"{_ERRORS}"}})')
    used, free = ev.num("sum(llmserve.kv.blocks.used)"), ev.num("sum(llmserve.kv.blocks.free)")
    # The registry probe and schedulers report the same workers: take the largest, not the sum.
    workers = scalar(
        evaluate(
            'max(llmserve.workers{state="live"})',
            Context(store, now, window_s, stale_after_s, (), (Matcher("model", "=", model or ""),)),
        )
    )
    return ModelSummary(
        model=model or "",
        requests_total=sum(by_status.values()),
        requests_in_window=int(round(in_window)),
        request_rate=in_window / window_s,
        error_rate=errors / in_window if in_window else 0.0,
        requests_by_status=by_status,
        ttft=ev.percentiles("llmserve.ttft"),
        inter_token=ev.percentiles("llmserve.inter_token_latency"),
        e2e=ev.percentiles("llmserve.e2e_latency"),
        queue_wait=ev.percentiles("llmserve.queue.wait"),
        tokens_in_rate=ev.num("rate(llmserve.tokens.in)"),
        tokens_out_rate=ev.num("rate(llmserve.tokens.out)"),
        queue_depth=ev.num("sum(llmserve.queue.depth)"),
        batch_size_mean=ev.num("mean(llmserve.batch.size)"),
        kv_blocks_used=used,
        kv_blocks_free=free,
        kv_utilization=used / (used + free) if used + free else 0.0,
        preemption_rate=ev.num("rate(llmserve.preemptions)"),
        workers_live=-1 if workers is None else int(workers),
        ratelimit_rejection_rate=ev.num("rate(llmserve.ratelimit.rejections)"),
    )


def summarize(
    store: MetricStore,
    now: float,
    window_s: float,
    stale_after_s: float,
    targets: ScalingTargets,
    firing_alerts: int = 0,
    model: str = "",
) -> Summary:
    """Overall and per-model summaries plus the autoscaling recommendation."""
    overall = summarize_model(store, None, now, window_s, stale_after_s)
    models = [
        summarize_model(store, m, now, window_s, stale_after_s)
        for m in models_seen(store)
        if not model or m == model
    ]
    load = Load(
        workers=overall.workers_live if overall.workers_live >= 0 else None,
        queue_depth=overall.queue_depth,
        kv_utilization=overall.kv_utilization if overall.kv_blocks_used + overall.kv_blocks_free else None,
        ttft_p99_s=overall.ttft.p99 if overall.ttft.count >= 5 else None,  # a few samples say nothing
    )
    return Summary(window_s, overall, models, recommend(load, targets), firing_alerts, now)


@dataclass
class HistoryPoint:
    """One dashboard chart point."""

    t: float
    request_rate: float
    tokens_out_rate: float
    ttft_p50: float
    ttft_p95: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    queue_depth: float
    kv_utilization: float
    error_rate: float
    workers_live: int
    recommended_workers: int
    firing_alerts: int


class History:
    """The last N summaries, for the dashboard's charts."""

    def __init__(self, points: int = 360):
        self.points: deque[HistoryPoint] = deque(maxlen=points)

    def add(self, s: Summary) -> None:
        o = s.overall
        self.points.append(
            HistoryPoint(
                s.computed_at,
                o.request_rate,
                o.tokens_out_rate,
                o.ttft.p50,
                o.ttft.p95,
                o.ttft.p99,
                o.inter_token.p50,
                o.inter_token.p99,
                o.queue_depth,
                o.kv_utilization,
                o.error_rate,
                o.workers_live,
                s.recommended_workers,
                s.firing_alerts,
            )
        )

    def to_json(self) -> list[dict]:
        return [asdict(p) for p in self.points]
