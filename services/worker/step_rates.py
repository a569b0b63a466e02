"""Measured prefill and decode rates of one engine, for the heartbeat.

Schedulers estimate how long a queued request waits from these (see the scheduler's
admission.py), so they follow what this engine really does on this machine: an exponential
average over recent steps of tokens per second of step time, per phase. A step that mixes
phases counts for the phase with most of its tokens (a prefill-heavy step measures prefill).
What a heartbeat reports as the decode rate is the engine's decode *capacity*: a step at batch b
takes about as long as one at batch 1 on these memory-bound models, so a full batch does
max_running / (seconds per decode step) tokens a second. The rate measured at the batch seen
so far would make a burst that arrives before the batch fills look like hours of work (a fast
machine's first decode steps run one sequence) and refuse requests that would have made it;
capacity errs early, as admission.py wants. It also counts, since the engine started, the prompt tokens admitted and those of them served
from the prefix cache: the heartbeat's prefix-cache hit rate.
"""

from __future__ import annotations

from .engine.types import StepStats

_ALPHA = 0.2  # weight of the newest step


class StepRates:
    def __init__(self) -> None:
        self.prefill_tokens_per_s = 0.0
        self.decode_tokens_per_s = 0.0  # measured, at the batch sizes seen
        self.decode_step_s = 0.0  # seconds per decode-heavy step
        self.mean_completion_tokens = 0.0  # of finished requests: max_tokens is often far above it
        self.prompt_tokens = 0
        self.prefix_hit_tokens = 0

    def finished(self, completion_tokens: int) -> None:
        self.mean_completion_tokens = _ema(self.mean_completion_tokens, float(max(completion_tokens, 1)))

    def record(self, step: StepStats, seconds: float) -> None:
        self.prompt_tokens += step.prompt_tokens
        self.prefix_hit_tokens += step.prefix_hit_tokens
        prefill, decode = step.prefill_tokens + step.recompute_tokens, step.decode_tokens
        if prefill + decode <= 0 or seconds <= 0:
            return
        if prefill >= decode:
            self.prefill_tokens_per_s = _ema(self.prefill_tokens_per_s, (prefill + decode) / seconds)
        else:
            self.decode_tokens_per_s = _ema(self.decode_tokens_per_s, (prefill + decode) / seconds)
            self.decode_step_s = _ema(self.decode_step_s, seconds)

    def decode_capacity(self, max_running: int) -> float:
        """Tokens a second a full batch of `max_running` would decode (the measured rate when
        the batch limit is not known)."""
        if max_running <= 0 or self.decode_step_s <= 0:
            return self.decode_tokens_per_s
        return max(self.decode_tokens_per_s, max_running / self.decode_step_s)


def _ema(old: float, new: float) -> float:
    return new if old <= 0 else (1 - _ALPHA) * old + _ALPHA * new
