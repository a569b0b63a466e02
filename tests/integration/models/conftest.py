"""The tiny random Llama of the unit tests, saved once per session as a HF directory."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmserve.common.models import formats


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, model_path):
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return formats.save_hf_dir(model, tokenizer, tmp_path_factory.mktemp("tiny") / "hf")
