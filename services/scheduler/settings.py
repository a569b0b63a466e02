"""Scheduler settings (environment prefix LLMSERVE_SCHEDULER_)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import SettingsConfigDict

from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.settings import ServiceSettings, StrList

from .batching import Window


class BatchWindow(BaseModel):
    """One model's batching window (see max_batch_* of the scheduler)."""

    max_batch_requests: int = Field(0, ge=0)
    max_batch_tokens: int = Field(0, ge=0)
    max_batch_wait_ms: int = Field(0, ge=0)


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSERVE_SCHEDULER_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535)
    scheduler_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Consumer name in the `schedulers` group; unique per replica.",
    )
    models: StrList = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="Models whose request streams to read, besides those live workers announce.",
    )
    read_batch: int = Field(256, ge=1, description="Most entries read from the request streams at once.")
    idle_block_ms: int = Field(50, ge=1, description="How long one read waits for new requests.")
    registry_refresh_ms: int = Field(100, ge=10, description="How often the worker registry is re-read.")
    max_worker_backlog: int = Field(
        64, ge=1, description="Requests a worker may have waiting before more are held here."
    )
    reclaim_idle_ms: int = Field(
        3_000, ge=1000, description="Entries held this long by another (dead) scheduler are taken over. "
        "A live scheduler refreshes what it holds every third of this, so a dead one's work moves within "
        "about 4/3 of it; a peer that steals from a stalled one is harmless (dispatch acks once)."
    )
    redis_restart_grace_ms: int = Field(
        5_000, ge=0, description="After Redis restarts or fails over, missing worker heartbeats are not "
        "taken as deaths for this long (workers re-announce within their heartbeat TTL, default 3 s).",
    )
    max_attempts: int = Field(
        3, ge=1, description="Workers a request may take down before it is dead-lettered."
    )
    tenant_weights: dict[str, float] = Field(
        default_factory=dict, description="Fair-share weight per tenant (default 1): a tenant's share of "
        "dispatched tokens (prompt + output) is its weight over the sum of the weights of the tenants "
        "waiting in the same priority class and model.",
    )
    fair_share_unit: Literal["tokens", "requests"] = Field(
        "tokens", description="What fair share counts: `tokens` (default: prompt + max_tokens at dispatch, "
        "the unproduced output refunded at the end) or `requests` (each request costs 1 over its tenant's "
        "weight, whatever its size). Every replica sharing a queue must use the same unit: they share one clock.",
    )
    tenant_ttft_target_ms: dict[str, int] = Field(
        default_factory=dict, description="Per tenant, a time-to-first-token target: within its priority "
        "class and fair share, a request is ordered by the earlier of its deadline and enqueue + target "
        "(earliest first). A target only orders; only a deadline refuses.",
    )
    fair_mark_stale_ms: int = Field(
        1_000, ge=100, description="A replica's mark that it holds a tenant's work counts this long (it "
        "refreshes it every round): a replica may not dispatch for a tenant ahead of one a live peer holds.",
    )

    max_batch_requests: int = Field(
        0, ge=0, description="Batching window: dispatch a model's held requests together once this many "
        "have come (0: no count bound). Only with max_batch_wait_ms > 0.",
    )
    max_batch_tokens: int = Field(
        0, ge=0, description="Batching window: ... or once their prompt + max_tokens reach this (0: no bound).",
    )
    max_batch_wait_ms: int = Field(
        0, ge=0, description="Batching window: ... or once the oldest waited this long. 0 (default): no window, "
        "every request is dispatched at once. A window's requests go to one worker together.",
    )
    batch_windows: dict[str, BatchWindow] = Field(
        default_factory=dict, description="Per model id, a window replacing the three max_batch_* above "
        '(JSON: {"model": {"max_batch_requests": 8, "max_batch_wait_ms": 50}}).',
    )

    prefix_affinity: bool = Field(
        True, description="Place a request on a worker that recently ran its prompt's prefix (its first "
        "64 tokens) while that worker's load allows; else on the one with the most free KV.",
    )
    affinity_backlog_slack: int = Field(
        4, ge=0, description="Prefix affinity yields once the holder's backlog exceeds the least loaded "
        "candidate's by more than this.",
    )

    def window(self, model: str) -> Window:
        w = self.batch_windows.get(model)
        if w is None:
            return Window(self.max_batch_requests, self.max_batch_tokens, self.max_batch_wait_ms)
        return Window(w.max_batch_requests, w.max_batch_tokens, w.max_batch_wait_ms)

    @field_validator("tenant_ttft_target_ms")
    @classmethod
    def _positive_targets(cls, targets: dict[str, int]) -> dict[str, int]:
        bad = [t for t, ms in targets.items() if ms <= 0]
        if bad:
            raise ValueError(f"TTFT targets must be > 0 ms: {bad}")
        return targets

    @field_validator("tenant_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = [t for t, w in weights.items() if not w > 0]
        if bad:
            raise ValueError(f"tenant weights must be > 0: {bad}")
        return weights

