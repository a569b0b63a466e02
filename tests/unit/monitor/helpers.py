"""Shared helpers for the monitor's unit tests: a fake clock and SDK-made OTLP payloads."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def sdk_meter(service: str = "gateway"):
    """A real SDK meter and a function returning what it recorded as an OTLP export request."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"service.name": f"llmserve-{service}"}), metric_readers=[reader]
    )

    def export_request():
        return encode_metrics(reader.get_metrics_data())

    return provider.get_meter("llmserve"), export_request
