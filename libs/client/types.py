"""Plain result types and the request builder: protobuf stays at this edge of the client."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from llmserve.gateway.v1 import generation_pb2 as pb

_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}


@dataclass
class StreamPiece:
    """One message of a streamed completion: the tokens made since the previous one."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_id: str = ""
    choice_index: int = 0  # with n > 1 or a prompt list: the choice (index, usage are its own)


@dataclass
class Choice:
    """One choice of a completion with several (n > 1 or a prompt list)."""

    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Completion:
    """A whole completion: text and finish_reason are choice 0's, the counts all choices'."""

    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    choices: list[Choice] = field(default_factory=list)


class Delivered:
    """Completion tokens the caller has, per choice: a gateway's resend is never a repeat."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}

    def fresh(self, m: pb.GenerateStreamResponse) -> bool:
        have = self.next.get(m.choice_index, 0)
        if m.token_ids and m.index + len(m.token_ids) <= have:
            return False
        self.next[m.choice_index] = max(have, m.index + len(m.token_ids))
        return True

    @property
    def total(self) -> int:
        """What a re-attach resumes from (one choice; a request of several cannot re-attach)."""
        return sum(self.next.values())


def new_request_id() -> str:
    return uuid.uuid4().hex


def build_request(
    model: str, prompt: str | None = None, messages: list[dict] | None = None,
    prompts: list[str | list[int]] | None = None, **params
) -> pb.GenerateRequest:
    """A GenerateRequest; unset (None) parameters are left to the gateway's defaults.
    `prompts`: several raw prompts (text or token ids), one choice each (`n` each)."""
    request = pb.GenerateRequest(model=model, **{k: v for k, v in params.items() if v is not None})
    if messages is not None:
        request.messages.messages.extend(pb.ChatMessage(**m) for m in messages)
    elif prompts is not None:
        request.prompts.prompts.extend(
            pb.Prompt(text=p) if isinstance(p, str) else pb.Prompt(token_ids=pb.TokenIds(ids=p)) for p in prompts)
    elif prompt is not None:
        request.prompt = prompt
    return request


def to_piece(m: pb.GenerateStreamResponse) -> StreamPiece:
    return StreamPiece(
        m.index,
        list(m.token_ids),
        m.text,
        _FINISH.get(m.finish_reason),
        m.usage.prompt_tokens,
        m.usage.completion_tokens,
        m.request_id,
        m.choice_index,
    )


def to_completion(r: pb.GenerateResponse) -> Completion:
    return Completion(
        r.request_id,
        r.text,
        _FINISH.get(r.finish_reason, ""),
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
        [Choice(c.index, c.text, _FINISH.get(c.finish_reason, ""), c.usage.prompt_tokens, c.usage.completion_tokens)
         for c in r.choices],
    )
