"""Fast path and fallback on tiny random models built from a config (seconds, no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.cuda_graphs import DecodeGraphs
from llmserve.worker.engine.fallback import HFModelRunner
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.model_runner import PagedModelRunner
from llmserve.worker.engine.types import EngineRequest
from tests.unit.worker.engine.engine_helpers import greedy, run_engine, tokens_of

VOCAB = 512
NEW = 12
_SMALL = dict(vocab_size=VOCAB, eos_token_id=None, bos_token_id=None, pad_token_id=None)


def _tiny(config):
    torch.manual_seed(0)
    config.initializer_range = 0.2  # decisive logits: no greedy near-ties between kernels
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = None
    return model


def _llama():
    return _tiny(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **_SMALL,
        )
    )


def _qwen2():
    return _tiny(
        Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **_SMALL,
        )
    )


def _gpt2():
    return _tiny(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, **_SMALL))


def _prompts(count=6):
    g = torch.Generator().manual_seed(1)
    return [
        torch.randint(3, VOCAB, (int(length),), generator=g).tolist()
        for length in torch.randint(5, 60, (count,), generator=g)
    ]


def _refs(model, prompts):
    with torch.inference_mode():
        return [
            model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]


def _run(engine, prompts, join_at=None):
    reqs = [EngineRequest(f"r{i}", p, greedy(NEW, ignore_eos=True)) for i, p in enumerate(prompts)]
    res = run_engine(engine, reqs, join_at)
    return [tokens_of(res[r.request_id]) for r in reqs]


def _engine(model, tokenizer, **kw):
    return LLMEngine.from_model(EngineConfig(model="unused", **kw), model, tokenizer)


@pytest.mark.parametrize("build", [_llama, _qwen2], ids=["llama", "qwen2-bias"])
def test_fast_path_matches_generate_with_chunks_and_joins(build, tokenizer):
    model, prompts = build(), _prompts()
    refs = _refs(model, prompts)
    engine = _engine(model, tokenizer, max_num_batched_tokens=16, block_size=4)
    assert isinstance(engine.runner, PagedModelRunner)
    assert _run(engine, prompts, join_at=[0, 0, 2, 5, 5, 9]) == refs
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_fast_path_prefix_cache_and_preemption(tokenizer):
    model = _llama()
    shared = _prompts(1)[0] * 2
    prompts = [shared + [7, 8, 9], shared + [10], shared + [11, 12]]
    refs = _refs(model, prompts)
    engine = _engine(model, tokenizer, block_size=4, num_kv_blocks=40, enable_prefix_caching=True)
    assert _run(engine, prompts, join_at=[0, 3, 4]) == refs
    assert engine.block_manager.prefix_hits > 0
    tight = _engine(model, tokenizer, block_size=4, num_kv_blocks=len(shared) // 4 + 8)
    assert _run(tight, prompts) == refs
    assert tight.batch_scheduler.num_preemptions > 0
    assert tight.block_manager.num_free_blocks == tight.block_manager.num_blocks


def test_padded_decode_graph_path_matches(tokenizer):
    """The CUDA-graph input path (static buffers, padded batch and block tables), run eagerly."""
    model, prompts = _llama(), _prompts(5)
    refs = _refs(model, prompts)
    engine = _engine(model, tokenizer, block_size=4)
    runner = engine.runner
    runner.graphs = DecodeGraphs(runner, (1, 2, 8), max_context=64, capture=False)
    assert _run(engine, prompts, join_at=[0, 1, 1, 4, 6]) == refs


def test_fallback_gpt2_matches_generate(tokenizer):
    model, prompts = _gpt2(), _prompts()
    refs = _refs(model, prompts)
    engine = _engine(model, tokenizer, max_num_batched_tokens=20, block_size=4)
    assert isinstance(engine.runner, HFModelRunner)
    assert _run(engine, prompts, join_at=[0, 0, 1, 3, 3, 4]) == refs
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_fallback_preemption_recomputes(tokenizer):
    model, prompts = _gpt2(), _prompts(4)
    refs = _refs(model, prompts)
    engine = _engine(model, tokenizer, block_size=4, num_kv_blocks=max(map(len, prompts)) // 4 + 8)
    assert _run(engine, prompts) == refs
    assert engine.batch_scheduler.num_preemptions > 0


def test_forced_fallback_for_llama_matches(tokenizer):
    model, prompts = _llama(), _prompts(3)
    engine = _engine(model, tokenizer, force_fallback=True)
    assert isinstance(engine.runner, HFModelRunner)
    assert _run(engine, prompts) == _refs(model, prompts)


def test_step_timings_and_chrome_trace(tokenizer, tmp_path):
    engine = _engine(_llama(), tokenizer)
    trace = tmp_path / "trace.json"
    engine.start_profile(2, trace)
    _run(engine, _prompts(2))
    timings = engine.last_step_timings
    for phase in ("schedule", "prepare_inputs", "forward", "sample", "detokenize", "total"):
        assert phase in timings and timings[phase] >= 0
    assert engine.timing_totals()["steps"] >= NEW
    assert trace.exists() and trace.stat().st_size > 0


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["fast-path", "fallback"])
def test_prompt_and_token_logprobs_match_a_forward_pass_on_both_runners(build, tokenizer):
    model, prompt = build(), _prompts(1)[0]
    engine = _engine(model, tokenizer, max_num_batched_tokens=8, block_size=4)  # chunked prompt
    outs = run_engine(engine, [EngineRequest("e", prompt, greedy(max_tokens=3, logprobs=2, prompt_logprobs=2))])["e"]
    ids = prompt + tokens_of(outs)
    with torch.inference_mode():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    got = outs[0].prompt_logprobs + [lp for o in outs for lp in o.logprobs or []]
    assert [lp.token_id for lp in got] == ids[1:]
    assert max(abs(lp.logprob - ref[i, ids[i + 1]].item()) for i, lp in enumerate(got)) < 1e-3
    assert all([t for t, _ in lp.top] == ref[i].topk(2).indices.tolist() for i, lp in enumerate(got))
