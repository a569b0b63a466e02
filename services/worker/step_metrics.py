"""Capacity metrics of one engine step, taken from what the engine says it computed.

An engine that reports its steps (`last_step`, a `StepStats`, as `LLMEngine` does) is recorded
exactly: the scheduled batch, tokens per phase, preemptions, prefix-cache hits. Any other
engine (a scripted test engine) is recorded from its outputs, the best a caller can see.
"""

from __future__ import annotations

from llmserve.common.metrics import WorkerMetrics

from .engine.interface import Engine
from .engine.types import StepStats, TokenOutput


def step_of(engine: Engine, outputs: list[TokenOutput]) -> StepStats:
    """What the step computed: the engine's own account, else what its outputs show."""
    step = getattr(engine, "last_step", None)
    if isinstance(step, StepStats):
        return step
    return StepStats(
        scheduled_seqs=sum(1 for o in outputs if o.token_ids),
        decode_tokens=sum(len(o.token_ids) for o in outputs),
    )


def record_step(
    metrics: WorkerMetrics, model: str, engine: Engine, seconds: float, outputs: list[TokenOutput]
) -> None:
    step = step_of(engine, outputs)
    metrics.step(
        model,
        step.scheduled_seqs,
        step.prefill_tokens,
        step.decode_tokens,
        seconds,
        recompute_tokens=step.recompute_tokens,
    )
    if step.preempted:
        metrics.preempted(model, step.preempted)
    metrics.prefix_hit(model, step.prefix_hit_tokens, step.prompt_tokens)
    stats = engine.stats()
    metrics.set_kv_blocks(model, stats.total_kv_blocks - stats.free_kv_blocks, stats.free_kv_blocks)
    counts = getattr(engine, "sequence_counts", None)  # an engine without it: all NORMAL (2)
    by_priority = counts() if counts else {("running", 2): stats.running, ("waiting", 2): stats.waiting}
    metrics.set_sequences(model, by_priority)
    timings = getattr(engine, "last_step_timings", None)
    if timings:
        metrics.step_phases(model, timings)
