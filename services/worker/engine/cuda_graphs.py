"""CUDA graphs for pure-decode steps.

A decode step of a small model is dominated by kernel-launch overhead (a few hundred small
kernels per step); replaying a captured graph removes it. Graphs need static shapes, so a
decode batch is padded up to the next captured batch size, and block tables are padded to a
width bucket (a power of two in blocks). Padded rows read and write only the runner's
scratch block, and their logits are dropped.

Graphs are captured lazily, the first time a (batch bucket, width bucket) pair is needed,
and share one memory pool. With `capture=False` the same static-buffer path runs eagerly:
this is how the padding logic is tested on machines without a GPU.
"""

from __future__ import annotations

import bisect

import torch

from .attention import AttentionMetadata
from .batch_scheduler import ScheduledSeq
from .model_runner import additive_mask
from .profiling import StepTimer


class DecodeGraphs:
    """Static input buffers and captured decode graphs for a `PagedModelRunner`."""

    def __init__(self, runner, batch_sizes, max_context: int, capture: bool | None = None):
        self.runner = runner
        self.model = runner.model
        self.block_size = runner.block_size
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_blocks = -(-min(max_context, runner.max_model_len) // self.block_size)
        self.capture = runner.device.type == "cuda" if capture is None else capture
        max_bs, dev = self.batch_sizes[-1], runner.device
        scratch = runner.scratch_block
        self.input_ids = torch.zeros(max_bs, dtype=torch.long, device=dev)
        self.positions = torch.zeros(max_bs, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((max_bs,), scratch * self.block_size, dtype=torch.long, device=dev)
        self.block_tables = torch.full((max_bs, self.max_blocks), scratch, dtype=torch.long, device=dev)
        self.context_lens = torch.ones(max_bs, dtype=torch.long, device=dev)
        self.logits_indices = torch.arange(max_bs, dtype=torch.long, device=dev)
        self._key_pos = torch.arange(self.max_blocks * self.block_size, device=dev)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    def _width_bucket(self, num_blocks: int) -> int:
        width = 1
        while width < num_blocks:
            width *= 2
        return min(width, self.max_blocks)

    def can_run(self, decodes: list[ScheduledSeq]) -> bool:
        if not decodes or len(decodes) > self.batch_sizes[-1]:
            return False
        return max(len(d.seq.block_table) for d in decodes) <= self.max_blocks

    def run(self, decodes: list[ScheduledSeq], timer: StepTimer | None = None) -> torch.Tensor:
        """Logits [len(decodes), vocab] for a pure-decode step."""
        n = len(decodes)
        bs = self.batch_sizes[bisect.bisect_left(self.batch_sizes, n)]
        width = self._width_bucket(max(len(d.seq.block_table) for d in decodes))
        self._fill(decodes, bs, width)
        if timer is not None:
            timer.mark("prepare_inputs")
        if not self.capture:
            return self._forward(bs, width)[:n]
        key = (bs, width)
        if key not in self._graphs:
            self._graphs[key] = self._capture(bs, width)
        graph, logits = self._graphs[key]
        graph.replay()
        return logits[:n]

    def _fill(self, decodes: list[ScheduledSeq], bs: int, width: int) -> None:
        n, block_size, scratch = len(decodes), self.block_size, self.runner.scratch_block
        ids, pos, slots, tables = [], [], [], []
        for d in decodes:
            seq = d.seq
            p = seq.num_computed_tokens
            ids.append(seq.token_ids[p])
            pos.append(p)
            slots.append(seq.block_table[p // block_size] * block_size + p % block_size)
            tables.append(seq.block_table + [scratch] * (width - len(seq.block_table)))
        dev = self.input_ids.device
        self.input_ids[:n].copy_(torch.tensor(ids), non_blocking=True)
        self.positions[:n].copy_(torch.tensor(pos), non_blocking=True)
        self.context_lens[:n].copy_(torch.tensor(pos) + 1, non_blocking=True)
        self.slot_mapping[:n].copy_(torch.tensor(slots), non_blocking=True)
        self.block_tables[:n, :width].copy_(torch.tensor(tables).to(dev), non_blocking=True)
        # Padded rows: token 0 at position 0, KV to the scratch block, attend one key.
        self.input_ids[n:bs].zero_()
        self.positions[n:bs].zero_()
        self.context_lens[n:bs].fill_(1)
        self.slot_mapping[n:bs].fill_(scratch * block_size)
        self.block_tables[n:bs, :width].fill_(scratch)

    def _forward(self, bs: int, width: int) -> torch.Tensor:
        key_pos = self._key_pos[: width * self.block_size]
        mask = additive_mask(key_pos.unsqueeze(0) < self.context_lens[:bs].unsqueeze(1), self.model.dtype)
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            num_decode_tokens=bs,
            decode_block_tables=self.block_tables[:bs, :width],
            decode_mask=mask,
        )
        return self.model.forward(
            self.input_ids[:bs],
            self.positions[:bs],
            meta,
            self.runner.kv_caches,
            self.logits_indices[:bs],
            self.block_size,
        )

    def _capture(self, bs: int, width: int):
        # Warm up on a side stream (allocator and cuBLAS/SDPA kernel selection), then capture.
        # The buffers hold the current step's real inputs, so warm-up writes are the same KV
        # the replay writes.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(bs, width)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(bs, width)
        self._pool = graph.pool()
        return graph, logits

    @property
    def num_captured(self) -> int:
        return len(self._graphs)
