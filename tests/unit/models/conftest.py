"""A tiny random Llama (2 layers, hidden 64) with the real tokenizer, saved in each format."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llmserve.common.models import formats
from tests.support.tiny_models import tiny_llama


@pytest.fixture(scope="session")
def tokenizer(model_path):
    return AutoTokenizer.from_pretrained(str(model_path))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """The tiny model as a safetensors Hugging Face directory."""
    # Shorter context and the default initializer: the tolerances of these tests were set on it.
    model = tiny_llama(0, max_position_embeddings=256, initializer_range=0.02)
    return formats.save_hf_dir(model, tokenizer, tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture
def tiny(tiny_dir):
    """A fresh copy of the tiny model, loaded from its directory (tests may change it)."""
    return formats.load_model(tiny_dir)
