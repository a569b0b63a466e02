"""The OTLP/gRPC collector services: metrics into the store, spans into the trace store.

Services export with the standard OpenTelemetry OTLP exporter to LLMSERVE_OTLP_ENDPOINT (the
monitor's gRPC port). Both cumulative and delta temporality are accepted; deltas are summed
into cumulative series so that every window computation sees one kind of data.
"""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from llmserve.common.logging import get_logger

from .series import HistSample, Kind
from .store import MetricStore
from .traces import SpanStore, StoredSpan

log = get_logger(__name__)

_DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA


def any_value(v: common_pb2.AnyValue) -> str:
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(v, kind)).strip()
    return str(getattr(v, kind))


def attributes(kvs) -> dict[str, str]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def source_labels(resource_attrs: dict[str, str], peer: str) -> dict[str, str]:
    """`service` and `instance` labels that keep replicas' series apart."""
    service = resource_attrs.get("service.name", "unknown").removeprefix("llmserve-")
    instance = resource_attrs.get("service.instance.id") or peer
    return {"service": service, "instance": instance}


class MetricsIngest:
    """Turns OTLP metric data into store samples."""

    def __init__(self, store: MetricStore):
        self.store = store
        self.skipped: set[str] = set()

    def ingest(self, request: metrics_service_pb2.ExportMetricsServiceRequest, peer: str = "") -> int:
        """Record every data point; returns how many were recorded."""
        now = self.store.clock()
        recorded = 0
        for rm in request.resource_metrics:
            source = source_labels(attributes(rm.resource.attributes), peer)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    recorded += self._metric(metric, source, now)
        return recorded

    def _metric(self, metric: metrics_pb2.Metric, source: dict[str, str], now: float) -> int:
        data = metric.WhichOneof("data")
        if data == "sum":
            kind = Kind.COUNTER if metric.sum.is_monotonic else Kind.GAUGE
            return self._scalars(
                metric,
                kind,
                metric.sum.data_points,
                metric.sum.aggregation_temporality == _DELTA,
                source,
                now,
            )
        if data == "gauge":
            return self._scalars(metric, Kind.GAUGE, metric.gauge.data_points, False, source, now)
        if data == "histogram":
            return self._histograms(metric, source, now)
        if metric.name not in self.skipped:  # exponential histograms and summaries: not used here
            self.skipped.add(metric.name)
            log.info("metric type not kept", metric=metric.name, type=data)
        return 0

    def _start_t(self, point, now: float) -> float | None:
        if not point.start_time_unix_nano or not point.time_unix_nano:
            return None
        return now - (point.time_unix_nano - point.start_time_unix_nano) / 1e9

    def _previous(self, name: str, labels: dict[str, str]):
        series = self.store.get(name, labels)
        return series.values[-1] if series is not None and series.values else None

    def _scalars(self, metric, kind: Kind, points, delta: bool, source, now: float) -> int:
        for p in points:
            labels = {**attributes(p.attributes), **source}
            value = float(p.as_double if p.WhichOneof("value") == "as_double" else p.as_int)
            if delta:
                value += float(self._previous(metric.name, labels) or 0.0)
            self.store.record(
                metric.name,
                kind,
                labels,
                value,
                t=now,
                start_t=None if delta else self._start_t(p, now),
                unit=metric.unit,
                description=metric.description,
            )
        return len(points)

    def _histograms(self, metric, source, now: float) -> int:
        delta = metric.histogram.aggregation_temporality == _DELTA
        for p in metric.histogram.data_points:
            labels = {**attributes(p.attributes), **source}
            sample = HistSample(float(p.count), float(p.sum), tuple(float(c) for c in p.bucket_counts))
            prev = self._previous(metric.name, labels) if delta else None
            if isinstance(prev, HistSample) and len(prev.buckets) == len(sample.buckets):
                sample = HistSample(
                    prev.count + sample.count,
                    prev.total + sample.total,
                    tuple(a + b for a, b in zip(prev.buckets, sample.buckets, strict=True)),
                )
            self.store.record(
                metric.name,
                Kind.HISTOGRAM,
                labels,
                sample,
                t=now,
                start_t=None if delta else self._start_t(p, now),
                bounds=tuple(p.explicit_bounds),
                unit=metric.unit,
                description=metric.description,
            )
        return len(metric.histogram.data_points)


def spans_from(request: trace_service_pb2.ExportTraceServiceRequest) -> list[StoredSpan]:
    spans = []
    for rs in request.resource_spans:
        service = attributes(rs.resource.attributes).get("service.name", "unknown")
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    StoredSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        service=service,
                        start_unix_nano=s.start_time_unix_nano,
                        end_unix_nano=s.end_time_unix_nano,
                        error=s.status.code == 2,
                        attributes=attributes(s.attributes),
                    )
                )
    return spans


class OtlpMetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    """opentelemetry.proto.collector.metrics.v1.MetricsService on the monitor's port."""

    def __init__(self, ingest: MetricsIngest):
        self.ingest = ingest

    async def Export(self, request, context):
        self.ingest.ingest(request, context.peer())
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpTraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """opentelemetry.proto.collector.trace.v1.TraceService on the monitor's port."""

    def __init__(self, spans: SpanStore):
        self.spans = spans

    async def Export(self, request, context):
        self.spans.add(spans_from(request))
        return trace_service_pb2.ExportTraceServiceResponse()


SERVICE_NAMES = (
    metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
)
