"""W8A8 (int8 weights x per-token int8 activations, SmoothQuant): numerics and engine output."""

from __future__ import annotations

import copy

import pytest
import torch

from llmserve.worker.engine import w8a8
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.support.tiny_models import tiny_llama
from tests.unit.worker.engine.engine_helpers import chat_ids, greedy, run_engine, tokens_of

PROMPTS = ["What is the capital of France?", "Write a two-line poem about the sea.", "What is 7 times 8?",
           "Name three primary colors.", "Explain what a cat is to a child.", "Why is the sky blue?"]


def test_int8_linear_is_close_to_float_and_each_row_is_independent_of_the_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 256) * torch.linspace(0.1, 10, 8).unsqueeze(1)  # rows of very different size
    weight = torch.randn(96, 256) * 0.05
    w = w8a8.Int8Weight.quantize(weight)
    exact = x @ weight.t()
    got = w8a8.int8_linear(x, w)
    assert (got - exact).norm() / exact.norm() < 0.02
    for i in range(len(x)):  # per-token scales: a row's result never depends on its neighbours
        assert torch.equal(w8a8.int8_linear(x[i : i + 1], w)[0], got[i])


def test_smoothing_keeps_the_model_function(tokenizer):
    model = tiny_llama(0)
    ids = torch.tensor([chat_ids(tokenizer, PROMPTS[0])])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    w8a8.smooth_(model, w8a8.calibrate(model, tokenizer))
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied


def test_engine_matches_the_w8a8_transformers_model(tokenizer):
    """The fast path (fused q/k/v and gate/up, paged attention) computes what transformers
    computes with every Linear swapped for the same W8A8 layer."""
    model = tiny_llama(1)
    reference = copy.deepcopy(model)
    w8a8.quantize_model_(reference, tokenizer)
    engine = LLMEngine.from_model(EngineConfig(model="unused", quantization="w8a8"), model, tokenizer)
    prompts = [chat_ids(tokenizer, p) for p in PROMPTS]
    from llmserve.worker.engine.types import EngineRequest

    outputs = run_engine(engine, [EngineRequest(f"r{i}", p, greedy(12, ignore_eos=True))
                                  for i, p in enumerate(prompts)])
    with torch.inference_mode():
        for i, ids in enumerate(prompts):
            ref = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=12, eos_token_id=None)
            assert tokens_of(outputs[f"r{i}"]) == ref[0, len(ids):].tolist(), PROMPTS[i]


def test_real_model_greedy_is_the_same_alone_and_in_a_staggered_batch(hf_model, tokenizer):
    from llmserve.worker.engine.types import EngineRequest

    engine = LLMEngine.from_model(EngineConfig(model="unused", quantization="w8a8"), hf_model, tokenizer)
    prompts = [chat_ids(tokenizer, p) for p in PROMPTS]
    alone = [tokens_of(run_engine(engine, [EngineRequest(f"a{i}", p, greedy(16))])[f"a{i}"])
             for i, p in enumerate(prompts)]
    batch = run_engine(engine, [EngineRequest(f"b{i}", p, greedy(16)) for i, p in enumerate(prompts)],
                       join_at=[0, 0, 1, 3, 4, 7])
    assert [tokens_of(batch[f"b{i}"]) for i in range(len(prompts))] == alone
    assert engine.stats().free_kv_blocks == engine.stats().total_kv_blocks
    # The session's model is untouched: quantizing worked on a copy.
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("overrides, message", [
    ({"quantization": "int5"}, "quantization must be"),  # int4 became a mode (packed.py)
    ({"quantization": "w8a8", "dtype": "bfloat16"}, "float32"),
    ({"quantization": "w8a8", "device": "cuda"}, "CPU"),
])
def test_config_rejects_what_w8a8_cannot_run(overrides, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model="unused", **overrides).validate()


def test_w8a8_needs_the_fast_path(tokenizer):
    with pytest.raises(ValueError, match="fast path"):
        LLMEngine.from_model(EngineConfig(model="unused", quantization="w8a8", force_fallback=True),
                             tiny_llama(0), tokenizer)
