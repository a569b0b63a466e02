"""Helpers shared by the engine tests: prompts, request builders, a step loop."""

from __future__ import annotations

from llmserve.common.chat_template import chat_token_ids
from llmserve.worker.engine.types import EngineRequest, SamplingParams

NEW_TOKENS = 24

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a two-line poem about the sea.",
    "What is 12 plus 30?",
    "Define gravity in one sentence.",
    "Give one tip for sleeping well.",
    "What is the largest planet?",
    "Say hello in Spanish.",
    "Explain what a cat is to a child.",
    "List two fruits that are red.",
    "What does a thermometer measure?",
    "Who wrote Romeo and Juliet?",
    "Why is the sky blue?",
    "Translate 'thank you' to French.",
    "What is 7 times 8?",
    "Describe autumn in five words.",
]


def chat_ids(tokenizer, text: str) -> list[int]:
    return chat_token_ids(tokenizer, [{"role": "user", "content": text}])


def greedy(max_tokens: int = NEW_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


def run_engine(engine, requests: list[EngineRequest], join_at: list[int] | None = None, max_steps=10_000):
    """Step until done, adding request i at step join_at[i]; return id -> list of outputs."""
    join_at = join_at or [0] * len(requests)
    results: dict[str, list] = {r.request_id: [] for r in requests}
    step = 0
    while step < max_steps:
        for req, at in zip(requests, join_at, strict=True):
            if at == step:
                engine.add_request(req)
        if step > max(join_at) and not engine.has_unfinished():
            break
        for out in engine.step():
            results[out.request_id].append(out)
        step += 1
    return results


def tokens_of(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def text_of(outputs) -> str:
    return "".join(o.text for o in outputs)
