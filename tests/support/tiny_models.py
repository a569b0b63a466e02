"""Tiny random Llama models (2 layers, hidden 64) with the real SmolLM2 tokenizer, saved as
Hugging Face directories: real engines in seconds, and two seeds give two different models."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmserve.common.models import formats


def tiny_llama(seed: int, **overrides) -> LlamaForCausalLM:
    """The tiny Llama with weights drawn from `seed`; `overrides` change its LlamaConfig."""
    config = LlamaConfig(**{
        "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
        "initializer_range": 0.2,  # decisive logits: greedy text does not depend on batch makeup
    } | overrides)  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(out_dir: Path, seed: int, tokenizer_dir: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return formats.save_hf_dir(tiny_llama(seed), tokenizer, out_dir)
