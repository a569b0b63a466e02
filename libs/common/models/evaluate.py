"""Measure a model: greedy decode, perplexity on a fixed text, weight bytes.

Deliberately a plain transformers forward loop with its KV cache (not the serving engine):
these numbers compare one model variant against another (fp32, int8, bf16, pruned), so the
harness must run every variant, including quantized modules the engine's fast path rejects.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch


@dataclass
class DecodeResult:
    """Greedy decode output and its speed (prefill excluded from `tokens_per_s`)."""

    tokens: list[int]
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        # The first token comes from the prefill; the rest are the decode steps we timed.
        steps = max(len(self.tokens) - 1, 1)
        return steps / self.decode_s if self.decode_s > 0 else float("inf")


@torch.inference_mode()
def greedy_decode(model, input_ids: torch.Tensor, max_new_tokens: int) -> DecodeResult:
    """Batch-1 greedy decoding with the model's KV cache; no early stop at EOS, so every
    variant runs the same number of steps."""
    started = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True)
    cache = out.cache  # transformers 5 renamed past_key_values to cache
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [int(token)]
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        out = model(input_ids=token, cache=cache, use_cache=True)
        cache = out.cache
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
    return DecodeResult(tokens=tokens, prefill_s=prefill, decode_s=time.perf_counter() - started)


@torch.inference_mode()
def perplexity(model, token_ids: torch.Tensor, window: int = 512) -> float:
    """exp(mean next-token loss) over `token_ids` (1-D), in non-overlapping windows.

    Non-overlapping windows keep it cheap on CPU; every variant sees the same windows, so the
    deltas are fair even though the absolute value is a little above a sliding-window one.
    """
    ids = token_ids.view(-1)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start : start + window].unsqueeze(0)
        if chunk.numel() < 2:
            break
        logits = model(input_ids=chunk, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        total_nll += float(nll)
        total_tokens += chunk.numel() - 1
    return math.exp(total_nll / total_tokens)


def text_perplexity(model, tokenizer, text: str, window: int = 512) -> float:
    """Perplexity of `text` under `model` (tokenized without special tokens)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    return perplexity(model, ids, window)


def weight_bytes(model) -> int:
    """Bytes held by parameters, buffers and packed quantized weights (shared tensors once).

    Dynamic int8 Linear layers keep their weights in packed params, not in `parameters()`,
    so those are counted through their unpacked int8 weight and bias.
    """
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total
