"""Heartbeat rates: the decode rate is the engine's capacity, not the batch it happened to run."""

from __future__ import annotations

from llmserve.worker.engine.types import StepStats
from llmserve.worker.step_rates import StepRates


def _decode(tokens: int) -> StepStats:
    return StepStats(scheduled_seqs=tokens, decode_tokens=tokens)


def test_decode_capacity_scales_a_one_sequence_step_to_the_full_batch():
    rates = StepRates()
    for _ in range(5):
        rates.record(_decode(1), 0.01)  # one sequence, 10 ms a step: 100 tok/s measured
    assert rates.decode_tokens_per_s == 100.0
    assert rates.decode_capacity(64) == 6400.0  # what 64 sequences would do in such steps
    assert rates.decode_capacity(0) == 100.0  # batch limit unknown: what was measured


def test_a_full_batch_reports_what_it_measured():
    rates = StepRates()
    rates.record(_decode(8), 0.02)
    assert rates.decode_capacity(8) == rates.decode_tokens_per_s == 400.0
