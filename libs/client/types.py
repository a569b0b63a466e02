"""Plain result types and the request builder: protobuf stays at this edge of the client."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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


@dataclass
class Completion:
    """A whole completion."""

    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def new_request_id() -> str:
    return uuid.uuid4().hex


def build_request(
    model: str, prompt: str | None = None, messages: list[dict] | None = None, **params
) -> pb.GenerateRequest:
    """A GenerateRequest; unset (None) parameters are left to the gateway's defaults."""
    request = pb.GenerateRequest(model=model, **{k: v for k, v in params.items() if v is not None})
    if messages is not None:
        request.messages.messages.extend(pb.ChatMessage(**m) for m in messages)
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
    )


def to_completion(r: pb.GenerateResponse) -> Completion:
    return Completion(
        r.request_id,
        r.text,
        _FINISH.get(r.finish_reason, ""),
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
    )
