"""The fast path against transformers on the real model: greedy, seeded sampling, KV reuse."""

from __future__ import annotations

from llmserve.worker.engine.types import EngineRequest, FinishReason, SamplingParams
from tests.unit.worker.engine.engine_helpers import NEW_TOKENS, greedy, run_engine, text_of, tokens_of


def _requests(prompt_ids, params, prefix="r"):
    return [EngineRequest(f"{prefix}{i}", ids, params) for i, ids in enumerate(prompt_ids)]


def test_greedy_alone_matches_generate(make_engine, prompt_ids, greedy_refs):
    engine = make_engine()
    for i, ids in enumerate(prompt_ids):
        res = run_engine(engine, [EngineRequest(f"a{i}", ids, greedy())])
        assert tokens_of(res[f"a{i}"]) == greedy_refs[i], f"prompt {i}"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_greedy_mixed_batch_with_staggered_joins(make_engine, prompt_ids, greedy_refs):
    engine = make_engine(max_num_batched_tokens=64)  # forces chunked prefill of joiners
    reqs = _requests(prompt_ids, greedy())
    res = run_engine(engine, reqs, join_at=[(i * 3) % 17 for i in range(len(reqs))])
    for i, req in enumerate(reqs):
        outs = res[req.request_id]
        assert tokens_of(outs) == greedy_refs[i], f"prompt {i}"
        assert outs[-1].finished and sum(o.finished for o in outs) == 1
        assert [o.index for o in outs] == list(range(len(outs)))
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_seeded_sampling_same_alone_and_in_batch(make_engine, prompt_ids):
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    engine = make_engine()
    alone = tokens_of(run_engine(engine, [EngineRequest("s", prompt_ids[2], params)])["s"])
    others = [
        EngineRequest(f"o{i}", ids, SamplingParams(max_tokens=20, temperature=1.0))
        for i, ids in enumerate(prompt_ids[:6])
    ]
    batch = run_engine(
        engine, [*others, EngineRequest("s", prompt_ids[2], params)], join_at=[0, 0, 1, 1, 2, 3, 2]
    )
    assert tokens_of(batch["s"]) == alone
    other_seed = tokens_of(
        run_engine(
            engine, [EngineRequest("t", prompt_ids[2], SamplingParams(**{**params.__dict__, "seed": 99}))]
        )["t"]
    )
    assert other_seed != alone


def test_resume_continues_seeded_stream(make_engine, prompt_ids):
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=7, ignore_eos=True)
    engine = make_engine()
    full = tokens_of(run_engine(engine, [EngineRequest("f", prompt_ids[0], params)])["f"])
    resumed = run_engine(engine, [EngineRequest("g", prompt_ids[0], params, resume_token_ids=full[:6])])["g"]
    assert tokens_of(resumed) == full[6:]
    assert resumed[0].index == 6 and resumed[-1].completion_tokens == 16


def test_preemption_with_tiny_kv_completes_everything(make_engine, prompt_ids, greedy_refs):
    # 14 blocks of 16 tokens: a few sequences fit, eight do not.
    engine = make_engine(num_kv_blocks=14, enable_prefix_caching=False)
    reqs = _requests(prompt_ids[:8], greedy(), prefix="p")
    res = run_engine(engine, reqs)
    assert engine.batch_scheduler.num_preemptions > 0
    for i, req in enumerate(reqs):
        assert tokens_of(res[req.request_id]) == greedy_refs[i], f"prompt {i}"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_prefix_cache_reuses_blocks_and_keeps_output(make_engine, prompt_ids, greedy_refs):
    engine = make_engine(enable_prefix_caching=True)
    first = run_engine(engine, [EngineRequest("x", prompt_ids[0], greedy())])["x"]
    hits_before = engine.block_manager.prefix_hits
    second = run_engine(engine, [EngineRequest("y", prompt_ids[0], greedy())])["y"]
    assert engine.block_manager.prefix_hits > hits_before
    assert tokens_of(first) == tokens_of(second) == greedy_refs[0]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_abort_and_deadline_free_blocks(make_engine, prompt_ids):
    engine = make_engine()
    engine.add_request(EngineRequest("a", prompt_ids[0], greedy(max_tokens=200, ignore_eos=True)))
    engine.add_request(EngineRequest("d", prompt_ids[1], greedy(), deadline=0.0))
    outs = engine.step() + engine.step()
    dead = [o for o in outs if o.request_id == "d"]
    assert dead == [dead[0]] and dead[0].finish_reason is FinishReason.DEADLINE_EXCEEDED and not dead[0].token_ids
    assert engine.block_manager.num_used_blocks > 0
    engine.abort_request("a")
    final = engine.step()
    assert [(o.request_id, o.finish_reason) for o in final] == [("a", FinishReason.CANCELLED)]
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert engine.stats().free_kv_blocks == engine.stats().total_kv_blocks


def test_max_tokens_and_context_length(make_engine, prompt_ids):
    engine = make_engine(max_model_len=len(prompt_ids[0]) + 5)
    res = run_engine(
        engine,
        [
            EngineRequest("ctx", prompt_ids[0], greedy(max_tokens=50, ignore_eos=True)),
            EngineRequest("mt", prompt_ids[0][:10], greedy(max_tokens=3, ignore_eos=True)),
        ],
    )
    assert res["ctx"][-1].finish_reason is FinishReason.LENGTH and res["ctx"][-1].completion_tokens == 5
    assert res["mt"][-1].finish_reason is FinishReason.LENGTH and len(tokens_of(res["mt"])) == 3


def test_stop_string_across_tokens(make_engine, tokenizer, prompt_ids, greedy_refs):
    ref_text = tokenizer.decode(greedy_refs[0], skip_special_tokens=True)
    # Pick a stop string that starts inside one token and ends inside a later one.
    pieces = [tokenizer.decode([t]) for t in greedy_refs[0]]
    offset = len(pieces[0]) + len(pieces[1]) - 2
    stop = ref_text[offset : offset + 5]
    assert len(stop) == 5
    engine = make_engine()
    outs = run_engine(engine, [EngineRequest("s", prompt_ids[0], greedy(stop=(stop,)))])["s"]
    assert outs[-1].finish_reason is FinishReason.STOP
    assert text_of(outs) == ref_text[: ref_text.index(stop)]
    assert len(tokens_of(outs)) < NEW_TOKENS
