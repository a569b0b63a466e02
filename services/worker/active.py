"""A request a worker holds, and the conversions between work items, the engine and the sink."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.common.logging import request_context, trace_id_of
from llmserve.common.structured import Constraint
from llmserve.common.v1 import work_pb2

from .engine.types import EngineRequest, SamplingParams


@dataclass
class Active:
    """A request this worker holds: where its tokens go and which entry to acknowledge."""

    entry_id: str
    reply_to: str
    attempt: int
    deadline_unix_ms: int
    model: str = ""  # served id of the engine running it
    owed_text: str = ""  # decoded by a previous attempt, never delivered: goes out first
    span: Any = None  # the request's "worker.generate" span, in the gateway's trace
    payload: bytes = b""  # the work item as read (immutable): a forced unload requeues it to resume elsewhere
    tenant: str = ""
    #: Every chunk sent for this attempt, in order: resent to a gateway a client re-attached
    #: through, and stored as the result once finished (a few bytes per token).
    sent: list = field(default_factory=list)


def log_context(item: work_pb2.WorkItem):
    """Lines logged while handling `item` carry its request fields (one loop serves them all)."""
    return request_context(item.request_id, trace_id_of(dict(item.trace_context)), item.tenant, item.model)


def engine_request(item: work_pb2.WorkItem) -> EngineRequest:
    s = item.sampling
    return EngineRequest(
        request_id=item.request_id,
        prompt_token_ids=list(item.prompt_token_ids),
        sampling=SamplingParams(
            max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            repetition_penalty=s.repetition_penalty, stop=tuple(s.stop),
            seed=s.seed if s.has_seed else None,
            presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
            logit_bias=tuple(sorted(s.logit_bias.items())), min_p=s.min_p, min_tokens=s.min_tokens,
            stop_token_ids=tuple(s.stop_token_ids), ignore_eos=s.ignore_eos,
            logprobs=s.top_logprobs if s.logprobs else None,
            prompt_logprobs=s.top_logprobs if s.prompt_logprobs else None,
        ),
        resume_token_ids=list(item.resume_token_ids),
        deadline=item.deadline_unix_ms / 1000 if item.deadline_unix_ms else None,
        priority=item.priority,
        constraint=Constraint.from_pb(item.constraint) if item.HasField("constraint") else None,
        fork_of=item.fork_of,
    )

