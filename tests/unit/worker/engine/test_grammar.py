"""Structured output in the engine: the token mask (real SmolLM2 tokenizer) and the engine hook (real model)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from llmserve.common.structured import Constraint, choice, json_schema
from llmserve.worker.engine.grammar import GrammarBackend, accept
from llmserve.worker.engine.types import EngineRequest, FinishReason
from tests.unit.worker.engine.engine_helpers import chat_ids, greedy, run_engine, text_of, tokens_of

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def backend(tokenizer):
    return GrammarBackend(tokenizer, frozenset({tokenizer.eos_token_id}))


def _random_walk(backend, tokenizer, constraint: Constraint, seed: int, max_steps: int = 400) -> str:
    """Draw random tokens under the mask until the constraint ends; the text it spelled."""
    request = EngineRequest(f"walk-{seed}", [1], greedy(), constraint=constraint)
    backend.submit(request)
    ready, _ = backend.split_ready([request], idle=True)
    while not ready:
        ready, _ = backend.split_ready([request], idle=True)
    matcher, error = backend.matcher(request)
    assert error is None
    gen = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    for _ in range(max_steps):
        logits = torch.randn(1, len(tokenizer), generator=gen)
        backend.mask(logits, [matcher])
        assert torch.isfinite(logits).any()
        token = int(logits.argmax())
        ok, done = accept(matcher, token)
        assert ok
        if done:
            assert token == tokenizer.eos_token_id  # the only way out is the stop token, once complete
            return tokenizer.decode(tokens)
        tokens.append(token)
    raise AssertionError(f"no end after {max_steps} tokens: {tokenizer.decode(tokens)!r}")


@pytest.mark.parametrize("seed", range(6))
def test_random_tokens_under_a_schema_mask_spell_valid_json(backend, tokenizer, seed):
    text = _random_walk(backend, tokenizer, json_schema(PERSON, "s"), seed)
    jsonschema.validate(json.loads(text), PERSON)


def test_regex_and_choice_masks(backend, tokenizer):
    for seed in range(3):
        assert re.fullmatch(r"[a-c]{2,4}-\d", _random_walk(backend, tokenizer, Constraint("regex", r"[a-c]{2,4}-\d"), seed))
        assert _random_walk(backend, tokenizer, choice(["yes", "no", 'say "hi"'], "c"), seed) in ("yes", "no", 'say "hi"')


def test_unconstrained_rows_are_untouched_and_padding_masked(backend, tokenizer):
    request = EngineRequest("rows", [1], greedy(), constraint=Constraint("json_object"))
    backend.submit(request)
    while not backend.split_ready([request], idle=True)[0]:
        pass
    matcher, _ = backend.matcher(request)
    logits = torch.randn(3, len(tokenizer) + 64)  # a padded vocabulary, as some checkpoints have
    before = logits.clone()
    backend.mask(logits, [None, matcher, None])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed and max(allowed) < len(tokenizer)
    assert all(tokenizer.decode([t]).lstrip().startswith("{") for t in allowed)


def test_compiles_are_cached_by_constraint(backend):
    a = EngineRequest("a", [1], greedy(), constraint=json_schema({"type": "integer"}, "s"))
    b = EngineRequest("b", [1], greedy(), constraint=json_schema({"type": "integer"}, "s"))
    backend.submit(a)
    backend.submit(b)
    assert backend._compiled["a"] is backend._compiled["b"]


def test_engine_batch_mixes_constrained_and_free_rows(make_engine, tokenizer):
    prompt = chat_ids(tokenizer, "Describe a person as JSON.")
    constrained = [EngineRequest(f"c{i}", prompt, greedy(max_tokens=80), constraint=json_schema(PERSON, "s"))
                   for i in range(2)]
    free = EngineRequest("free", prompt, greedy(max_tokens=16))
    alone = tokens_of(run_engine(make_engine(), [free])["free"])
    results = run_engine(make_engine(), [*constrained, free])
    for r in constrained:
        outs = results[r.request_id]
        assert outs[-1].finish_reason is FinishReason.STOP, text_of(outs)
        jsonschema.validate(json.loads(text_of(outs)), PERSON)
    assert tokens_of(results["free"]) == alone  # a constrained neighbour does not change a free row
    assert not text_of(results["free"]).startswith("{")  # and the free row really was free


def test_engine_resume_continues_the_constraint(make_engine, tokenizer):
    prompt = chat_ids(tokenizer, "Describe a person as JSON.")
    whole = run_engine(make_engine(), [EngineRequest("w", prompt, greedy(max_tokens=80),
                                                     constraint=json_schema(PERSON, "s"))])["w"]
    tokens = tokens_of(whole)
    resumed = run_engine(make_engine(), [EngineRequest("r", prompt, greedy(max_tokens=80),
                                                       resume_token_ids=tokens[:5],
                                                       constraint=json_schema(PERSON, "s"))])["r"]
    assert tokens_of(resumed) == tokens[5:]


def test_engine_error_for_a_constraint_that_does_not_compile(make_engine, tokenizer):
    bad = EngineRequest("bad", chat_ids(tokenizer, "hi"), greedy(), constraint=Constraint("grammar", "root ::= nope"))
    outs = run_engine(make_engine(), [bad])["bad"]
    assert outs[-1].finish_reason is FinishReason.ERROR and "constraint" in outs[-1].error
