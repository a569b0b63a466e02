"""Chat messages to prompt token ids, through the tokenizer's own chat template."""

from __future__ import annotations


def chat_token_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """`messages` under `tokenizer`'s chat template, ending with the assistant's turn opened."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding; 4.x a list.
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
