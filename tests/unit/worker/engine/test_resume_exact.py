"""Exact resume in the packed (bf16-activation) modes: batch-invariant kernels + decode replay.

A request moved to another worker arrives with the tokens already sent (`resume_token_ids`);
its continuation must be the tokens the first worker would have produced. With one-prefill
recompute, int4 continued differently in 19 of 80 such resumes (docs/engine.md); decode replay
recomputes those tokens one per step, as decode did, so the KV is the same bits.
"""

from __future__ import annotations

import pytest
import torch

from llmserve.common.model_store import source_gguf
from llmserve.worker.engine import packed
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.types import EngineRequest
from tests.unit.worker.engine.engine_helpers import PROMPTS, chat_ids, greedy, run_engine, tokens_of

NEW_TOKENS = 24
CUTS = (3, 9, 15, 21)


@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_packed_kernels_give_each_row_the_same_bits_in_any_batch(kind):
    torch.manual_seed(0)
    weight = torch.randn(1536, 576)
    w = packed.Int4Weight.quantize(weight) if kind == "int4" else packed.Int8Weight.quantize(weight)
    x = torch.randn(64, 576).bfloat16()
    full = w.matmul(x)
    for rows in (1, 2, 3, 4, 7, 16, 33):
        assert torch.equal(w.matmul(x[:rows]), full[:rows]), rows
    assert torch.equal(torch.cat([w.matmul(x[i : i + 1]) for i in range(64)]), full)


@pytest.mark.timeout(600)
def test_real_model_int4_resumes_exactly_at_every_cut(model_dir, tokenizer):
    if source_gguf(model_dir) is None:
        pytest.skip("the bundled GGUF is not installed")
    # num_threads="auto": big steps run on every core, small ones on fewer (threads.StepThreads).
    config = dict(model=model_dir, quantization="int4", num_kv_blocks=512, enable_prefix_caching=False,
                  num_threads="auto")
    # One engine plays both workers: no prefix cache, and a finished request leaves no KV behind.
    engine = LLMEngine.from_config(EngineConfig(**config))
    prompts = [chat_ids(tokenizer, p) for p in PROMPTS[:8]]
    params = greedy(NEW_TOKENS, ignore_eos=True)
    original = run_engine(engine, [EngineRequest(f"o{i}", p, params) for i, p in enumerate(prompts)],
                          join_at=[i % 3 for i in range(len(prompts))])
    reference = [tokens_of(original[f"o{i}"]) for i in range(len(prompts))]
    diverged = []
    for cut in CUTS:
        resumed = [EngineRequest(f"r{cut}-{i}", p, params, resume_token_ids=reference[i][:cut])
                   for i, p in enumerate(prompts)]
        out = run_engine(engine, resumed, join_at=[(2 * i) % 5 for i in range(len(prompts))])
        diverged += [(cut, i) for i in range(len(prompts))
                     if reference[i][:cut] + tokens_of(out[f"r{cut}-{i}"]) != reference[i]]
    assert diverged == []
