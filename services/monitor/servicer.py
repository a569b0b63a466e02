"""MonitorService over gRPC: a thin adapter from domain objects to llmserve.monitor.v1."""

from __future__ import annotations

from llmserve.common.errors import InvalidArgument
from llmserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc

from .alerts import Alert, Silence, State
from .summary import ModelSummary, Percentiles, Summary

_STATE = {
    State.PENDING: monitor_pb2.ALERT_STATE_PENDING,
    State.FIRING: monitor_pb2.ALERT_STATE_FIRING,
    State.RESOLVED: monitor_pb2.ALERT_STATE_RESOLVED,
    State.INACTIVE: monitor_pb2.ALERT_STATE_INACTIVE,
}
_SEVERITY = {
    "info": monitor_pb2.SEVERITY_INFO,
    "warning": monitor_pb2.SEVERITY_WARNING,
    "critical": monitor_pb2.SEVERITY_CRITICAL,
}


def _ms(t: float) -> int:
    return int(t * 1000) if t else 0


def percentiles_pb(p: Percentiles) -> monitor_pb2.LatencyPercentiles:
    return monitor_pb2.LatencyPercentiles(p50=p.p50, p95=p.p95, p99=p.p99, count=p.count)


def model_pb(m: ModelSummary) -> monitor_pb2.ModelSummary:
    return monitor_pb2.ModelSummary(
        model=m.model,
        requests_total=m.requests_total,
        requests_in_window=m.requests_in_window,
        request_rate=m.request_rate,
        error_rate=m.error_rate,
        requests_by_status=m.requests_by_status,
        ttft=percentiles_pb(m.ttft),
        inter_token=percentiles_pb(m.inter_token),
        e2e=percentiles_pb(m.e2e),
        queue_wait=percentiles_pb(m.queue_wait),
        tokens_in_rate=m.tokens_in_rate,
        tokens_out_rate=m.tokens_out_rate,
        queue_depth=m.queue_depth,
        batch_size_mean=m.batch_size_mean,
        kv_blocks_used=m.kv_blocks_used,
        kv_blocks_free=m.kv_blocks_free,
        kv_utilization=m.kv_utilization,
        preemption_rate=m.preemption_rate,
        workers_live=m.workers_live,
        ratelimit_rejection_rate=m.ratelimit_rejection_rate,
    )


def summary_pb(s: Summary) -> monitor_pb2.GetSummaryResponse:
    return monitor_pb2.GetSummaryResponse(
        window_seconds=s.window_s,
        overall=model_pb(s.overall),
        models=[model_pb(m) for m in s.models],
        recommended_workers=s.recommended_workers,
        firing_alerts=s.firing_alerts,
        computed_unix_ms=_ms(s.computed_at),
    )


def alert_pb(a: Alert) -> monitor_pb2.Alert:
    return monitor_pb2.Alert(
        fingerprint=a.fingerprint,
        name=a.name,
        state=_STATE[a.state],
        severity=_SEVERITY.get(a.rule.severity, monitor_pb2.SEVERITY_UNSPECIFIED),
        labels=a.labels,
        summary=a.summary,
        value=a.value,
        active_since_unix_ms=_ms(a.active_since),
        fired_unix_ms=_ms(a.fired_at),
        resolved_unix_ms=_ms(a.resolved_at),
        silenced=a.silenced,
    )


def silence_pb(s: Silence) -> monitor_pb2.Silence:
    return monitor_pb2.Silence(id=s.id, matchers=s.matchers, ends_unix_ms=_ms(s.ends_at), comment=s.comment)


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    """Adapts the monitor's core (see app.MonitorCore) to the gRPC API."""

    def __init__(self, core):
        self.core = core

    async def GetSummary(self, request, context):
        if request.window_seconds < 0:
            raise InvalidArgument("window_seconds must be >= 0")
        return summary_pb(self.core.summary(request.window_seconds or None, request.model))

    async def ListAlerts(self, request, context):
        alerts = self.core.alerts.alerts(include_resolved=request.include_resolved)
        return monitor_pb2.ListAlertsResponse(alerts=[alert_pb(a) for a in alerts])

    async def WatchAlerts(self, request, context):
        queue = self.core.alerts.subscribe()
        try:
            for alert in self.core.alerts.alerts():
                yield monitor_pb2.WatchAlertsResponse(alert=alert_pb(alert))
            while True:
                yield monitor_pb2.WatchAlertsResponse(alert=alert_pb(await queue.get()))
        finally:
            self.core.alerts.unsubscribe(queue)

    async def GetTrace(self, request, context):
        spans = self.core.spans.get(request.trace_id)
        return monitor_pb2.GetTraceResponse(
            spans=[
                monitor_pb2.Span(
                    trace_id=s.trace_id,
                    span_id=s.span_id,
                    parent_span_id=s.parent_span_id,
                    name=s.name,
                    service=s.service,
                    start_unix_nano=s.start_unix_nano,
                    end_unix_nano=s.end_unix_nano,
                    error=s.error,
                    attributes=s.attributes,
                )
                for s in spans
            ]
        )

    async def CreateSilence(self, request, context):
        if request.duration_seconds <= 0:
            raise InvalidArgument("duration_seconds must be > 0")
        silence = self.core.silence(dict(request.matchers), request.duration_seconds, request.comment)
        return monitor_pb2.CreateSilenceResponse(silence=silence_pb(silence))

    async def ListSilences(self, request, context):
        return monitor_pb2.ListSilencesResponse(
            silences=[silence_pb(s) for s in self.core.alerts.silences.values()]
        )

    async def DeleteSilence(self, request, context):
        return monitor_pb2.DeleteSilenceResponse(found=self.core.alerts.delete_silence(request.id))
