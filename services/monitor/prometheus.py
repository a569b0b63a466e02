"""Prometheus exposition of what the monitor holds, rendered by prometheus_client.

Every series received over OTLP is re-exposed under its Prometheus name (dots to
underscores, unit suffix such as `_seconds`, counters `_total`), with `service` and
`service_instance` labels (not `instance`: Prometheus sets that to the scrape target and
would rename ours `exported_instance`); histograms keep their buckets so Grafana can run
histogram_quantile.
Gauges whose exporter stopped reporting are left out. Derived series are added: the
autoscaling signal, alerts, and the windowed percentiles and rates of the latest summary.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from llmserve.common.prom_endpoint import prom_name

from .alerts import AlertEngine, State
from .series import HistSample, Kind, Series, as_float
from .store import MetricStore
from .summary import Summary

__all__ = ["StoreCollector", "make_registry", "prom_name", "render"]
_BAD = re.compile(r"[^a-zA-Z0-9_]")
# Store labels renamed on the way out: Prometheus owns `instance` (the scrape target).
_RENAMED = {"instance": "service_instance"}


def _label(key: str) -> str:
    name = _BAD.sub("_", key)
    return _RENAMED.get(name, name)



def _label_names(series: list[Series]) -> list[str]:
    return sorted({_label(k) for s in series for k, _ in s.labels})


def _values(s: Series, names: list[str]) -> list[str]:
    labels = {_label(k): v for k, v in s.labels}
    return [labels.get(n, "") for n in names]


def _le(bound: float) -> str:
    return repr(float(bound))


class StoreCollector:
    """A prometheus_client collector over the store and the latest summary."""

    def __init__(
        self,
        store: MetricStore,
        alerts: AlertEngine,
        summary: Callable[[], Summary | None],
        stale_after_s: float,
    ):
        self.store = store
        self.alerts = alerts
        self.summary = summary
        self.stale_after_s = stale_after_s

    def collect(self):
        now = self.store.clock()
        for name in self.store.names():
            family = self._family(name, self.store.select(name), now)
            if family is not None:
                yield family
        yield from self._derived()

    def _family(self, name: str, series: list[Series], now: float):
        if not series:
            return None
        first = series[0]
        pname = prom_name(name, first.unit)
        if first.kind is Kind.GAUGE:
            series = [s for s in series if s.latest(now, self.stale_after_s) is not None]
            if not series:
                return None
        labels = _label_names(series)
        doc = first.description or name
        if first.kind is Kind.HISTOGRAM:
            histogram = HistogramMetricFamily(pname, doc, labels=labels)
            for s in series:
                self._add_histogram(histogram, s, labels)
            return histogram
        family_cls = CounterMetricFamily if first.kind is Kind.COUNTER else GaugeMetricFamily
        family = family_cls(pname, doc, labels=labels)
        for s in series:
            family.add_metric(_values(s, labels), as_float(s.values[-1]))
        return family

    def _add_histogram(self, family: HistogramMetricFamily, s: Series, labels: list[str]) -> None:
        h = s.values[-1]
        assert isinstance(h, HistSample)
        cumulative, buckets = 0.0, []
        for bound, count in zip(s.bounds, h.buckets, strict=False):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        buckets.append(("+Inf", h.count))
        family.add_metric(_values(s, labels), buckets, h.total)

    def _derived(self):
        summary = self.summary()
        recommended = GaugeMetricFamily(
            "llmserve_recommended_workers", "Workers the autoscaling signal recommends now."
        )
        yield self._alerts()
        if summary is None:
            return
        recommended.add_metric([], summary.recommended_workers)
        yield recommended
        # A summary (quantiles only): Prometheus' linter refuses `quantile` on any other type.
        latency = Metric("llmserve_window_latency_seconds",
                         f"Latency percentiles over the last {summary.window_s:g}s.", "summary")
        rates = GaugeMetricFamily(
            "llmserve_window_rate",
            f"Per-second rates over the last {summary.window_s:g}s.",
            labels=["model", "metric"],
        )
        for m in [summary.overall, *summary.models]:
            for metric, p in (
                ("ttft", m.ttft),
                ("inter_token", m.inter_token),
                ("e2e", m.e2e),
                ("queue_wait", m.queue_wait),
            ):
                for q, v in (("0.5", p.p50), ("0.95", p.p95), ("0.99", p.p99)):
                    latency.add_sample(latency.name, {"model": m.model, "metric": metric, "quantile": q}, v)
            for metric, v in (
                ("requests", m.request_rate),
                ("tokens_out", m.tokens_out_rate),
                ("tokens_in", m.tokens_in_rate),
                ("errors_ratio", m.error_rate),
            ):
                rates.add_metric([m.model, metric], v)
        yield latency
        yield rates


    def _alerts(self) -> GaugeMetricFamily:
        """Pending and firing alerts counted per rule, every rule present (0 when quiet), so
        a panel or a rule on this series has data on a healthy system too."""
        family = GaugeMetricFamily(
            "llmserve_alerts", "Alerts pending or firing, per rule (0 when none).",
            labels=["alertname", "severity", "state"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for rule in self.alerts.rules:
            for state in (State.PENDING, State.FIRING):
                counts[(rule.name, rule.severity, state.value)] = 0
        for a in self.alerts.alerts():
            key = (a.name, a.rule.severity, a.state.value)
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            family.add_metric(list(key), float(count))
        return family


def make_registry(collector: StoreCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
