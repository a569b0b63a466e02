"""Iteration-level scheduler: which sequences run in the next step, and how many tokens each.

vLLM v1 shape: there is no separate prefill and decode phase. Each sequence simply has
tokens without KV (`num_uncomputed_tokens`: the whole prompt at first, then one per step);
every step hands out a token budget, running sequences first (decodes and unfinished prefill
chunks), then waiting ones. A long prompt gets a chunk of whatever budget is left. When the
KV blocks run out, the running sequence that comes last in that order is preempted: its
blocks are freed and it waits to recompute, so no request fails for lack of KV.

Order (`order_key`), both for the waiting queue and for who keeps KV: priority class first
(HIGH before LOW), then earliest deadline (none = last), then arrival. So a HIGH request
starts before any waiting LOW one, and under KV pressure the lowest-priority,
latest-deadline, newest sequence is the one recomputed.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus
from .types import StepStats


@dataclass
class ScheduledSeq:
    """One sequence's share of a step: compute KV for `num_new_tokens` tokens from
    `seq.num_computed_tokens` on; sample a token afterwards when `sample` is set."""

    seq: Sequence
    num_new_tokens: int
    sample: bool


@dataclass
class SchedulerOutput:
    """The plan for one step."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    prefix_hit_tokens: int = 0  # tokens the admitted sequences took from the prefix cache
    prompt_tokens: int = 0  # context tokens of the sequences admitted for the first time

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


def order_key(seq: Sequence) -> tuple[int, float, int]:
    """Sort key: smaller goes first and keeps its KV longest."""
    return (-seq.priority, seq.deadline if seq.deadline is not None else math.inf, seq.seq_id)


class BatchScheduler:
    """Owns the waiting queue and running list; allocates KV through the block manager."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 decode_replay: bool = False):
        self.block_manager = block_manager
        self.decode_replay = decode_replay
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: list[Sequence] = []  # sorted by order_key
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=order_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:
            # A preemption means KV is short: do not admit new work in the same step.
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        self.running.sort(key=order_key)  # the last one is the first to give up its KV
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = self._num_new(seq, budget)
            while not self.block_manager.allocate(seq, num_new):
                victim = self.running.pop()  # lowest priority, latest deadline, newest
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSeq(seq, num_new, num_new == seq.num_uncomputed_tokens))
                budget -= num_new
                i += 1
                continue
            break  # `seq` itself was preempted; everything after it already was
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hit = self.block_manager.match_prefix(seq)
            num_new = self._num_new(seq, budget)
            if not self.block_manager.allocate(seq, num_new):
                if not self.running:
                    # Nothing left to free: take the biggest chunk that fits so it progresses.
                    num_new = self._fit_chunk(seq, num_new)
                if num_new <= 0 or not self.block_manager.allocate(seq, num_new):
                    self.block_manager.free(seq)  # give back prefix-cache hits
                    seq.num_computed_tokens = 0
                    break
            self.waiting.pop(0)
            # Only first-time hits: a preempted sequence finding its own blocks again saves
            # recompute, and its tokens were already counted when first computed.
            out.prefix_hit_tokens += max(0, hit - seq.max_computed_tokens)
            if seq.max_computed_tokens == 0:  # the hit rate's denominator: each prompt once
                out.prompt_tokens += seq.num_context_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new, num_new == seq.num_uncomputed_tokens))
            budget -= num_new

    def _num_new(self, seq: Sequence, budget: int) -> int:
        """Tokens to compute this step. With `decode_replay`, a prefill chunk stops at the end
        of the prompt and completion tokens being recomputed go one per step, the way decode
        computed them (see `EngineConfig.decode_replay`)."""
        num_new = min(seq.num_uncomputed_tokens, budget)
        if self.decode_replay:
            start = seq.num_computed_tokens
            num_new = min(num_new, seq.num_prompt_tokens - start if start < seq.num_prompt_tokens else 1)
        return num_new

    def _fit_chunk(self, seq: Sequence, num_new: int) -> int:
        bm = self.block_manager
        free_tokens = (len(seq.block_table) + bm.num_free_blocks) * bm.block_size
        return min(num_new, free_tokens - seq.num_computed_tokens)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        bisect.insort(self.waiting, seq, key=order_key)
        out.preempted.append(seq)
        self.num_preemptions += 1

    def update_after_step(self, out: SchedulerOutput) -> StepStats:
        """Record the KV the step computed (before sampling appends new tokens); what it was."""
        prefill = decode = recompute = 0
        for item in out.scheduled:
            seq = item.seq
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + item.num_new_tokens
            fresh = max(start, seq.max_computed_tokens)  # below the high-water mark: recompute
            recompute += max(0, min(end, fresh) - start)
            new_prefill = max(0, min(end, seq.num_context_tokens) - fresh)
            prefill += new_prefill
            decode += max(0, end - fresh) - new_prefill
            seq.num_computed_tokens = end
            seq.max_computed_tokens = max(seq.max_computed_tokens, end)
            self.block_manager.cache_full_blocks(seq)
        return StepStats(len(out.scheduled), prefill, decode, recompute, len(out.preempted),
                         out.prefix_hit_tokens, out.prompt_tokens)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished/cancelled sequence and free its blocks at once."""
        self.block_manager.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
