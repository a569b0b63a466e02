"""Per-tenant dispatch windows of every live scheduler replica, through Redis, for `llmserve status`.

Each scheduler publishes what it dispatched per tenant over the last minute (tokens, queue
waits, refusals for deadlines) every second, under its own key with a TTL, and registers in a
set: the worker registry's pattern (heartbeat key + set). A reader combines the windows of the
replicas whose key is still alive, so the shares and wait quantiles are those of the whole
queue, not of the one replica asked. A dead replica's window goes with its TTL.

Waits are published as samples (at most MAX_WAITS per tenant, evenly spaced over the sorted
waits when there are more, which keeps every quantile within 1/MAX_WAITS of its rank), so the
combined p50/p99 are quantiles of the union, not an average of per-replica quantiles.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import redis.asyncio as aioredis

from . import redis_keys as keys
from .stats import quantile

MAX_WAITS = 2000
PUBLISH_EVERY_S = 1.0
TTL_MS = 5000  # a replica silent this long no longer counts


@dataclass
class TenantWindow:
    """One tenant's last minute on one scheduler."""

    tenant: str
    weight: float
    tokens: int  # prompt + max_tokens dispatched
    waits_ms: list[float] = field(default_factory=list)  # queue waits (enqueue to dispatch), sampled
    refused_deadline: int = 0  # since the replica started


@dataclass(frozen=True)
class TenantShare:
    """One tenant's numbers over the windows combined."""

    tenant: str
    weight: float
    tokens_last_minute: int
    share: float  # of all tokens dispatched
    weight_share: float  # its weight over the weights of the tenants dispatched for
    wait_p50_ms: float
    wait_p99_ms: float
    refused_deadline: int


def sample_waits(waits_ms: list[float]) -> list[float]:
    """At most MAX_WAITS of them, evenly spaced over the sorted list (quantiles kept)."""
    ordered = sorted(waits_ms)
    if len(ordered) <= MAX_WAITS:
        return ordered
    step = len(ordered) / MAX_WAITS
    return [ordered[int(i * step)] for i in range(MAX_WAITS)]


def combine(windows: list[list[TenantWindow]]) -> list[TenantShare]:
    """The tenants of all windows (one list per scheduler) as one queue, sorted by tenant."""
    merged: dict[str, TenantWindow] = {}
    for window in windows:
        for t in window:
            m = merged.setdefault(t.tenant, TenantWindow(t.tenant, t.weight, 0))
            m.weight = t.weight  # every replica has the same tenant_weights
            m.tokens += t.tokens
            m.waits_ms += t.waits_ms
            m.refused_deadline += t.refused_deadline
    total = sum(m.tokens for m in merged.values())
    weight_total = sum(m.weight for m in merged.values() if m.tokens)
    return [
        TenantShare(m.tenant, m.weight, m.tokens, m.tokens / total if total else 0.0,
                    m.weight / weight_total if m.tokens else 0.0, _q(m.waits_ms, 0.5), _q(m.waits_ms, 0.99),
                    m.refused_deadline)
        for m in sorted(merged.values(), key=lambda m: m.tenant)
    ]


def _q(waits: list[float], q: float) -> float:
    return quantile(waits, q, method="floor", default=0.0) or 0.0


async def publish(r: aioredis.Redis, scheduler_id: str, unit: str, window: list[TenantWindow]) -> None:
    """Replace this replica's window (expires after TTL_MS); drop registrations whose key expired."""
    body = {"scheduler_id": scheduler_id, "unit": unit, "sent_unix_ms": int(time.time() * 1000),
            "tenants": [asdict(t) | {"waits_ms": sample_waits(t.waits_ms)} for t in window]}
    pipe = r.pipeline(transaction=True)
    pipe.sadd(keys.SCHEDULERS_SET, scheduler_id)
    pipe.set(keys.scheduler_stats_key(scheduler_id), json.dumps(body), px=TTL_MS)
    pipe.smembers(keys.SCHEDULERS_SET)
    members = sorted(_s(m) for m in (await pipe.execute())[2])
    alive = await r.mget([keys.scheduler_stats_key(m) for m in members])
    gone = [m for m, v in zip(members, alive, strict=True) if v is None]
    if gone:
        await r.srem(keys.SCHEDULERS_SET, *gone)


async def withdraw(r: aioredis.Redis, scheduler_id: str) -> None:
    """On clean shutdown: its window stops counting at once."""
    pipe = r.pipeline(transaction=True)
    pipe.srem(keys.SCHEDULERS_SET, scheduler_id)
    pipe.delete(keys.scheduler_stats_key(scheduler_id))
    await pipe.execute()


@dataclass(frozen=True)
class LiveWindows:
    schedulers: list[str]  # ids of the replicas whose windows are in
    units: list[str]  # their fair_share_unit (one, unless replicas disagree)
    tenants: list[TenantShare]


async def read_live(r: aioredis.Redis) -> LiveWindows:
    """The combined windows of every scheduler whose key has not expired."""
    members = sorted(_s(m) for m in await r.smembers(keys.SCHEDULERS_SET))
    raws = await r.mget([keys.scheduler_stats_key(m) for m in members]) if members else []
    bodies = [json.loads(raw) for raw in raws if raw is not None]
    windows = [[TenantWindow(**t) for t in b["tenants"]] for b in bodies]
    return LiveWindows(sorted(b["scheduler_id"] for b in bodies), sorted({b["unit"] for b in bodies}),
                       combine(windows))


def _s(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
