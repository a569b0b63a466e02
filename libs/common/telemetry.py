"""OpenTelemetry set up once per process; trace context carried through Redis messages.

Exporters never block serving: metrics export on a background reader, spans through a
batch processor, and both drop data when the monitor is unreachable.
"""

from __future__ import annotations

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .internal_auth import InternalAuth
from .prom_endpoint import install_reader

_configured = False


def configure_telemetry(service: str, otlp_endpoint: str, *, export_interval_ms: int = 5000,
                        auth: InternalAuth | None = None) -> None:
    """Install global meter and tracer providers; export over OTLP/gRPC when an endpoint is set.

    The monitor's OTLP receiver is internal: `auth` gives the exporters this service's
    credential (a token in metadata, or the mutual-TLS certificate). The same instruments are
    always readable as this process's Prometheus `/metrics` (`prom_endpoint.render`), whether
    or not a monitor is configured."""
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": f"llmserve-{service}"})
    readers: list = [install_reader(service)]
    tracer_provider = TracerProvider(resource=resource)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        auth = auth or InternalAuth()
        creds = auth.channel_credentials()
        headers = dict(auth.metadata()) or None
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=otlp_endpoint, insecure=creds is None, credentials=creds,
                                   headers=headers, timeout=2),
                export_interval_millis=export_interval_ms,
            )
        )
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(
                endpoint=otlp_endpoint, insecure=creds is None, credentials=creds, headers=headers, timeout=2)))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    trace.set_tracer_provider(tracer_provider)


def shutdown_telemetry() -> None:
    for provider in (metrics.get_meter_provider(), trace.get_tracer_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown:
            shutdown()


def inject_context(context=None) -> dict[str, str]:
    """A trace context (default: the current one) as a dict, to travel inside a Redis message."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(carrier: dict[str, str]):
    """The trace context carried by a Redis message, to parent spans on."""
    return propagate.extract(dict(carrier))
