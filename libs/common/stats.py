"""Percentiles of raw samples, for benchmarks, reports and tests.

Three ways of picking the q-quantile of n sorted samples are in use; each call site keeps the
one its published numbers were measured with:

- ``"linear"``: interpolate between the two samples around position q·(n-1)
  (numpy's default, ``method="linear"``).
- ``"nearest"``: the sample at position round(q·(n-1)), ties to even (numpy's ``"nearest"``).
- ``"floor"``: the sample at 0-based index ⌊q·n⌋, clamped to the last one.

Histogram estimates (Prometheus' histogram_quantile) live in ``llmserve.monitor.series``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Method = Literal["linear", "nearest", "floor"]


def quantile(values: Iterable[float], q: float, *, method: Method = "linear",
             default: float | None = None) -> float | None:
    """The q-quantile (q in [0, 1]) of `values` by `method`; `default` when there are none."""
    ordered = sorted(values)
    if not ordered:
        return default
    last = len(ordered) - 1
    if method == "floor":
        return ordered[min(last, int(q * len(ordered)))]
    if method == "nearest":
        return ordered[min(last, round(q * last))]
    if method != "linear":
        raise ValueError(f"unknown quantile method {method!r}")
    pos = last * q
    lo = int(pos)
    hi = min(lo + 1, last)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
