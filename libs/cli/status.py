"""`llmserve status`: workers, models, queues, KV use and alerts, in one screen.

Reads three sources and shows whatever answers: the worker registry in Redis (heartbeats) and
the tenant windows every live scheduler replica publishes there (combined: the shares and waits
of the whole queue), the scheduler's GetQueueStats, and the monitor's ListAlerts. A source that is down is named
in the output instead of failing the command, since status is what one runs when things
are broken.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field

import grpc

from llmserve.common import redis_client, tenant_window
from llmserve.common.workers import WorkerLoad, registry_snapshot

from .internal_creds import operator_auth
from .tables import percent, table


@dataclass
class QueueRow:
    model: str
    waiting: int
    workers: int


@dataclass
class TenantRow:
    tenant: str
    weight: float
    tokens_last_minute: int
    share: float
    weight_share: float
    wait_p50_ms: float
    wait_p99_ms: float
    refused_deadline: int


@dataclass
class AlertRow:
    name: str
    severity: str
    state: str
    summary: str
    since_s: float


@dataclass
class StatusReport:
    """Everything `status` shows; `errors` names the sources that did not answer."""

    workers: list[WorkerLoad] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    queues: list[QueueRow] | None = None
    dispatched: int = 0
    tenants: list[TenantRow] = field(default_factory=list)
    # Schedulers whose published windows `tenants` combines; empty: the one scheduler asked.
    tenant_schedulers: list[str] = field(default_factory=list)
    fair_share_units: list[str] = field(default_factory=list)
    alerts: list[AlertRow] | None = None
    errors: dict[str, str] = field(default_factory=dict)


async def _registry(redis_url: str, report: StatusReport, timeout: float) -> None:
    r = redis_client.connect(redis_url, socket_timeout=timeout)
    try:
        report.workers, report.dead_workers = await registry_snapshot(r)
    except Exception as e:  # any failure: say so, show the rest
        report.errors["redis"] = f"{type(e).__name__}: {e}"
    else:
        await _tenant_windows(r, report)
    finally:
        await r.aclose()


async def _tenant_windows(r, report: StatusReport) -> None:
    """Every live scheduler's tenant window, combined (else the one scheduler asked answers)."""
    try:
        live = await tenant_window.read_live(r)
    except Exception as e:  # e.g. a Redis user without the scheduler_stats keys
        report.errors["scheduler windows"] = f"{type(e).__name__}: {e}"
        return
    if live.schedulers:
        report.tenant_schedulers, report.fair_share_units = live.schedulers, live.units
        report.tenants = [TenantRow(**asdict(t)) for t in live.tenants]


async def _queues(address: str, report: StatusReport, timeout: float) -> None:
    from llmserve.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

    try:
        async with operator_auth().aio_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            response = await stub.GetQueueStats(scheduler_pb2.GetQueueStatsRequest(), timeout=timeout)
    except grpc.RpcError as e:
        report.errors["scheduler"] = f"{address}: {e.code().name}"
        return
    report.queues = [QueueRow(q.model, q.waiting, q.workers) for q in response.queues]
    report.dispatched = response.dispatched
    if report.tenant_schedulers:  # every replica's window, from Redis: more than this one's
        return
    report.tenants = [TenantRow(t.tenant, t.weight, t.tokens_last_minute, t.share, t.weight_share, t.wait_p50_ms,
                                t.wait_p99_ms, t.refused_deadline) for t in response.tenants]


async def _alerts(address: str, report: StatusReport, timeout: float) -> None:
    try:  # the monitor's API may be absent from an older build
        from llmserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc
    except ImportError:
        report.errors["monitor"] = "monitor API not installed"
        return
    try:
        async with operator_auth().aio_channel(address) as channel:
            stub = monitor_pb2_grpc.MonitorServiceStub(channel)
            response = await stub.ListAlerts(monitor_pb2.ListAlertsRequest(), timeout=timeout)
    except grpc.RpcError as e:
        report.errors["monitor"] = f"{address}: {e.code().name}"
        return
    now_ms = time.time() * 1000
    report.alerts = [
        AlertRow(
            a.name,
            monitor_pb2.Severity.Name(a.severity).removeprefix("SEVERITY_").lower(),
            monitor_pb2.AlertState.Name(a.state).removeprefix("ALERT_STATE_").lower(),
            a.summary,
            max(0.0, (now_ms - (a.fired_unix_ms or a.active_since_unix_ms)) / 1000),
        )
        for a in response.alerts
    ]


