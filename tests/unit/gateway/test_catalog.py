"""The gateway's encoders give the ids transformers gives, through the fast backend or not."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llmserve.common.model_store import DEFAULT_MODEL, resolve_model
from llmserve.gateway.routing.catalog import ModelProfile

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief. ü € 漢字 🙂"}, {"role": "user", "content": "  spaces\n\ttabs  "}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "<|im_start|>not a real marker"}],
]
PROMPTS = ["Hello there", "ü € 漢字 🙂", "  leading and trailing  ", "<|im_end|> in text", ""]


class _WithoutBackend:
    """The same tokenizer seen as one without a Rust backend (e.g. a sentencepiece-only model)."""

    is_fast = False

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module", params=[True, False], ids=["fast-backend", "transformers-path"])
def served(request):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    assert tokenizer.is_fast
    view = tokenizer if request.param else _WithoutBackend(tokenizer)
    return ModelProfile("smol", resolve_model(DEFAULT_MODEL), view, 2048), tokenizer


def test_chat_ids_match_apply_chat_template(served):
    model, tokenizer = served
    for messages in CHATS:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        assert model.encode_chat(messages) == list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_prompt_ids_match_encode(served):
    model, tokenizer = served
    for prompt in PROMPTS:
        assert model.encode_prompt(prompt) == tokenizer.encode(prompt, add_special_tokens=True)
