"""The throughput optimizer: the largest concurrency whose latency meets a target.

Throughput grows with concurrency until the server saturates, while TTFT and inter-token
latency grow with it (batching trades per-request latency for throughput), so the best
operating point is the largest concurrency that still meets the latency target (the
approach of serving-system papers' "goodput" and of vLLM's auto-tune scripts). The search
doubles the concurrency until the target breaks, then bisects between the last level that
met it and the first that did not: about 2*log2(max) measurements.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatencyTarget:
    """Upper bounds in milliseconds; None: not constrained. Errors always break the target."""

    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    e2e_p99_ms: float | None = None

    def met_by(self, summary: dict) -> bool:
        if summary.get("errors"):
            return False
        for key, bound in (
            ("ttft_p99_ms", self.ttft_p99_ms),
            ("itl_p99_ms", self.itl_p99_ms),
            ("e2e_p99_ms", self.e2e_p99_ms),
        ):
            value = summary.get(key)
            if bound is not None and (value is None or value > bound):
                return False
        return True


@dataclass
class Optimum:
    """The search's answer and every measurement it made."""

    concurrency: int  # 0: not even one stream meets the target
    best: dict | None
    measured: dict[int, dict] = field(default_factory=dict)

    def recommendation(self, workers: int = 1) -> str:
        if not self.best:
            return "no concurrency meets the target: relax it, or add faster workers"
        per_worker = max(1, -(-self.concurrency // max(1, workers)))
        return (
            f"run at most {self.concurrency} concurrent streams ({self.best['output_tok_s']} tok/s, "
            f"TTFT p99 {self.best['ttft_p99_ms']} ms, ITL p99 {self.best['itl_p99_ms']} ms); "
            f"set LLMSERVE_WORKER_MAX_NUM_SEQS={per_worker} on each of {workers} worker(s) so the "
            "engine never batches past it"
        )


async def find_max_concurrency(
    measure: Callable[[int], Awaitable[dict]], target: LatencyTarget, max_concurrency: int = 256
) -> Optimum:
    """Double, then bisect; `measure(c)` runs a closed loop at concurrency c."""
    measured: dict[int, dict] = {}

    async def ok(c: int) -> bool:
        if c not in measured:
            measured[c] = await measure(c)
        return target.met_by(measured[c])

    good, bad, c = 0, None, 1
    while c <= max_concurrency:
        if not await ok(c):
            bad = c
            break
        good, c = c, c * 2
    if bad is None:
        if good < max_concurrency and await ok(max_concurrency):
            good = max_concurrency
        elif good < max_concurrency:
            bad = max_concurrency
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if await ok(mid):
            good = mid
        else:
            bad = mid
    return Optimum(good, measured.get(good), measured)
