"""The real SmolLM2-135M from safetensors, from its GGUF and from a .pt state dict: the same
greedy output. The GGUF goes through formats' own converter and cache (the first run on a
machine converts it once, ~25 s on 2 cores; later runs read the cache)."""

import torch

from llmserve.common.model_store import BUILTIN_MODELS, DEFAULT_MODEL
from llmserve.common.models import evaluate, formats


def test_safetensors_gguf_and_state_dict_decode_the_same(model_path, tmp_path):
    torch.set_num_threads(2)
    from_st = formats.load_model(model_path)
    ids = from_st.tokenizer("The capital of France is", return_tensors="pt").input_ids
    want = evaluate.greedy_decode(from_st.model, ids, 8).tokens
    pt = formats.save_state_dict(from_st.model, tmp_path / "smollm2.pt")
    del from_st

    from_gguf = formats.load_model(BUILTIN_MODELS[DEFAULT_MODEL].locate())
    assert from_gguf.format == formats.GGUF
    assert evaluate.greedy_decode(from_gguf.model, ids, 8).tokens == want
    del from_gguf

    from_pt = formats.load_model(pt, config_dir=model_path)
    assert evaluate.greedy_decode(from_pt.model, ids, 8).tokens == want
