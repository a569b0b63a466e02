"""Deadline admission: refuse at once a request whose deadline its queue position cannot meet.

The estimate: a held request starts once the work ahead of it here is done (requests of a
higher priority class, and of its own class with an earlier deadline, or the same and older:
the order the queue serves them in, fair share aside), at the rates the model's live workers
measured and report in their heartbeats (prompt tokens per second of prefill, generated
tokens per second of decode, summed over the workers):

    start ≈ now + Σ ahead prompt / prefill rate + Σ ahead output / decode rate
                + own prompt / prefill rate

where a request's output is its max_tokens, or less: the mean completion the workers report
for the model (max_tokens is often far above what is produced, and counting it in full would
refuse requests that would have made it).

Work already on the workers is not counted, so the estimate errs early: a refusal means that
even the work held here alone makes the deadline unreachable. With no decode rate measured yet
(no worker has run a step) nothing is refused. A refused request ends DEADLINE_EXCEEDED, as one
that expired while waiting: the client learns at once rather than at its deadline, and a
retry with the same deadline would be refused again, so no retry hint is given.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmserve.common.workers import WorkerLoad

from .waiting import Pending, due_ms


def measured_rates(workers: Iterable[WorkerLoad], model: str) -> tuple[float, float]:
    """(prefill, decode) tokens per second of `model` over its serving workers."""
    prefill = decode = 0.0
    for w in workers:
        if model in w.models and not w.draining:
            load = w.model_load(model)
            prefill += load.prefill_tokens_per_s
            decode += load.decode_tokens_per_s
    return prefill, decode


def mean_completion(workers: Iterable[WorkerLoad], model: str) -> float:
    """The largest mean completion any serving worker reports (0: none measured)."""
    return max((w.model_load(model).mean_completion_tokens for w in workers
                if model in w.models and not w.draining), default=0.0)


def _queue_order(p: Pending) -> tuple[int, float, int]:
    return (-p.priority, due_ms(p), p.seq)


def estimated_starts(held: list[Pending], prefill_tps: float, decode_tps: float, now_ms: float,
                     mean_out: float = 0.0) -> dict[str, float]:
    """request id -> estimated start (unix ms) of each held request of one model."""
    starts = {}
    ahead_s = 0.0
    for p in sorted(held, key=_queue_order):
        own_prefill_s = p.prompt_tokens / prefill_tps if prefill_tps > 0 else 0.0
        starts[p.request_id] = now_ms + (ahead_s + own_prefill_s) * 1000
        out = min(p.max_out, mean_out) if mean_out > 0 else p.max_out
        ahead_s += own_prefill_s + (out / decode_tps if decode_tps > 0 else 0.0)
    return starts


def unmeetable(held: list[Pending], workers: Iterable[WorkerLoad], now_ms: float) -> list[Pending]:
    """Held requests whose deadline comes before their estimated start."""
    by_model: dict[str, list[Pending]] = {}
    for p in held:
        by_model.setdefault(p.model, []).append(p)
    workers = list(workers)
    refused = []
    for model, requests in by_model.items():
        if not any(p.deadline_unix_ms for p in requests):
            continue
        prefill_tps, decode_tps = measured_rates(workers, model)
        if decode_tps <= 0:
            continue
        starts = estimated_starts(requests, prefill_tps, decode_tps, now_ms, mean_completion(workers, model))
        refused += [p for p in requests if p.deadline_unix_ms and starts[p.request_id] > p.deadline_unix_ms]
    return refused
