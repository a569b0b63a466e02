"""Fallback runner: any transformers causal LM, one sequence at a time, correctness first.

Each sequence keeps its own `DynamicCache`; a step feeds each scheduled sequence its new
tokens (a prefill chunk or one decode token) in a separate forward. The block manager still
accounts KV in blocks, so scheduling, preemption (which drops the cache and recomputes) and
stats behave exactly as on the fast path.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from .batch_scheduler import SchedulerOutput
from .model_runner import prompt_logit_rows
from .profiling import StepTimer
from .sequence import Sequence


class HFModelRunner:
    """Runs `hf_model` per sequence with a per-sequence KV cache."""

    def __init__(self, hf_model, num_kv_blocks: int, block_size: int, max_model_len: int):
        self.model = hf_model
        self.device = next(hf_model.parameters()).device
        self.num_kv_blocks = num_kv_blocks
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.eos_token_id = None
        self._caches: dict[int, DynamicCache] = {}
        params = inspect.signature(hf_model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache`; remote-code models may not have.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._takes_cache_position = "cache_position" in params or "kwargs" in params

    def release(self, seq: Sequence) -> None:
        self._caches.pop(seq.seq_id, None)

    def _cache_for(self, seq: Sequence) -> DynamicCache:
        cache = self._caches.get(seq.seq_id)
        if cache is None or seq.num_computed_tokens == 0:
            # New sequence, or preempted: its KV is recomputed from scratch.
            cache = DynamicCache(config=self.model.config)
            self._caches[seq.seq_id] = cache
        return cache

    def execute(self, out: SchedulerOutput, timer: StepTimer | None = None) -> torch.Tensor:
        rows, extra = [], []
        if timer is not None:
            timer.mark("prepare_inputs")
        for item in out.scheduled:
            seq = item.seq
            start = seq.num_computed_tokens
            ids = seq.token_ids[start : start + item.num_new_tokens]
            cache = self._cache_for(seq)
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            positions = torch.arange(start, start + len(ids), device=self.device)
            kwargs = {self._cache_kw: cache, "position_ids": positions.unsqueeze(0)}
            if self._takes_cache_position:
                kwargs["cache_position"] = positions
            n_prompt = prompt_logit_rows(item)
            result = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=0 if n_prompt else 1, **kwargs)
            if item.sample:
                rows.append(result.logits[0, -1].float())
            extra.extend(result.logits[0, :n_prompt].float())
        rows += extra
        return torch.stack(rows) if rows else torch.empty(0)
