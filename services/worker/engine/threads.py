"""Pick the CPU thread count that decodes fastest on the machine the engine starts on.

Why measure instead of using every core: at batch 1 a step is hundreds of small matmuls, and
each one waits at an OpenMP barrier for its slowest thread. On a machine shared with other
processes a descheduled thread stalls every barrier (measured on a 2-core VM under load: 2
threads made fp32 decode ~20x slower than 1; idle, 2 threads were ~1.3x faster). So once the
model is loaded, each candidate count runs the projections of one decode token through every
layer and the lm_head a few times; the fastest median wins. It is a start-up snapshot: the
choice does not follow the load afterwards (set `num_threads` to pin it).

That count is for small steps. Big work pays for its barriers, so `StepThreads` gives every
usable core to the vocabulary projection of every step (28 MB of int8 weights: 4.2 -> 2.8 ms
at one row) and to every op of a step with many tokens (16 decodes, a prefill chunk).
Measured through the whole stack on 2 cores, one run: 16 streams 114 -> 138 tok/s, 1 stream
38.7 -> 40.5; all of a small step on 2 threads was slower there (1 stream 29.9 tok/s),
because the gateway, the scheduler and the worker's own threads need the second core.
So the calibrated small-step count leaves one core free (on 2 cores: 1 thread); the start-up
measurement alone sometimes chose 2 on an idle box, and 1 stream fell to ~30 tok/s.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_pass(model) -> None:
    """The matmuls of one decode token (the part of a batch-1 step that threads split)."""
    x = torch.zeros(1, model.hidden_size, dtype=model.dtype)
    inter = model.layers[0].down
    for layer in model.layers:
        model._mm(x, layer.qkv, layer.qkv_bias)
        model._mm(x, layer.o_proj)
        gate_up = model._mm(x, layer.gate_up)
        model._mm(gate_up[:, : gate_up.shape[1] // 2].contiguous(), inter)
    if isinstance(model.lm_head, torch.Tensor):
        torch.nn.functional.linear(x, model.lm_head)
    else:
        model._mm(x, model.lm_head)


def small_step_candidates() -> list[int]:
    """Thread counts tried for small steps: 1 to one less than the usable cores (at least 1,
    at most 8), so a core stays free for the worker's own threads and co-located services."""
    return list(range(1, min(max(1, usable_cores() - 1), 8) + 1))


def measure(model, candidates: list[int] | None = None, repeats: int = 5) -> dict[int, float]:
    """Median seconds of `decode_pass` at each thread count (default 1..usable cores, at most 8)."""
    candidates = candidates or list(range(1, min(usable_cores(), 8) + 1))
    timings = {}
    with torch.inference_mode():
        for n in candidates:
            torch.set_num_threads(n)
            decode_pass(model)  # warm the kernels and thread pool
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                decode_pass(model)
                runs.append(time.perf_counter() - start)
            timings[n] = statistics.median(runs)
    return timings


def calibrate(model, candidates: list[int] | None = None, repeats: int = 5) -> int:
    """Set torch's intra-op threads to the fastest count for `decode_pass`; return it."""
    timings = measure(model, candidates, repeats)
    best = min(timings, key=timings.__getitem__)
    torch.set_num_threads(best)
    log.info("threads: %s ms per decode pass; using %d", {n: round(t * 1e3, 2) for n, t in timings.items()}, best)
    return best


@dataclass
class StepThreads:
    """OpenMP threads by the size of the work: `small` for the hundreds of tiny ops of a step
    with few tokens (each op is an OpenMP barrier); `large` for a step from
    `large_from_tokens` tokens, and for every step's vocabulary projection (and its sampling).

    In the packed modes the thread count never changes a result (the kernels split rows and
    output columns across threads, not a reduction), so exact resume holds across the switch
    (`test_threads.py`)."""

    small: int
    large: int
    large_from_tokens: int = 8

    def for_tokens(self, num_tokens: int) -> int:
        return self.large if num_tokens >= self.large_from_tokens else self.small

    @staticmethod
    def use(n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
