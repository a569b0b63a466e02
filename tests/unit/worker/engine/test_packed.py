"""Packed weight formats (int4 from Q4_1, int8 weight-only): exact mapping, engine output, settings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from llmserve.common.model_store import source_gguf
from llmserve.worker.engine import packed
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.types import EngineRequest
from tests.support.tiny_models import tiny_llama
from tests.unit.worker.engine.engine_helpers import chat_ids, greedy, run_engine, tokens_of

PROMPTS = ["What is the capital of France?", "Write a two-line poem about the sea.", "What is 7 times 8?",
           "Name three primary colors.", "Explain what a cat is to a child.", "Why is the sky blue?"]
# Relative L2 error of logits against fp32 with the same weights (bf16 activations alone give
# ~0.02 on the tiny model; measured int8 0.043). int4 is checked against fp32 on its own
# dequantized weights (the tiny random model loses ~0.47 to 4-bit rounding itself; the real
# model's loss is bounded in the real-model test and measured in bench/results/quantization.md).
TINY_TOLERANCE = {"int4": 0.05, "int8": 0.08}
REAL_INT4_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def gguf_weights(model_dir):
    path = source_gguf(model_dir)
    if path is None:
        pytest.skip("the bundled GGUF is not installed")
    from llmserve.worker.engine.weight_source import GGUFWeights

    return GGUFWeights(path, num_heads=9, num_kv_heads=3)


def test_every_q4_1_block_unpacks_to_what_gguf_dequantizes(gguf_weights):
    """d * code + m from our unpacking equals the gguf package's own dequantization, for every
    Q4_1 tensor of the bundled model."""
    from gguf import quants

    checked = 0
    for tensor in gguf_weights._tensors.values():
        if tensor.tensor_type.name != "Q4_1":
            continue
        codes, d, m = packed.q4_1_unpack(torch.from_numpy(np.array(tensor.data)))
        ours = (d.float().repeat_interleave(32, 1) * codes.float() + m.float().repeat_interleave(32, 1))
        ref = torch.from_numpy(quants.dequantize(np.asarray(tensor.data), tensor.tensor_type))
        assert torch.equal(ours, ref), tensor.name
        checked += 1
    assert checked == 210  # 30 layers x 7 projections


@pytest.mark.parametrize("name", ["model.layers.0.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight"])
def test_int4_layout_holds_q4_1_exactly(gguf_weights, name):
    """scale = d, zero = m + 8d: torch's int4 kernel multiplies by exactly the file's weights
    (float32 scales; rows in transformers' order, q/k un-interleaved)."""
    codes, d, m = gguf_weights.q4_1(name)
    weight = packed.Int4Weight.from_codes(codes, d, m, dtype=torch.float32)
    assert torch.equal(weight.dequantize(), gguf_weights.float(name))
    # The served bf16 scales round d and m + 8d: within a step's 2^-8 of the block's range.
    served = packed.Int4Weight.from_codes(codes, d, m).dequantize()
    step = d.float().repeat_interleave(32, 1)
    assert ((served - gguf_weights.float(name)).abs() <= step * 8 * 2**-8 + (m.float().abs() + 8 * d.float())
            .repeat_interleave(32, 1) * 2**-8).all()


def test_gguf_rows_match_the_converted_model(gguf_weights, hf_model):
    """Un-permuting q and k (llama.cpp interleaves them for its rope) gives transformers' rows."""
    params = dict(hf_model.named_parameters())
    for name in ["model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.k_proj.weight",
                 "model.layers.3.mlp.down_proj.weight", "model.norm.weight"]:
        assert torch.equal(gguf_weights.float(name), params[name]), name
    codes, scales = gguf_weights.q8_0("model.embed_tokens.weight")
    assert torch.equal(packed.Q8Embedding(codes, scales).dequantize(), params["model.embed_tokens.weight"])


def test_q4_1_quantizer_round_trips_its_own_grid():
    """A weight already on a Q4_1 grid (as a dequantized GGUF is) quantizes back to itself."""
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (64, 128), dtype=torch.int32)
    codes[:, ::32], codes[:, 1::32] = 0, 15  # every group spans the full code range, as llama.cpp's do
    d = (torch.rand(64, 4) * 0.01 + 1e-3).half().float()
    m = (-torch.rand(64, 4) * 0.1).half().float()
    w = d.repeat_interleave(32, 1) * codes.float() + m.repeat_interleave(32, 1)
    again = packed.Int4Weight.quantize(w, dtype=torch.float32).dequantize()
    torch.testing.assert_close(again, w, rtol=0, atol=1e-6)


