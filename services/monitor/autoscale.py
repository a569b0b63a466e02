"""The autoscaling signal: how many workers the current load wants.

Like the Kubernetes HPA's rule, each signal proposes ceil(current * observed / target) and the
largest proposal wins (queue depth proposes ceil(depth / target per worker) directly, since an
empty fleet has no per-worker ratio). Ratios within `tolerance` of 1 propose no change, so
the signal does not flap around a target. Exported as `llmserve_recommended_workers` for an
HPA on an external metric; the HPA's own stabilization window smooths scale-down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingTargets:
    """What one worker should carry at most."""

    queue_per_worker: float = 8.0
    kv_utilization: float = 0.8
    ttft_p99_s: float = 2.0
    min_workers: int = 1
    max_workers: int = 64
    tolerance: float = 0.1


@dataclass(frozen=True)
class Load:
    """Observed load; None where nothing reports."""

    workers: int | None
    queue_depth: float | None
    kv_utilization: float | None
    ttft_p99_s: float | None


def _proportional(current: int, observed: float | None, target: float, tolerance: float) -> int:
    if observed is None or target <= 0 or current <= 0:
        return 0
    ratio = observed / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    return math.ceil(current * ratio)


def recommend(load: Load, t: ScalingTargets) -> int:
    """Recommended worker count, within [min_workers, max_workers]."""
    current = load.workers if load.workers and load.workers > 0 else 0
    proposals = [t.min_workers]
    if load.queue_depth is not None and t.queue_per_worker > 0:
        proposals.append(math.ceil(load.queue_depth / t.queue_per_worker))
    proposals.append(_proportional(current, load.kv_utilization, t.kv_utilization, t.tolerance))
    proposals.append(_proportional(current, load.ttft_p99_s, t.ttft_p99_s, t.tolerance))
    return max(t.min_workers, min(t.max_workers, max(proposals)))
