"""The OpenAI HTTP API's bodies as pydantic models (as vLLM's `entrypoints/openai/protocol.py`).

Requests are parsed into them (`parse`: strict types, unknown fields refused, a 400 naming
the field path); responses are built from them and serialised with `dump`.
"""

from __future__ import annotations

from .chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatMessage
from .common import RequestModel, ResponseModel, Usage, parse
from .completions import CompletionRequest, CompletionResponse
from .errors import ErrorBody, ErrorInfo

__all__ = [
    "ChatCompletionChunk", "ChatCompletionRequest", "ChatCompletionResponse", "ChatMessage", "CompletionRequest",
    "CompletionResponse", "ErrorBody", "ErrorInfo", "RequestModel", "ResponseModel", "Usage", "parse",
]
