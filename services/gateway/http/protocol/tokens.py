"""`/tokenize` and `/detokenize` bodies (vLLM's routes, for clients that count tokens)."""

from __future__ import annotations

from .chat import ChatMessage
from .common import RequestModel, ResponseModel


class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None  # the chat template and generation prompt applied
    add_special_tokens: bool | None = None  # prompt only; default true


class TokenizeResponse(ResponseModel):
    tokens: list[int]
    count: int
    max_model_len: int  # the model's context length


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(ResponseModel):
    prompt: str
