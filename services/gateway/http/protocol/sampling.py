"""The request fields chat and text completions share: sampling, stopping, llmserve's extensions.

Types and shapes only; ranges (temperature in [0, 2], `n` at most 16, ...) are checked where
the gRPC API checks them too (admission.validation, choices.expand), so both APIs agree.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from .common import RequestModel, Stop, one_of, refuse

_MAX_SEED = 2**64 - 1
_STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")


def _seed(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= _MAX_SEED:
        raise refuse("must be an integer in [0, 2^64-1]")
    return value


_BIAS = "must map token ids (as strings) to numbers"


def _logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    if value is not None and not all(k.isdigit() and len(k) <= 9 for k in value):
        raise refuse(_BIAS)
    return value


class StreamOptions(RequestModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # no effect: this server adds no obfuscation padding


class StructuredOutputs(RequestModel):
    """llmserve's (vLLM-style) constraint extension: exactly one of its keys."""

    json_: Any = Field(None, alias="json")  # a JSON schema, as an object or a JSON string
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # EBNF, as xgrammar reads it
    json_object: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, value: Any) -> Any:
        keys = [k for k in _STRUCTURED_KEYS if isinstance(value, dict) and value.get(k) not in (None, False)]
        if not isinstance(value, dict) or len(keys) != 1 or set(value) - set(_STRUCTURED_KEYS):
            raise refuse(f"must be an object with exactly one of {', '.join(_STRUCTURED_KEYS)}")
        return value


class SamplingRequest(RequestModel):
    """Fields of both `/v1/chat/completions` and `/v1/completions`."""

    model: str | None = None  # required; admission names it when missing
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Stop = None
    seed: Annotated[int | None, AfterValidator(_seed)] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Annotated[dict[str, float] | None, one_of(_BIAS), AfterValidator(_logit_bias)] = None
    user: str | None = None  # no effect: it labels the request
    # llmserve extensions (vLLM's names where vLLM has them; docs/backend.md)
    top_k: int | None = None
    repetition_penalty: float | None = None
    request_id: str | None = None
    priority: Annotated[str | int | None, one_of("must be low, normal or high")] = None
    min_p: float | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    resume_from_index: int | None = None
    structured_outputs: StructuredOutputs | None = None
