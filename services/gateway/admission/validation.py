"""Validate a generation request before anything touches Redis.

Every rejection is InvalidArgument naming the limit that was broken, so a client can fix
its request without reading our source.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from llmserve.common.errors import InvalidArgument
from llmserve.common.structured import Constraint, checked

from ..routing.catalog import ModelProfile
from ..settings import GatewaySettings

PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH = 1, 2, 3
ROLES = ("system", "user", "assistant")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass
class GenerateParams:
    """A request as the client sent it, protobuf-free. None means "not set"."""

    model: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    request_id: str = ""
    priority: int = 0
    resume_from_index: int | None = None  # set: re-attach to request_id from this index
    constraint: Constraint | None = None  # structured output (checked here, at admission)
    constraint_param: str = "structured_output"  # the request field it came from, for the 400
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_p: float | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_token_ids: list[int] | None = None  # a prompt given as token ids (completions)
    fork_of: str = ""  # request id of choice 0 of the same n > 1 request
    prompt_logprobs: bool = False  # also the prompt tokens' logprobs (echo); allows max_tokens 0


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: tuple[str, ...]
    seed: int | None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_p: float = 0.0
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class Job:
    """A validated request, ready to enqueue."""

    request_id: str
    tenant: str
    model: str
    prompt_token_ids: list[int]
    sampling: Sampling
    priority: int
    lease: Any = None  # the rate limiter's Lease, taken after validation
    constraint: Constraint | None = None  # structured output, enforced by the worker
    received_at: float = 0.0  # time.monotonic() when the call arrived: latencies count from here
    resume_from: int | None = None  # a re-attach (from this completion index), not a new request
    tokenizer: Any = None  # the model's tokenizer (token strings of reported logprobs)
    fork_of: str = ""  # choice 0 of the same n > 1 request: share its prompt KV


def check_request_id(request_id: str) -> None:
    if not _REQUEST_ID.match(request_id):
        raise InvalidArgument("request_id must be 1-128 characters of [A-Za-z0-9._:-]")


def validate(params: GenerateParams, model: ModelProfile, tenant: str, settings: GatewaySettings) -> Job:
    request_id = params.request_id or uuid.uuid4().hex
    if not _REQUEST_ID.match(request_id):
        raise InvalidArgument("request_id must be 1-128 characters of [A-Za-z0-9._:-]")
    prompt_ids = _prompt_ids(params, model, settings)
    sampling = _sampling(params, len(prompt_ids), model, settings)
    if params.priority not in (0, PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH):
        raise InvalidArgument(f"priority {params.priority} is not a Priority value")
    constraint = checked(params.constraint, params.constraint_param) if params.constraint else None
    return Job(
        request_id=request_id,
        tenant=tenant,
        model=model.name,
        prompt_token_ids=prompt_ids,
        sampling=sampling,
        priority=params.priority or PRIORITY_NORMAL,
        constraint=constraint,
        tokenizer=model.tokenizer,
        fork_of=params.fork_of,
    )


def _prompt_ids(params: GenerateParams, model: ModelProfile, settings: GatewaySettings) -> list[int]:
    if params.prompt_token_ids is not None:
        ids = params.prompt_token_ids
        vocab = len(model.tokenizer)
        if not ids or not all(0 <= t < vocab for t in ids):
            raise InvalidArgument(f"a token-id prompt must hold ids in [0, {vocab})", param="prompt")
    elif params.prompt is None and params.messages is None:
        raise InvalidArgument("one of prompt or messages is required")
    elif params.prompt is not None:
        if not params.prompt.strip():
            raise InvalidArgument("prompt must not be empty")
        _check_bytes(_utf8_len(params.prompt, "prompt"), settings)
        ids = model.encode_prompt(params.prompt)
    else:
        ids = model.encode_chat(_checked_messages(params.messages or [], settings))
    if len(ids) >= model.context_length:
        raise InvalidArgument(
            f"prompt is {len(ids)} tokens; the model's context length is {model.context_length} tokens"
        )
    return ids


def _checked_messages(messages: list[dict[str, str]], settings: GatewaySettings) -> list[dict[str, str]]:
    if not messages:
        raise InvalidArgument("messages must hold at least one message")
    if len(messages) > settings.max_messages:
        raise InvalidArgument(f"at most {settings.max_messages} messages are allowed (max_messages)")
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise InvalidArgument(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        size = _utf8_len(m.get("content", ""), f"messages[{i}].content")
        if size > settings.max_chat_message_bytes:
            raise InvalidArgument(
                f"messages[{i}].content is {size} bytes; max_chat_message_bytes is {settings.max_chat_message_bytes}"
            )
    if not any(m.get("content", "").strip() for m in messages):
        raise InvalidArgument("messages must not all be empty")
    _check_bytes(sum(_utf8_len(m.get("content", ""), "content") for m in messages), settings)
    return messages


def _utf8_len(text: str, what: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError as e:  # JSON can carry lone surrogates; protobuf cannot
        raise InvalidArgument(f"{what} must be valid Unicode text") from e


def _check_bytes(size: int, settings: GatewaySettings) -> None:
    if size > settings.max_prompt_bytes:
        raise InvalidArgument(f"prompt is {size} bytes; max_prompt_bytes is {settings.max_prompt_bytes}")


def _sampling(params: GenerateParams, prompt_len: int, model: ModelProfile, settings: GatewaySettings) -> Sampling:
    room = model.context_length - prompt_len
    if params.max_tokens is None:
        max_tokens = min(settings.default_max_tokens, room)
    else:
        max_tokens = params.max_tokens
        if max_tokens < (0 if params.prompt_logprobs else 1):
            raise InvalidArgument(f"max_tokens must be >= 1 (got {max_tokens}; 0 only to score a prompt with "
                                  "echo and logprobs)", param="max_tokens")
        if max_tokens > room:
            raise InvalidArgument(
                f"max_tokens ({max_tokens}) + prompt ({prompt_len} tokens) exceeds the model's "
                f"context length ({model.context_length} tokens)"
            )
    temperature = _in_range("temperature", params.temperature, 1.0, 0.0, 2.0)
    top_p = _in_range("top_p", params.top_p, 1.0, 0.0, 1.0, low_open=True)
    repetition_penalty = _in_range("repetition_penalty", params.repetition_penalty, 1.0, 0.0, 10.0, low_open=True)
    vocab = len(model.tokenizer)
    if not 0 <= params.top_k <= vocab:
        raise InvalidArgument(f"top_k must be in [0, {vocab}] (the vocabulary size); got {params.top_k}")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=params.top_k,
        repetition_penalty=repetition_penalty,
        stop=_checked_stop(params.stop, settings),
        seed=params.seed,
        **_controls(params, max_tokens, vocab),
    )


MAX_LOGIT_BIAS, MAX_STOP_TOKEN_IDS, MAX_TOP_LOGPROBS = 300, 32, 20


def _controls(params: GenerateParams, max_tokens: int, vocab: int) -> dict:
    """The penalties, bias, min-p, min_tokens, stop ids and logprobs, checked."""
    if len(params.logit_bias) > MAX_LOGIT_BIAS:
        raise InvalidArgument(f"logit_bias holds at most {MAX_LOGIT_BIAS} entries", param="logit_bias")
    for token, bias in params.logit_bias.items():
        if not 0 <= token < vocab:
            raise InvalidArgument(f"logit_bias token {token} is not in [0, {vocab})", param="logit_bias")
        _in_range("logit_bias", bias, 0.0, -100.0, 100.0)
    if len(params.stop_token_ids) > MAX_STOP_TOKEN_IDS or not all(0 <= t < vocab for t in params.stop_token_ids):
        raise InvalidArgument(f"stop_token_ids: at most {MAX_STOP_TOKEN_IDS} ids, each in [0, {vocab})",
                              param="stop_token_ids")
    if not 0 <= params.min_tokens <= max_tokens:
        raise InvalidArgument(f"min_tokens must be in [0, max_tokens ({max_tokens})]; got {params.min_tokens}",
                              param="min_tokens")
    if not 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]; got {params.top_logprobs}",
                              param="top_logprobs")
    return {
        "presence_penalty": _in_range("presence_penalty", params.presence_penalty, 0.0, -2.0, 2.0),
        "frequency_penalty": _in_range("frequency_penalty", params.frequency_penalty, 0.0, -2.0, 2.0),
        "logit_bias": tuple(sorted((int(t), float(b)) for t, b in params.logit_bias.items())),
        "min_p": _in_range("min_p", params.min_p, 0.0, 0.0, 1.0),
        "min_tokens": params.min_tokens,
        "stop_token_ids": tuple(params.stop_token_ids),
        "ignore_eos": params.ignore_eos,
        "logprobs": params.logprobs,
        "top_logprobs": params.top_logprobs if params.logprobs else 0,
        "prompt_logprobs": params.prompt_logprobs,
    }


def _in_range(name: str, value: float | None, default: float, low: float, high: float, *, low_open=False) -> float:
    if value is None:
        return default
    low_ok = value > low if low_open else value >= low
    if not math.isfinite(value) or not low_ok or value > high:
        bracket = "(" if low_open else "["
        raise InvalidArgument(f"{name} must be a number in {bracket}{low:g}, {high:g}]; got {value}", param=name)
    return float(value)


def _checked_stop(stop: list[str], settings: GatewaySettings) -> tuple[str, ...]:
    if len(stop) > settings.max_stop_strings:
        raise InvalidArgument(f"at most {settings.max_stop_strings} stop strings are allowed (max_stop_strings)")
    for s in stop:
        if not s:
            raise InvalidArgument("stop strings must not be empty")
        if _utf8_len(s, "stop") > settings.max_stop_bytes:
            raise InvalidArgument(f"stop strings must be at most {settings.max_stop_bytes} bytes (max_stop_bytes)")
    return tuple(stop)
