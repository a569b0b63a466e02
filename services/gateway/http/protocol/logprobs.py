"""Log probabilities in OpenAI's two shapes: chat's list of entries, completions' parallel lists."""

from __future__ import annotations

from .common import ResponseModel


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token string's UTF-8


class ChatLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseModel):
    content: list[ChatLogprobEntry] | None
    refusal: list[ChatLogprobEntry] | None = None


class CompletionLogprobs(ResponseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # the echoed prompt's first token has none
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]
