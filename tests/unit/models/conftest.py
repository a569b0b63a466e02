"""A tiny random Llama (2 layers, hidden 64) with the real tokenizer, saved in each format."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmserve.common.models import formats


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer(model_path):
    return AutoTokenizer.from_pretrained(str(model_path))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """The tiny model as a safetensors Hugging Face directory."""
    return formats.save_hf_dir(tiny_llama(), tokenizer, tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture
def tiny(tiny_dir):
    """A fresh copy of the tiny model, loaded from its directory (tests may change it)."""
    return formats.load_model(tiny_dir)