async def collect(redis_url: str, scheduler: str, monitor: str, timeout: float = 2.0) -> StatusReport:
    """Ask all three sources at once; never raises for a source that is down."""
    report = StatusReport()
    await asyncio.gather(
        _registry(redis_url, report, timeout),
        _queues(scheduler, report, timeout),
        _alerts(monitor, report, timeout),
    )
    return report


def _age(ms: int) -> str:
    return f"{max(0.0, time.time() - ms / 1000):.1f}s" if ms else "-"


def render(report: StatusReport) -> str:
    """The report as text tables."""
    out = [f"WORKERS ({len(report.workers)} live, {len(report.dead_workers)} silent)"]
    rows = [
        (
            w.worker_id,
            w.address,
            ",".join(w.models),
            w.running,
            w.waiting,
            f"{w.total_kv_blocks - w.free_kv_blocks}/{w.total_kv_blocks}",
            percent(w.total_kv_blocks - w.free_kv_blocks, w.total_kv_blocks),
            _hit_rate([w.model_load(m) for m in w.models]),
            "draining" if w.draining else "serving",
            _age(w.sent_unix_ms),
        )
        for w in report.workers
    ]
    rows += [(d, "-", "-", "-", "-", "-", "-", "-", "silent", "-") for d in report.dead_workers]
    out.append(
        table(
            ["worker", "address", "models", "running", "waiting", "kv blocks", "kv", "prefix hits", "state", "beat"],
            rows,
            right=(3, 4, 5, 6, 7),
        )
    )
    out += ["", "MODELS"]
    out.append(
        table(["model", "workers", "queued", "running", "kv", "prefix hits"], _model_rows(report),
              right=(1, 2, 3, 4, 5))
    )
    if report.queues is not None:
        out.append(f"dispatched by this scheduler since start: {report.dispatched}")
    if report.tenants:
        n = len(report.tenant_schedulers)
        scope = f"{n} live scheduler{'s' if n != 1 else ''} combined" if n else "this scheduler"
        unit = "/".join(report.fair_share_units) or "tokens"
        out += ["", f"TENANTS ({scope}, last minute; fair share by {unit})"]
        out.append(table(
            ["tenant", "weight", "tokens", "share", "weight share", "wait p50", "wait p99", "refused (deadline)"],
            [(t.tenant, f"{t.weight:g}", t.tokens_last_minute, f"{t.share:.0%}", f"{t.weight_share:.0%}",
              f"{t.wait_p50_ms:.0f}ms", f"{t.wait_p99_ms:.0f}ms", t.refused_deadline) for t in report.tenants],
            right=(1, 2, 3, 4, 5, 6, 7),
        ))
    out += ["", "ALERTS"]
    if report.alerts is None:
        out.append("(monitor unreachable)")
    elif not report.alerts:
        out.append("none")
    else:
        out.append(
            table(
                ["alert", "severity", "state", "for", "summary"],
                [(a.name, a.severity, a.state, f"{a.since_s:.0f}s", a.summary) for a in report.alerts],
            )
        )
    if report.errors:
        out += ["", "UNREACHABLE"] + [f"  {k}: {v}" for k, v in sorted(report.errors.items())]
    return "\n".join(out)


def _model_rows(report: StatusReport) -> list[tuple]:
    queued = {q.model: q.waiting for q in report.queues or []}
    models = sorted({m for w in report.workers for m in w.models} | set(queued))
    rows = []
    for model in models:
        # A worker may hold several models, each with its own KV pool: count this model's own.
        loads = [w.model_load(model) for w in report.workers if model in w.models]
        total = sum(x.total_kv_blocks for x in loads)
        used = sum(x.total_kv_blocks - x.free_kv_blocks for x in loads)
        rows.append(
            (
                model,
                len(loads),
                queued.get(model, "?") if report.queues is not None else "?",
                sum(x.running for x in loads),
                percent(used, total),
                _hit_rate(loads),
            )
        )
    return rows


def _hit_rate(loads: list) -> str:
    """Prompt tokens its workers served from the prefix cache, over all they admitted."""
    prompt = sum(x.prompt_tokens for x in loads)
    return percent(sum(x.prefix_hit_tokens for x in loads), prompt) if prompt else "-"


def run_status(args) -> int:
    report = asyncio.run(collect(args.redis_url, args.scheduler, args.monitor, args.timeout))
    print(json.dumps(asdict(report), indent=2) if args.json else render(report))
    # Exit 2 when no source answered at all: scripts can tell "down" from "degraded".
    return 2 if {"redis", "scheduler", "monitor"} <= set(report.errors) else 0