def _logits(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    from llmserve.worker.engine.attention import AttentionMetadata, PrefillChunk

    model, n = engine.runner.model, len(ids)
    pos = torch.arange(n)
    meta = AttentionMetadata(slot_mapping=pos, prefills=[PrefillChunk(0, n, 0, None, None)])
    with torch.inference_mode():
        return model.forward(torch.tensor(ids), pos, meta, model.allocate_kv_cache(n), pos, n)


def _on_int4_grid(model):
    """A copy whose projections hold exactly what `Int4Weight.quantize` serves (float32 grid)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not model.lm_head:
                module.weight.copy_(packed.Int4Weight.quantize(module.weight, torch.float32).dequantize())
    return model


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_packed_mode_logits_are_close_to_fp32(tokenizer, mode):
    model = tiny_llama(2)
    quant = LLMEngine.from_model(EngineConfig(model="unused", quantization=mode), model, tokenizer)
    assert quant.runner.model.dtype == torch.bfloat16
    reference = _on_int4_grid(model) if mode == "int4" else model
    fp32 = LLMEngine.from_model(EngineConfig(model="unused"), reference, tokenizer)
    ids = chat_ids(tokenizer, PROMPTS[1])
    ref, got = _logits(fp32, ids), _logits(quant, ids)
    assert ((got - ref).norm() / ref.norm()).item() < TINY_TOLERANCE[mode]


def test_real_model_int4_logits_are_close_to_fp32_dequantized(model_dir, hf_model, tokenizer):
    if source_gguf(model_dir) is None:
        pytest.skip("the bundled GGUF is not installed")
    quant = LLMEngine.from_config(EngineConfig(model=model_dir, quantization="int4", num_kv_blocks=64))
    fp32 = LLMEngine.from_model(EngineConfig(model="unused", num_kv_blocks=64), hf_model, tokenizer)
    ids = chat_ids(tokenizer, PROMPTS[4])
    ref, got = _logits(fp32, ids), _logits(quant, ids)
    assert ((got - ref).norm() / ref.norm()).item() < REAL_INT4_TOLERANCE
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_packed_mode_greedy_is_the_same_alone_and_in_a_staggered_batch(tokenizer, mode):
    engine = LLMEngine.from_model(EngineConfig(model="unused", quantization=mode), tiny_llama(1), tokenizer)
    prompts = [chat_ids(tokenizer, p) for p in PROMPTS]
    alone = [tokens_of(run_engine(engine, [EngineRequest(f"a{i}", p, greedy(12))])[f"a{i}"])
             for i, p in enumerate(prompts)]
    batch = run_engine(engine, [EngineRequest(f"b{i}", p, greedy(12)) for i, p in enumerate(prompts)],
                       join_at=[0, 0, 1, 3, 4, 7])
    assert [tokens_of(batch[f"b{i}"]) for i in range(len(prompts))] == alone
    assert engine.stats().free_kv_blocks == engine.stats().total_kv_blocks


def test_real_model_int4_from_the_gguf_is_the_same_alone_and_in_a_staggered_batch(model_dir, tokenizer):
    """The served path: Q4_1 blocks read from the GGUF file (no float model loaded)."""
    if source_gguf(model_dir) is None:
        pytest.skip("the bundled GGUF is not installed")
    engine = LLMEngine.from_config(EngineConfig(model=model_dir, quantization="int4", num_kv_blocks=256))
    assert isinstance(engine.runner.model.embed, packed.Q8Embedding)  # the file's Q8_0 rows
    prompts = [chat_ids(tokenizer, p) for p in PROMPTS]
    alone = [tokens_of(run_engine(engine, [EngineRequest(f"a{i}", p, greedy(16))])[f"a{i}"])
             for i, p in enumerate(prompts)]
    batch = run_engine(engine, [EngineRequest(f"b{i}", p, greedy(16)) for i, p in enumerate(prompts)],
                       join_at=[0, 0, 1, 3, 4, 7])
    assert [tokens_of(batch[f"b{i}"]) for i in range(len(prompts))] == alone


def test_auto_serves_int4_on_cpu_and_dense_when_dtype_is_set(tokenizer):
    auto = LLMEngine.from_model(EngineConfig(model="unused", quantization="auto"), tiny_llama(0), tokenizer)
    assert isinstance(auto.runner.model.layers[0].qkv, packed.Int4Weight)
    dense = LLMEngine.from_model(EngineConfig(model="unused", quantization="auto", dtype="float32"),
                                 tiny_llama(0), tokenizer)
    assert isinstance(dense.runner.model.layers[0].qkv, torch.Tensor)


@pytest.mark.parametrize("overrides, field", [
    ({"quantization": "int5"}, "quantization"),
    ({"quantization": "int4", "dtype": "float32"}, "dtype"),
    ({"quantization": "int8", "device": "cuda"}, "device"),
    ({"num_threads": 0}, "num_threads"),
    ({"num_threads": "many"}, "num_threads"),
])  # fmt: skip
def test_engine_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        EngineConfig(model="unused", **overrides).validate()


def test_worker_settings_default_to_auto_and_name_a_bad_field():
    from pydantic import ValidationError

    from llmserve.worker.settings import WorkerSettings

    # auto by default (int4 on a CPU); dense weights stay one setting away.
    assert WorkerSettings().quantization == "auto"
    assert WorkerSettings(quantization="none").quantization == "none"
    with pytest.raises(ValidationError, match="quantization"):
        WorkerSettings(quantization="int3")
