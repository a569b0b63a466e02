"""This process's own metrics in the Prometheus text format, from the same OTel instruments.

`PrometheusReader` is an OpenTelemetry `MetricReader`: installed on the meter provider next to
the OTLP exporter, it reads the one set of instruments of `llmserve.common.metrics` when
scraped, so a per-process `/metrics` and the monitor's never disagree on what was counted.
Names follow the monitor's exposition exactly (`prom_name`: dots to underscores, the unit as a
suffix, `_total` on counters), so a dashboard or rule works against either. Each series carries
the `service` label (as on the monitor); Prometheus adds `job` and `instance` itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from opentelemetry.sdk.metrics.export import Gauge, Histogram, MetricReader, MetricsData, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "W": "watts"}
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def prom_name(name: str, unit: str = "") -> str:
    """The Prometheus name of an instrument (without the `_total` a counter family adds)."""
    base = _BAD.sub("_", name)
    suffix = _UNIT_SUFFIX.get(unit)
    return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base


def label_name(key: str) -> str:
    return _BAD.sub("_", key)


class PrometheusReader(MetricReader):
    """Collects the meter provider's instruments on demand and renders them as families."""

    def __init__(self, service: str):
        super().__init__()  # cumulative temporality for every instrument: what Prometheus wants
        self.service = service
        self._data: MetricsData | None = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> None:
        self._data = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self._data = None

    def families(self, timeout_millis: float = 10_000) -> list[Metric]:
        """The instruments' current values as Prometheus families (read on every scrape)."""
        try:
            self.collect(timeout_millis=timeout_millis)
        except Exception:  # not registered on a provider yet (or shut down): nothing to show
            return []
        data, self._data = self._data, None
        return list(self._families(data)) if data is not None else []

    def _families(self, data: MetricsData) -> Iterable[Metric]:
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    family = self._family(metric)
                    if family is not None:
                        yield family

    def _family(self, metric) -> Metric | None:
        points = list(metric.data.data_points)
        if not points:
            return None
        name, doc = prom_name(metric.name, metric.unit or ""), metric.description or metric.name
        labels = sorted({label_name(k) for p in points for k in (p.attributes or {})} | {"service"})
        if isinstance(metric.data, Histogram):
            hist = HistogramMetricFamily(name, doc, labels=labels)
            for p in points:
                hist.add_metric(self._values(p, labels), _buckets(p), p.sum)
            return hist
        if not isinstance(metric.data, Sum | Gauge):
            return None
        monotonic = isinstance(metric.data, Sum) and metric.data.is_monotonic
        family = (CounterMetricFamily if monotonic else GaugeMetricFamily)(name, doc, labels=labels)
        for p in points:
            family.add_metric(self._values(p, labels), float(p.value))
        return family

    def _values(self, point, labels: list[str]) -> list[str]:
        attrs = {label_name(k): str(v) for k, v in (point.attributes or {}).items()}
        attrs["service"] = self.service
        return [attrs.get(n, "") for n in labels]


class ReaderCollector(Collector):
    """prometheus_client's side: every scrape reads the reader afresh."""

    def __init__(self, reader: PrometheusReader):
        self.reader = reader

    def collect(self) -> Iterable[Metric]:
        return self.reader.families()


def _buckets(point) -> list[tuple[str, float]]:
    cumulative, out = 0.0, []
    for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
        cumulative += count
        out.append((repr(float(bound)), cumulative))
    out.append(("+Inf", float(point.count)))
    return out


_reader: PrometheusReader | None = None
_registry = CollectorRegistry(auto_describe=False)


def install_reader(service: str) -> PrometheusReader:
    """The process's reader (made once), registered for `render`; put it on the meter provider."""
    global _reader
    if _reader is None:
        _reader = PrometheusReader(service)
        _registry.register(ReaderCollector(_reader))
    return _reader


def render() -> bytes:
    """This process's metrics, Prometheus text format (empty before `install_reader`)."""
    return generate_latest(_registry)
