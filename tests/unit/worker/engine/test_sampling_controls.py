"""Per-sequence sampling controls and log probabilities through the engine, on the real model."""

from __future__ import annotations

import torch

from llmserve.worker.engine.types import EngineRequest, FinishReason, SamplingParams
from tests.unit.worker.engine.engine_helpers import greedy, run_engine, tokens_of


def _one(engine, ids, params, rid="x"):
    return run_engine(engine, [EngineRequest(rid, ids, params)])[rid]


def test_logprobs_equal_a_transformers_forward_pass(make_engine, hf_model, prompt_ids):
    engine = make_engine()
    ids = prompt_ids[0]
    outs = _one(engine, ids, greedy(max_tokens=8, logprobs=5))
    tokens = tokens_of(outs)
    lps = [lp for o in outs for lp in (o.logprobs or [])]
    assert len(lps) == len(tokens) == 8
    with torch.inference_mode():
        logits = hf_model(torch.tensor([ids + tokens])).logits[0].float()
    ref = torch.log_softmax(logits[len(ids) - 1 : -1], dim=-1)  # the distribution each token was drawn from
    for i, (token, lp) in enumerate(zip(tokens, lps, strict=True)):
        assert lp.token_id == token
        assert abs(lp.logprob - ref[i, token].item()) < 1e-3, i
        top_vals, top_ids = ref[i].topk(5)
        assert [t for t, _ in lp.top] == top_ids.tolist(), i
        assert max(abs(v - w) for (_, v), w in zip(lp.top, top_vals.tolist(), strict=True)) < 1e-3


def test_logprobs_off_by_default(make_engine, prompt_ids):
    outs = _one(make_engine(), prompt_ids[1], greedy(max_tokens=3))
    assert all(o.logprobs is None for o in outs)


def test_stop_token_ids_end_the_completion(make_engine, prompt_ids):
    engine = make_engine()
    ref = tokens_of(_one(engine, prompt_ids[3], greedy(max_tokens=12)))
    stop = ref[4]
    first = ref.index(stop)  # the first time that id comes up
    outs = _one(engine, prompt_ids[3], greedy(max_tokens=12, stop_token_ids=(stop,)))
    assert tokens_of(outs) == ref[: first + 1]
    assert outs[-1].finish_reason is FinishReason.STOP


def test_min_tokens_holds_stop_ids_and_eos_back(make_engine, prompt_ids):
    engine = make_engine()
    ref = tokens_of(_one(engine, prompt_ids[3], greedy(max_tokens=8)))
    stop = ref[2]
    first = ref.index(stop)
    eos = tuple(engine.eos_token_ids)
    held = tokens_of(_one(engine, prompt_ids[3], greedy(max_tokens=8, min_tokens=6, stop_token_ids=(stop,))))
    assert held[:first] == ref[:first] and len(held) >= 6
    assert all(t != stop and t not in eos for t in held[:6])


def test_logit_bias_and_penalties_match_a_reference_loop(make_engine, hf_model, prompt_ids):
    """Greedy with presence/frequency penalties and a bias equals the same rules applied by hand
    to transformers' logits: the penalties count completion tokens only."""
    engine = make_engine()
    ids = prompt_ids[5]
    first = tokens_of(_one(engine, ids, greedy(max_tokens=1)))[0]
    params = greedy(max_tokens=8, presence_penalty=1.5, frequency_penalty=1.0, logit_bias=((first, -100.0),))
    got = tokens_of(_one(engine, ids, params))
    want: list[int] = []
    with torch.inference_mode():
        for _ in range(8):
            logits = hf_model(torch.tensor([ids + want])).logits[0, -1].float()
            logits[first] -= 100.0
            counts = torch.bincount(torch.tensor(want, dtype=torch.long), minlength=logits.numel()).float()
            logits -= 1.0 * counts + 1.5 * (counts > 0).float()
            want.append(int(logits.argmax()))
    assert got[0] != first and got == want


def test_controls_keep_a_seeded_request_independent_of_its_batch(make_engine, prompt_ids):
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, min_p=0.02, seed=77,
                            frequency_penalty=0.5, logit_bias=((13, 2.0),), logprobs=2)
    engine = make_engine()
    alone = _one(engine, prompt_ids[2], params, "s")
    others = [EngineRequest(f"o{i}", ids, SamplingParams(max_tokens=16, temperature=0.8, presence_penalty=1.0))
              for i, ids in enumerate(prompt_ids[:5])]
    res = run_engine(engine, [*others, EngineRequest("s", prompt_ids[2], params)])
    assert tokens_of(res["s"]) == tokens_of(alone)
    got = [lp.logprob for o in res["s"] for lp in o.logprobs or []]
    want = [lp.logprob for o in alone for lp in o.logprobs or []]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-4


def test_prompt_logprobs_match_transformers_across_chunks_and_with_max_tokens_zero(make_engine, hf_model,
                                                                                   prompt_ids):
    ids = prompt_ids[4]
    with torch.inference_mode():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
    # Chunks of 16 tokens: every chunk's positions count, the prefix cache is not used for it.
    engine = make_engine(max_num_batched_tokens=16)
    run_engine(engine, [EngineRequest("warm", ids, greedy(max_tokens=1))])  # cache the prompt's blocks
    outs = _one(engine, ids, greedy(max_tokens=0, prompt_logprobs=2))
    assert len(outs) == 1 and outs[0].finish_reason is FinishReason.LENGTH and outs[0].token_ids == []
    lps = outs[0].prompt_logprobs
    assert [lp.token_id for lp in lps] == ids[1:]
    for i, lp in enumerate(lps):
        assert abs(lp.logprob - ref[i, ids[i + 1]].item()) < 1e-3, i
        assert [t for t, _ in lp.top] == ref[i].topk(2).indices.tolist(), i
    with_tokens = _one(engine, ids, greedy(max_tokens=2, prompt_logprobs=0, logprobs=0))
    assert [lp.token_id for lp in with_tokens[0].prompt_logprobs] == ids[1:]
    assert all(o.prompt_logprobs is None for o in with_tokens[1:])
    assert len(tokens_of(with_tokens)) == 2 and with_tokens[0].logprobs is not None
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
