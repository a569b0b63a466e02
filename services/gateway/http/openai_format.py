"""OpenAI request bodies -> GenerateParams, and events -> OpenAI response objects.

Plain functions, no web framework: the HTTP and WebSocket adapters share them. The body is
parsed by the protocol models (types, shapes, unknown fields: an InvalidArgument naming the
field path); what the models cannot say (one field needing another) is checked here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmserve.common.errors import InvalidArgument, LLMServeError, bounded, http_status_for, openai_error_of

from ..admission.validation import GenerateParams
from ..choices import MAX_N
from ..streams.inflight import FinishEvent
from .protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ErrorBody,
    ErrorInfo,
    Usage,
    parse,
)
from .protocol.sampling import SamplingRequest
from .structured_fields import constraint_of
from .tool_calls import Tools, parse_tools, render_messages
from .tool_calls import constraint as tool_constraint

_PRIORITIES = {"low": 1, "normal": 2, "high": 3}


@dataclass
class OpenAIRequest:
    """A parsed chat or text completion request."""

    params: GenerateParams
    chat: bool
    stream: bool
    include_usage: bool
    tools: Tools | None = None  # tool calling (chat): the completion is read back as calls
    n: int = 1  # choices per prompt
    best_of: int = 1  # completions: candidates generated per prompt (>= n; the n most likely are returned)
    ranking_logprobs: bool = False  # logprobs computed only to rank best_of candidates, not returned
    echo: bool = False  # completions: the prompt comes back before the completion
    prompts: list[str | list[int]] | None = None  # completions: one or more prompts


def parse_body(raw: bytes, *, chat: bool) -> OpenAIRequest:
    return parse_request(json_object(raw, "the request body"), chat=chat)


def json_object(raw: bytes | str, what: str) -> dict:
    """A JSON object from a client; anything else (not JSON, nested too deep for the parser,
    not an object) is an InvalidArgument naming `what`."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} must be a JSON object") from e
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return body


def parse_request(body: Any, *, chat: bool) -> OpenAIRequest:
    """A decoded body as a request: typed by the protocol models, then as GenerateParams."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    if chat:
        return _chat(parse(ChatCompletionRequest, body, "chat completions"))
    return _completion(parse(CompletionRequest, body, "completions"))


def _chat(req: ChatCompletionRequest) -> OpenAIRequest:
    logprobs = bool(req.logprobs)
    if req.top_logprobs is not None and not logprobs:
        raise InvalidArgument("top_logprobs requires logprobs: true", param="top_logprobs")
    # max_completion_tokens is OpenAI's newer name: when present (even null) it is the one read.
    max_tokens = req.max_completion_tokens if "max_completion_tokens" in req.model_fields_set else req.max_tokens
    params = _params(req, max_tokens, logprobs=logprobs, top_logprobs=req.top_logprobs or 0)
    params.constraint, params.constraint_param = constraint_of(req.response_format, req.structured_outputs)
    tools = parse_tools(req.tools, req.tool_choice)
    if tools is not None and tools.forced:
        if params.constraint is not None:
            raise InvalidArgument("a required tool call cannot be combined with another output constraint",
                                  param="tool_choice")
        params.constraint, params.constraint_param = tool_constraint(tools), "tools"
    params.messages = render_messages(message_dicts(req.messages), tools)
    return OpenAIRequest(params, True, bool(req.stream), _include_usage(req), tools=tools, n=_n(req),
                         best_of=_n(req))


def _completion(req: CompletionRequest) -> OpenAIRequest:
    top = req.logprobs
    if top is not None and not 0 <= top <= 5:
        raise InvalidArgument(f"logprobs must be an integer in [0, 5]; got {top}", param="logprobs")
    echo = bool(req.echo)
    n, best_of = _n(req), _best_of(req)
    ranking = best_of > n and top is None
    params = _params(req, req.max_tokens, logprobs=top is not None or ranking, top_logprobs=top or 0,
                     prompt_logprobs=echo and top is not None)
    params.constraint, params.constraint_param = constraint_of(None, req.structured_outputs)
    prompts = req.prompt_list()
    if len(prompts) == 1:
        if isinstance(prompts[0], str):
            params.prompt = prompts[0]
        else:
            params.prompt_token_ids = prompts[0]
    return OpenAIRequest(params, False, bool(req.stream), _include_usage(req), n=n, echo=echo, prompts=prompts,
                         best_of=best_of, ranking_logprobs=ranking)


def _params(req: SamplingRequest, max_tokens: int | None, **logprobs: Any) -> GenerateParams:
    return GenerateParams(
        model=req.model or "",
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k or 0,
        repetition_penalty=req.repetition_penalty,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or ()),
        seed=req.seed,
        request_id=req.request_id or "",
        priority=_priority(req.priority),
        resume_from_index=req.resume_from_index,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias={int(token): bias for token, bias in (req.logit_bias or {}).items()},
        min_p=req.min_p,
        min_tokens=req.min_tokens or 0,
        stop_token_ids=list(req.stop_token_ids or ()),
        ignore_eos=bool(req.ignore_eos),
        **logprobs,
    )


def _n(req: SamplingRequest) -> int:
    return 1 if req.n is None else req.n  # its range is checked with the prompts (choices.expand)


def _best_of(req: CompletionRequest) -> int:
    """Candidates per prompt: `best_of`, or `n` when it is not given."""
    if req.best_of is None:
        return _n(req)
    if not 1 <= req.best_of <= MAX_N:
        raise InvalidArgument(f"best_of must be in [1, {MAX_N}]; got {req.best_of}", param="best_of")
    if req.best_of < _n(req):
        raise InvalidArgument(f"best_of ({req.best_of}) must be at least n ({_n(req)})", param="best_of")
    if req.stream and req.best_of > 1:
        raise InvalidArgument("best_of cannot be streamed (the best candidates are known only at the end)",
                              param="best_of")
    return req.best_of


def _include_usage(req: SamplingRequest) -> bool:
    return req.stream_options is not None and bool(req.stream_options.include_usage)


def _priority(value: str | int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value  # validation names the allowed values
    if value in _PRIORITIES:
        return _PRIORITIES[value]
    raise InvalidArgument("priority must be low, normal or high", param="priority")


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    """The history as plain dicts (role, text content; an assistant's calls, a tool result's call id)."""
    out = []
    for m in messages:
        # A developer message is OpenAI's newer name for system instructions.
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls and m.role == "assistant":
            message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.role == "tool":
            message["tool_call_id"] = m.tool_call_id or ""
        out.append(message)
    return out


def usage(finish: FinishEvent) -> Usage:
    return Usage(prompt_tokens=finish.prompt_tokens, completion_tokens=finish.completion_tokens,
                 total_tokens=finish.prompt_tokens + finish.completion_tokens)


def error_body(error: LLMServeError) -> tuple[int, dict]:
    """(HTTP status, OpenAI-shaped error object) for a domain error."""
    kind, code = openai_error_of(error)
    info = ErrorInfo(message=bounded(error.message), type=kind, code=code, param=getattr(error, "param", None))
    return http_status_for(error), ErrorBody(error=info).model_dump()
