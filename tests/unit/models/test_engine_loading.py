"""What the worker will do with registry versions: build its engine from `formats.load_model`.

Float variants (HF dirs, .pt, GGUF, bf16, pruned) take the engine's fast paged path; int8
modules have no `.weight` tensor for that path to fuse, so they need `force_fallback=True`.
"""

import torch

from llmserve.common.models import evaluate, formats, quantize
from llmserve.worker.engine import EngineConfig, LLMEngine
from llmserve.worker.engine.types import EngineRequest, SamplingParams


def _engine_tokens(engine, prompt: list[int], n: int) -> list[int]:
    engine.add_request(
        EngineRequest("r", prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    )
    tokens = []
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for t in out.token_ids]
    return tokens


def test_state_dict_version_serves_through_the_fast_path(tiny, tiny_dir, tmp_path):
    prompt = tiny.tokenizer("Hot swap without failed requests").input_ids
    want = evaluate.greedy_decode(tiny.model, torch.tensor([prompt]), 8).tokens
    loaded = formats.load_model(formats.save_state_dict(tiny.model, tmp_path / "w.pt"), config_dir=tiny_dir)
    config = EngineConfig(model=tiny_dir, num_kv_blocks=32, block_size=4)
    assert _engine_tokens(LLMEngine.from_model(config, loaded.model, loaded.tokenizer), prompt, 8) == want


def test_int8_version_serves_through_the_fallback_runner(tiny, tmp_path):
    q = quantize.quantize_int8_dynamic(tiny.model)
    loaded = formats.load_model(quantize.save_int8(q, tiny.tokenizer, tmp_path / "q"))
    prompt = loaded.tokenizer("Hot swap without failed requests").input_ids
    want = evaluate.greedy_decode(loaded.model, torch.tensor([prompt]), 8).tokens
    config = EngineConfig(model=loaded.path, num_kv_blocks=32, block_size=4, force_fallback=True)
    assert _engine_tokens(LLMEngine.from_model(config, loaded.model, loaded.tokenizer), prompt, 8) == want
