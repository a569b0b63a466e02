"""Turns a scheduled step into model inputs and runs the model.

`PagedModelRunner` drives the Llama-family fast path (`llama.LlamaFastModel`) over a
preallocated paged KV cache; `fallback.HFModelRunner` runs any other transformers causal
LM. Both return, for the sequences that sample this step, one row of logits each, in the
order they appear in `SchedulerOutput.scheduled`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .attention import AttentionMetadata, PrefillChunk
from .batch_scheduler import ScheduledSeq, SchedulerOutput
from .profiling import StepTimer
from .sequence import Sequence


class ModelRunner(Protocol):
    """What the engine needs from a runner."""

    block_size: int
    num_kv_blocks: int
    max_model_len: int

    def execute(self, out: SchedulerOutput, timer: StepTimer | None = None) -> torch.Tensor:
        """Compute the scheduled tokens; logits [num sampling seqs + prompt rows, vocab] (float32):
        one row per sampling sequence, then `prompt_logit_rows` rows per scheduled item in order.

        `timer` (the engine's) is marked "prepare_inputs" once the inputs are on the device."""

    def release(self, seq: Sequence) -> None:
        """Forget any per-sequence state (its KV blocks are freed by the block manager)."""


def prompt_logit_rows(item: ScheduledSeq) -> int:
    """How many of a chunk's first positions need logits for prompt logprobs (echo): those that
    predict a prompt token (the last prompt position is the sampling row)."""
    seq = item.seq
    if seq.sampling.prompt_logprobs is None:
        return 0
    start = seq.num_computed_tokens
    return max(0, min(start + item.num_new_tokens, seq.num_prompt_tokens - 1) - start)


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[D, L] bool (True = attend) -> [D, 1, 1, L] additive mask (0 / -inf)."""
    mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, float("-inf"))
    return mask.view(keep.shape[0], 1, 1, -1)


def _slots(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


class PagedModelRunner:
    """Fast path: a flat token batch, one KV tensor pair per layer, paged by block tables.

    The cache has one extra block at the end (`scratch_block`): padded decode rows of a CUDA
    graph write their KV there, and padded block-table entries point there.
    """

    def __init__(self, model, num_kv_blocks: int, block_size: int, max_model_len: int, graphs=None):
        self.model = model
        self.device = model.device
        self.block_size = block_size
        self.num_kv_blocks = num_kv_blocks
        self.max_model_len = max_model_len
        self.scratch_block = num_kv_blocks
        self.kv_caches = model.allocate_kv_cache((num_kv_blocks + 1) * block_size)
        self.graphs = graphs  # cuda_graphs.DecodeGraphs or None
        self._key_pos = torch.arange(0, device=self.device)  # key positions for decode masks, grown on demand

    def release(self, seq: Sequence) -> None:
        pass

    def _tensor(self, values, dtype=torch.long) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

    def execute(self, out: SchedulerOutput, timer: StepTimer | None = None) -> torch.Tensor:
        decodes = [s for s in out.scheduled if s.num_new_tokens == 1]
        prefills = [s for s in out.scheduled if s.num_new_tokens != 1]
        if not prefills and self.graphs is not None and self.graphs.can_run(decodes):
            return self.graphs.run(decodes, timer)
        return self._execute_eager(decodes, prefills, out, timer)

    def _execute_eager(self, decodes: list[ScheduledSeq], prefills: list[ScheduledSeq], out,
                       timer: StepTimer | None):
        block_size = self.block_size
        ids, positions, slots = [], [], []
        for item in decodes:
            seq = item.seq
            pos = seq.num_computed_tokens
            ids.append(seq.token_ids[pos])
            positions.append(pos)
            slots.append(seq.block_table[pos // block_size] * block_size + pos % block_size)
        meta = AttentionMetadata(slot_mapping=None, num_decode_tokens=len(decodes))
        last_index = {id(item): i for i, item in enumerate(decodes)}
        extra: dict[int, range] = {}
        for item in prefills:
            extra[id(item)] = range(len(ids), len(ids) + prompt_logit_rows(item))
            meta.prefills.append(self._prefill_chunk(item, len(ids)))
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(_slots(seq.block_table, start, end, block_size))
            last_index[id(item)] = len(ids) - 1
        logits_indices = [last_index[id(item)] for item in out.scheduled if item.sample]
        # Then the prompt-logprob rows, in schedule order (see prompt_logit_rows).
        logits_indices += [i for item in out.scheduled for i in extra.get(id(item), ())]
        # Every index vector of the step in one tensor: one host->device copy, not six.
        num_tokens, num_decodes = len(ids), len(decodes)
        flat = ids + positions + slots + logits_indices
        width = 0
        if decodes:
            width = max(len(d.seq.block_table) for d in decodes)
            flat += [p + 1 for p in positions[:num_decodes]]
            pad = self.scratch_block
            for d in decodes:
                table = d.seq.block_table
                flat += table
                flat += [pad] * (width - len(table))
        packed = self._tensor(flat)
        ids_t, pos_t, slot_t, rest = packed[:num_tokens], packed[num_tokens : 2 * num_tokens], \
            packed[2 * num_tokens : 3 * num_tokens], packed[3 * num_tokens :]
        idx_t = rest[: len(logits_indices)]
        meta.slot_mapping = slot_t
        if decodes:
            lens = rest[len(logits_indices) : len(logits_indices) + num_decodes]
            tables = rest[len(logits_indices) + num_decodes :].view(num_decodes, width)
            meta.decode_block_tables, meta.decode_mask = tables, self._decode_mask(lens, width)
        if timer is not None:
            timer.mark("prepare_inputs")
        return self.model.forward(ids_t, pos_t, meta, self.kv_caches, idx_t, self.block_size)

    def _decode_mask(self, context_lens: torch.Tensor, width: int) -> torch.Tensor:
        num_keys = width * self.block_size
        if self._key_pos.numel() < num_keys:
            self._key_pos = torch.arange(max(num_keys, 2 * self._key_pos.numel()), device=self.device)
        return additive_mask(self._key_pos[:num_keys].unsqueeze(0) < context_lens.unsqueeze(1), self.model.dtype)

    def _prefill_chunk(self, item: ScheduledSeq, flat_start: int) -> PrefillChunk:
        seq, n = item.seq, item.num_new_tokens
        cached = seq.num_computed_tokens
        chunk = PrefillChunk(flat_start, flat_start + n, cached, None, None)
        if cached:
            total = cached + n
            chunk.context_slots = self._tensor(_slots(seq.block_table, 0, total, self.block_size))
            q_pos = torch.arange(cached, total, device=self.device).unsqueeze(1)
            k_pos = torch.arange(total, device=self.device).unsqueeze(0)
            chunk.mask = (k_pos <= q_pos).view(1, 1, n, total)
        return chunk
