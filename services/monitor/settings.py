"""Monitor settings (environment prefix LLMSERVE_MONITOR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from llmserve.common.settings import ServiceSettings, StrList

from .autoscale import ScalingTargets
from .rules import default_rules_path


class MonitorSettings(ServiceSettings):
    """Ports, windows, rules and autoscaling targets of the monitor."""

    model_config = SettingsConfigDict(env_prefix="LLMSERVE_MONITOR_", extra="ignore")

    port: int = Field(50054, ge=0, le=65535, description="gRPC: MonitorService and the OTLP collectors.")
    http_host: str = Field("127.0.0.1", description="Address of the HTTP server (/metrics, dashboard).")
    http_port: int = Field(9464, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    rules_path: str = Field(
        default_factory=lambda: str(default_rules_path()), description="YAML alert rules and channels."
    )
    window_s: float = Field(60.0, gt=0, description="Default window of rates and percentiles.")
    stale_after_s: float = Field(
        30.0, gt=0, description="A gauge not updated for this long no longer counts (its exporter died)."
    )
    retention_s: float = Field(900.0, gt=0, description="How long samples are kept (longest usable window).")
    max_series: int = Field(20_000, ge=100, description="Most series held; beyond it new ones are dropped.")
    evaluation_interval_s: float = Field(
        5.0, gt=0, description="How often rules, the summary history and the autoscaling signal update."
    )
    history_points: int = Field(360, ge=10, description="Summary points kept for the dashboard charts.")
    registry_poll_s: float = Field(
        2.0,
        ge=0,
        description="How often the worker registry in Redis is read; 0: never, and traffic "
        "splits are not watched either (no automatic rollback).",
    )
    models: StrList = Field(
        default_factory=list, description="Models expected to be served (worker-down alerts cover them); "
        "`a,b` or a JSON list."
    )
    max_traces: int = Field(2000, ge=1, description="Traces held for GetTrace (least recent evicted).")
    resolved_retention_s: float = Field(3600.0, ge=0, description="How long resolved alerts stay listed.")
    target_queue_per_worker: float = Field(
        8.0, gt=0, description="Autoscaling: waiting requests a worker may carry."
    )
    target_kv_utilization: float = Field(
        0.8, gt=0, le=1, description="Autoscaling: KV use a worker may run at."
    )
    target_ttft_p99_s: float = Field(2.0, gt=0, description="Autoscaling: TTFT p99 target.")
    min_workers: int = Field(1, ge=0, description="Autoscaling: lower bound of the recommendation.")
    max_workers: int = Field(64, ge=1, description="Autoscaling: upper bound of the recommendation.")

    @property
    def scaling_targets(self) -> ScalingTargets:
        return ScalingTargets(
            self.target_queue_per_worker,
            self.target_kv_utilization,
            self.target_ttft_p99_s,
            self.min_workers,
            self.max_workers,
        )
