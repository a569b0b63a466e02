"""The engine's contract with the worker service: what goes in, what comes out.

Plain dataclasses, no protobuf: the worker's servicer converts at its edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.common.logprobs import TokenLogprob
from llmserve.common.outcome import Outcome
from llmserve.common.structured import Constraint

# The engine speaks the suite's one outcome vocabulary: STOP (EOS or a stop string), LENGTH
# (max_tokens, or the context is full), CANCELLED (abort_request), DEADLINE_EXCEEDED (past
# the request's deadline) and ERROR (the engine could not run it).
FinishReason = Outcome


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature == 0 means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    repetition_penalty: float = 1.0  # 1.0: off
    stop: tuple[str, ...] = ()
    seed: int | None = None  # same seed, same text, whatever else is in the batch
    ignore_eos: bool = False
    presence_penalty: float = 0.0  # subtracted once from every token the completion holds
    frequency_penalty: float = 0.0  # subtracted per occurrence in the completion
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added to the logits
    min_p: float = 0.0  # drop tokens below min_p * the top token's probability; 0: off
    min_tokens: int = 0  # EOS and stop_token_ids cannot end the completion before this many
    stop_token_ids: tuple[int, ...] = ()  # more ids that end the completion (kept in token_ids)
    logprobs: int | None = None  # None: off; k >= 0: each token's logprob and the top k
    prompt_logprobs: int | None = None  # None: off; k >= 0: each prompt token's logprob and top k


@dataclass
class EngineRequest:
    """A generation to run.

    `resume_token_ids` are completion tokens a previous attempt already delivered (worker
    recovery): the engine treats them as generated (they count toward max_tokens and the
    seeded RNG continues from their index) and emits only what comes after.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    resume_token_ids: list[int] = field(default_factory=list)
    deadline: float | None = None  # time.time() seconds; the engine finishes it with DEADLINE_EXCEEDED past it
    priority: int = 0  # the request's priority class (llmserve.gateway.v1.Priority); accounting only
    constraint: Constraint | None = None  # structured output: the completion is sampled under it
    # Another choice of the same n > 1 request (same prompt): this one shares that request's
    # prompt KV blocks once they are computed instead of computing its own.
    fork_of: str = ""


@dataclass
class TokenOutput:
    """New output of one request after one engine step."""

    request_id: str
    token_ids: list[int]  # tokens made in this step (may be empty on the finishing step)
    text: str  # the new text these tokens complete (incremental detokenization)
    index: int  # completion index of token_ids[0] (resume tokens included)
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # all completion tokens so far, resume tokens included
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry, when asked for
    # Prompt tokens 1.. (token 0 has no context), once, on the request's first output; when asked for.
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class EngineStats:
    """Load the scheduler places work by."""

    total_kv_blocks: int
    free_kv_blocks: int
    block_size: int
    running: int
    waiting: int
    max_running: int = 0  # most sequences a step can run (max_num_seqs); 0: not known


@dataclass(frozen=True)
class StepStats:
    """What one engine step really computed, from the scheduler's own plan.

    Every token a step computes KV for is counted once, in one of three phases: `prefill`
    (prompt and resume tokens computed for the first time), `decode` (generated tokens'
    KV), `recompute` (tokens computed again after their sequence was preempted). Prompt
    tokens served from the prefix cache are not computed; they count in `prefix_hit_tokens`,
    out of `prompt_tokens` (the context tokens of the sequences admitted for the first time):
    the prefix-cache hit rate is their ratio.
    """

    scheduled_seqs: int = 0  # sequences in the step's batch (0: nothing ran)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    recompute_tokens: int = 0
    preempted: int = 0  # sequences preempted (KV freed, to recompute) while planning it
    prefix_hit_tokens: int = 0
    prompt_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens + self.recompute_tokens

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(stats: StepStats) -> tuple[int, ...]:
    return (stats.scheduled_seqs, stats.prefill_tokens, stats.decode_tokens, stats.recompute_tokens,
            stats.preempted, stats.prefix_hit_tokens, stats.prompt_tokens)
