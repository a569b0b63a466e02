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


# Per-sequence controls, batched ---------------------------------------------------------

def _greedy(logits, **kw):
    return Sampler()(logits, [_row(temperature=0, **kw)])[0]


def test_presence_and_frequency_penalties_count_completion_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    assert _greedy(logits, presence_penalty=0.5) == 0  # nothing generated yet: no effect
    row = SampleRow(SamplingParams(temperature=0, presence_penalty=0.5), 0, 1, [], [0])
    assert Sampler()(logits, [row]) == [1]
    once = SampleRow(SamplingParams(temperature=0, frequency_penalty=0.05), 0, 1, [], [0])
    thrice = SampleRow(SamplingParams(temperature=0, frequency_penalty=0.05), 0, 3, [], [0, 0, 0])
    assert Sampler()(torch.cat([logits, logits]), [once, thrice]) == [0, 1]
    negative = SampleRow(SamplingParams(temperature=0, presence_penalty=-1.0), 0, 1, [], [2])
    assert Sampler()(logits, [negative]) == [0]  # -1 + 1 = 0 still below 2.0
    assert Sampler()(torch.tensor([[2.0, 1.9, 1.5]]), [negative]) == [2]


def test_logit_bias_and_suppressed_ids():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    assert _greedy(logits, logit_bias=((2, 100.0),)) == 2
    assert _greedy(logits, logit_bias=((0, -100.0),)) == 1
    assert _greedy(logits, logit_bias=((99, 5.0),)) == 0  # an id past the vocab is ignored
    row = SampleRow(SamplingParams(temperature=1.0), 7, 0, [], [], suppress_ids=(0, 1))
    assert {Sampler()(logits, [SampleRow(row.params, s, 0, [], [], (0, 1))])[0] for s in range(50)} == {2}


def test_min_p_drops_the_unlikely_tail():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    draws = {Sampler()(logits, [_row(seed=s, temperature=1.0, min_p=0.5)])[0] for s in range(300)}
    assert draws == {0, 1}


def test_allowed_mask_limits_greedy_and_sampled_rows():
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.0]] * 2)
    allowed = torch.tensor([[False, False, True, True]] * 2)
    rows = [_row(temperature=0), _row(seed=3, temperature=1.0)]
    assert Sampler()(logits, rows, allowed)[0] == 3
    draws = {Sampler()(logits, [_row(seed=s, temperature=1.0)] * 2, allowed)[1] for s in range(100)}
    assert draws == {2, 3}


def test_mixed_controls_batch_gives_each_row_its_solo_draw():
    torch.manual_seed(1)
    logits = torch.randn(6, 500)
    rows = [
        _row(seed=1, index=2, temperature=0.7, top_k=40),
        _row(seed=2, index=0, temperature=1.3, top_p=0.8),
        _row(seed=3, index=5, temperature=1.0, min_p=0.05, repetition_penalty=1.3, seen=[1, 2, 3]),
        _row(temperature=0, logit_bias=((4, 3.0),)),
        SampleRow(SamplingParams(temperature=0.9, top_k=5, top_p=0.9, frequency_penalty=0.4), 9, 3, [], [7, 7, 8]),
        _row(seed=4, index=1, temperature=1.0),
    ]
    batch = Sampler()(logits, rows)
    assert batch == [Sampler()(logits[i : i + 1], [r])[0] for i, r in enumerate(rows)]


def test_top_p_matches_a_sort_based_reference():
    torch.manual_seed(2)
    logits = torch.randn(1, 40) * 3
    probs = torch.softmax(logits[0], -1)
    p_sorted, order = probs.sort(descending=True)
    keep = order[(p_sorted.cumsum(0) - p_sorted) < 0.6].tolist()
    draws = {Sampler()(logits, [_row(seed=s, temperature=1.0, top_p=0.6)])[0] for s in range(400)}
    assert draws <= set(keep) and len(draws) >= min(len(keep), 2)


def test_logprobs_are_the_raw_model_log_softmax():
    torch.manual_seed(3)
    logits = torch.randn(3, 64)
    rows = [
        _row(temperature=0, logprobs=5, repetition_penalty=2.0, seen=[int(logits[0].argmax())]),
        _row(temperature=0),
        _row(seed=1, temperature=1.0, logprobs=0),
    ]
    results = Sampler().sample(logits, rows)
    ref = torch.log_softmax(logits, -1)
    lp0 = results[0].logprob
    assert lp0.token_id == results[0].token_id
    assert abs(lp0.logprob - ref[0, lp0.token_id].item()) < 1e-6  # before the penalty
    top_vals, top_ids = ref[0].topk(5)
    assert [t for t, _ in lp0.top] == top_ids.tolist()
    assert all(abs(v - w) < 1e-6 for (_, v), w in zip(lp0.top, top_vals.tolist(), strict=True))
    assert results[1].logprob is None
    assert results[2].logprob.top == () and abs(results[2].logprob.logprob - ref[2, results[2].token_id].item()) < 1e-6


def test_noise_is_a_function_of_the_seed_only():
    from llmserve.worker.engine.sampler import exponential_noise

    seeds = torch.tensor([5, -7, 123456789], dtype=torch.int64)
    batch = exponential_noise(seeds, 1000)
    assert torch.equal(batch[1], exponential_noise(seeds[1:2], 1000)[0])
    assert abs(batch.mean().item() - 1.0) < 0.05 and bool((batch > 0).all())


def test_windowed_top_k_top_p_cut_equals_the_full_sort_cut():
    from llmserve.worker.engine import sampler

    torch.manual_seed(4)
    flat = torch.randn(3, 5000) * 0.01  # nearly uniform: top-p 0.9 reaches far past the window
    peaked = torch.randn(3, 5000) * 4
    for x in (flat, peaked):
        top_k, top_p = [0, 30, 0], [0.9, 0.8, 1.0]
        windowed = sampler._top_k_top_p(x, top_k, top_p)
        full = sampler._cut(x, top_k, top_p, x.shape[1])
        assert torch.equal(windowed, x.masked_fill(x < full, float("-inf")))
        assert torch.isfinite(windowed[2]).all()  # no filter: untouched
        assert int(torch.isfinite(windowed[1]).sum()) <= 30


def _dense_penalties(logits, rows):
    """The penalties as OpenAI and vLLM define them, computed densely over [rows, vocab]."""
    x = logits.clone()
    for i, r in enumerate(rows):
        p = r.params
        seen = torch.zeros(x.shape[1], dtype=torch.bool)
        seen[list(r.seen_token_ids)] = True
        if p.repetition_penalty != 1.0:
            x[i] = torch.where(seen, torch.where(x[i] > 0, x[i] / p.repetition_penalty,
                                                 x[i] * p.repetition_penalty), x[i])
        counts = torch.zeros(x.shape[1])
        counts.index_add_(0, torch.tensor(r.output_token_ids, dtype=torch.long), torch.ones(len(r.output_token_ids)))
        pres = torch.tensor([p.presence_penalty])
        freq = torch.tensor([p.frequency_penalty])
        x[i] = x[i] - (freq * counts + pres * (counts > 0))
    return x


def test_sparse_penalties_equal_the_dense_formula_bit_for_bit():
    import random

    from llmserve.worker.engine.sampler import _processed

    rnd = random.Random(1)
    torch.manual_seed(1)
    for _ in range(100):
        n, vocab = rnd.randint(1, 9), rnd.choice([7, 50, 1000])
        logits = torch.randn(n, vocab) * 4
        logits[0, 0] = float("-inf")
        rows = []
        for _ in range(n):
            out = [rnd.randrange(vocab) for _ in range(rnd.randint(0, 30))]
            params = SamplingParams(temperature=0, repetition_penalty=rnd.choice([1.0, 1.3, 0.7]),
                                    presence_penalty=rnd.choice([0.0, rnd.uniform(-2, 2)]),
                                    frequency_penalty=rnd.choice([0.0, rnd.uniform(-2, 2)]))
            seen = [rnd.randrange(vocab) for _ in range(rnd.randint(0, 10))] + out
            rows.append(SampleRow(params, 0, len(out), seen, out))
        assert torch.equal(_processed(logits, rows), _dense_penalties(logits, rows))
