"""An in-process monitor on port 0 (gRPC and HTTP) and real OTLP exporters pointed at it.

OTLP exporters are synchronous: they run in worker threads (asyncio.to_thread) so they never
block the event loop that serves the monitor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from llmserve.common.server import GrpcApp
from llmserve.monitor.app import MonitorService
from llmserve.monitor.settings import MonitorSettings


@dataclass
class RunningMonitor:
    app: GrpcApp
    service: MonitorService

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"


@contextlib.asynccontextmanager
async def running_monitor(**overrides):
    fields = {
        "port": 0,
        "http_port": 0,
        "registry_poll_s": 0,
        "evaluation_interval_s": 0.2,
        "drain_seconds": 1,
        **overrides,
    }
    settings = MonitorSettings(**fields)
    service = MonitorService(settings)
    async with GrpcApp(service, settings) as app:
        yield RunningMonitor(app, service)


def otlp_meter_provider(endpoint: str, service: str) -> MeterProvider:
    """The exporter services use, flushed by hand (a long interval keeps it from racing)."""
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=5), export_interval_millis=3_600_000
    )
    return MeterProvider(
        resource=Resource.create({"service.name": f"llmserve-{service}"}), metric_readers=[reader]
    )


def otlp_tracer_provider(endpoint: str, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"llmserve-{service}"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=5))
    )
    return provider
