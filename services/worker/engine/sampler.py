"""Per-sequence sampling over a batch of logits.

Greedy rows take an argmax together. Sampled rows get temperature, top-k, top-p and the
repetition penalty, and draw with a generator seeded from (request seed, completion index):
the draw for a token depends only on the request and the logits, never on the batch around
it, so a seeded request gives the same text alone, in any batch, and after a resume.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .types import SamplingParams

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for completion token `index` of a request (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def new_request_seed() -> int:
    """A seed for requests that did not ask for one (still batch-independent)."""
    return random.getrandbits(63)


@dataclass
class SampleRow:
    """What the sampler needs to know about one row of logits."""

    params: SamplingParams
    seed: int  # the request's seed (given or drawn at admission)
    index: int  # completion index of the token being sampled
    seen_token_ids: list[int]  # prompt + completion so far, for the repetition penalty


class Sampler:
    """Turns a [batch, vocab] logits tensor into one token id per row."""

    def __init__(self) -> None:
        self._generator = torch.Generator(device="cpu")

    def __call__(self, logits: torch.Tensor, rows: list[SampleRow]) -> list[int]:
        logits = logits.float()
        penalized = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
        if penalized:
            logits = logits.clone()
            for i in penalized:
                _apply_repetition_penalty(logits[i], rows[i])
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, r in enumerate(rows) if r.params.temperature > 0.0]
        if sampled:
            tokens = tokens.cpu().clone()
            for i in sampled:
                tokens[i] = self._sample_row(logits[i], rows[i])
        return tokens.tolist()

    def _sample_row(self, logits: torch.Tensor, row: SampleRow) -> int:
        p = row.params
        logits = logits.cpu() / p.temperature
        if p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            probs = _top_p_filter(probs, p.top_p)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, and needs exactly
        # one vector of noise from the per-token generator, so the draw is reproducible.
        self._generator.manual_seed(step_seed(row.seed, row.index))
        noise = torch.empty_like(probs).exponential_(generator=self._generator)
        return int((probs / noise).argmax())


def _apply_repetition_penalty(logits: torch.Tensor, row: SampleRow) -> None:
    """CTRL-style penalty (as in transformers): divide positive, multiply negative logits."""
    if not row.seen_token_ids:
        return
    ids = torch.tensor(sorted(set(row.seen_token_ids)), dtype=torch.long, device=logits.device)
    vals = logits.index_select(0, ids)
    penalty = row.params.repetition_penalty
    logits.index_copy_(0, ids, torch.where(vals > 0, vals / penalty, vals * penalty))


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = torch.sort(probs, descending=True)
    cum = torch.cumsum(sorted_probs, dim=-1)
    # Keep the smallest set whose mass reaches top_p (always at least the top token).
    drop = (cum - sorted_probs) >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return filtered / filtered.sum()
