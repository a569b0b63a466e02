"""Sampler: greedy, filters, repetition penalty, per-request seeding (no model needed)."""

from __future__ import annotations

import torch

from llmserve.worker.engine.sampler import Sampler, SampleRow, step_seed
from llmserve.worker.engine.types import SamplingParams


def _row(seed=0, index=0, seen=(), **kw):
    return SampleRow(SamplingParams(**kw), seed, index, list(seen))


def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    assert Sampler()(logits, [_row(temperature=0), _row(temperature=0)]) == [1, 0]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 100)
    expected = logits.argmax(-1).tolist()
    rows = [_row(seed=i, temperature=1.0, top_k=1) for i in range(2)]
    rows += [_row(seed=i, temperature=1.0, top_p=1e-6) for i in range(2)]
    assert Sampler()(logits, rows) == expected


def test_top_k_restricts_support():
    logits = torch.arange(50, dtype=torch.float32).unsqueeze(0)
    draws = {Sampler()(logits, [_row(seed=s, temperature=5.0, top_k=3)])[0] for s in range(200)}
    assert draws <= {47, 48, 49} and len(draws) == 3


def test_same_seed_and_index_same_token_whatever_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(5, 1000)
    target = _row(seed=42, index=3, temperature=1.0)
    alone = Sampler()(logits[2:3], [target])[0]
    batch = Sampler()(logits, [_row(seed=i, temperature=1.0) for i in range(2)] + [target] + [_row()] * 2)
    assert batch[2] == alone
    others = {Sampler()(logits[2:3], [_row(seed=42, index=i, temperature=1.0)])[0] for i in range(20)}
    assert len(others) > 1  # the index changes the draw


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    draws = [Sampler()(logits, [_row(seed=s, temperature=1.0)])[0] for s in range(2000)]
    freq = [draws.count(i) / len(draws) for i in range(3)]
    assert abs(freq[0] - 0.7) < 0.04 and abs(freq[1] - 0.2) < 0.04


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    assert Sampler()(logits, [_row(temperature=0, repetition_penalty=1.5, seen=[0])]) == [1]
    assert Sampler()(logits, [_row(temperature=0)]) == [0]


def test_step_seed_mixes():
    assert len({step_seed(1, i) for i in range(1000)} | {step_seed(2, i) for i in range(1000)}) == 2000
