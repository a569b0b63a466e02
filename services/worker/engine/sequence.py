"""One request's state inside the engine: tokens, progress, KV blocks, text."""

from __future__ import annotations

import enum
import itertools
from typing import Any

from .detokenizer import IncrementalDetokenizer
from .types import EngineRequest, FinishReason, SamplingParams

_counter = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to recompute
    RUNNING = "running"  # owns KV blocks and is in the batch
    FINISHED = "finished"


class Sequence:
    """A request as the scheduler, block manager and model runner see it.

    `token_ids` is prompt + completion (resume tokens included); `num_computed_tokens` of
    them have KV in the cache. A sequence needs a forward for the rest; when the last token
    is computed the step samples the next one. Preemption by recompute just frees the blocks
    and sets `num_computed_tokens` back to 0.
    """

    def __init__(self, request: EngineRequest, detokenizer: IncrementalDetokenizer | None = None):
        self.seq_id = next(_counter)
        self.request_id = request.request_id
        self.sampling: SamplingParams = request.sampling
        self.deadline = request.deadline
        self.priority = request.priority
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.token_ids: list[int] = list(request.prompt_token_ids) + list(request.resume_token_ids)
        self.num_resume_tokens = len(request.resume_token_ids)
        self.num_computed_tokens = 0
        # The most tokens ever computed: below it, computing again is recompute (preemption).
        self.max_computed_tokens = 0
        # Tokens already handed out in a TokenOutput (resume tokens count as delivered).
        self.num_emitted_tokens = self.num_resume_tokens
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chained hashes of full token blocks (prefix cache)
        self.num_cached_blocks = 0  # leading blocks already indexed in the prefix cache
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self.detokenizer = detokenizer
        self.num_preemptions = 0
        self.grammar: Any = None  # an xgrammar GrammarMatcher when the request is constrained
        self.prompt_logprobs: list = []  # TokenLogprob of prompt tokens 1.., when sampling asks
        self.prompt_logprobs_sent = False

    # Token accounting -------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        """Completion tokens so far, resume tokens included."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def num_context_tokens(self) -> int:
        """Tokens the request came with (prompt plus resumed ones): what prefill computes."""
        return self.num_prompt_tokens + self.num_resume_tokens

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    # Lifecycle ---------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.error = error

    def reset_for_recompute(self) -> None:
        """Forget the KV (the blocks were freed); the next schedule recomputes every token."""
        self.num_computed_tokens = 0
        self.block_table = []
        self.status = SequenceStatus.WAITING
        self.num_preemptions += 1

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, status={self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )
