"""A fixed, seeded set of short chat prompts for the engine benchmark.

`chat_prompts(n, seed)` depends only on its arguments, so every system in a run (and every
run) sees the same requests in the same order. `fixed_length_prompts` makes token prompts of
an exact length (the GPU workload).
"""

from __future__ import annotations

import random

from llmserve.common import chat_template

_SUBJECTS = [
    "rivers",
    "bees",
    "volcanoes",
    "the Roman empire",
    "bread",
    "glaciers",
    "owls",
    "jazz",
    "deserts",
    "submarines",
    "tea",
    "comets",
    "coral reefs",
    "bicycles",
    "chess",
    "maple trees",
]
_ASKS = [
    "Give two facts about {s}.",
    "Why do people find {s} interesting?",
    "Explain {s} to a curious child in three sentences.",
    "Write a haiku about {s}.",
    "What is a common misconception about {s}?",
    "Summarize the history of {s} briefly.",
    "List three words associated with {s}.",
    "How would you teach a class about {s}?",
]


def chat_prompts(n: int = 64, seed: int = 1234) -> list[str]:
    """`n` distinct user messages (for n <= 128), the same for a given seed."""
    rng = random.Random(seed)
    pairs = [(a, s) for a in _ASKS for s in _SUBJECTS]
    rng.shuffle(pairs)
    return [pairs[i % len(pairs)][0].format(s=pairs[i % len(pairs)][1]) for i in range(n)]


def chat_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Apply the model's chat template (with the assistant prompt) to each message."""
    return [chat_template.chat_token_ids(tokenizer, [{"role": "user", "content": text}]) for text in texts]


def fixed_length_prompts(tokenizer, n: int, length: int, seed: int = 1234) -> list[list[int]]:
    """`n` prompts of exactly `length` tokens: chat prompts, extended with more prompt text."""
    texts = chat_prompts(max(n, 8) * 4, seed)
    prompts = []
    for i in range(n):
        ids: list[int] = []
        j = i
        while len(ids) < length:
            ids += tokenizer.encode(" " + texts[j % len(texts)], add_special_tokens=False)
            j += 7
        prompts.append(ids[:length])
    return prompts
