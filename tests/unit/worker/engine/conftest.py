"""Shared fixtures: the real model (loaded once per session), chat prompts, greedy references."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.common.model_store import resolve_model
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.unit.worker.engine.engine_helpers import NEW_TOKENS, PROMPTS, chat_ids


@pytest.fixture(scope="session")
def model_dir():
    return resolve_model("SmolLM2-135M-Instruct", log=lambda *a, **k: None)


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def hf_model(model_dir):
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def prompt_ids(tokenizer) -> list[list[int]]:
    return [chat_ids(tokenizer, p) for p in PROMPTS]


@pytest.fixture(scope="session")
def greedy_refs(hf_model, prompt_ids) -> list[list[int]]:
    """transformers `generate(do_sample=False)` completions, one prompt at a time."""
    refs = []
    with torch.inference_mode():
        for ids in prompt_ids:
            out = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
            )
            refs.append(out[0, len(ids) :].tolist())
    return refs


@pytest.fixture(scope="module")
def make_engine(hf_model, tokenizer):
    """Build an engine around the already loaded real model."""

    def make(**overrides) -> LLMEngine:
        cfg = EngineConfig(model="unused", **overrides)
        return LLMEngine.from_model(cfg, hf_model, tokenizer)

    return make
