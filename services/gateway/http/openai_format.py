"""OpenAI request bodies -> GenerateParams, and events -> OpenAI response objects.

Plain functions, no web framework: the HTTP and WebSocket adapters share them. Every
type or shape error is InvalidArgument naming the field, like the domain's own checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmserve.common.errors import InvalidArgument, LLMServeError, bounded, http_status_for, openai_error_of

from ..admission.validation import GenerateParams
from ..streams.inflight import FinishEvent
from .request_fields import check_fields
from .structured_fields import constraint_of
from .tool_calls import Tools, parse_tools, render_messages
from .tool_calls import constraint as tool_constraint

_MAX_SEED = 2**64 - 1
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
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    check_fields(body, chat=chat)
    n = _opt(body, "n", int)
    params = GenerateParams(
        model=_opt(body, "model", str) or "",
        max_tokens=_opt(body, "max_completion_tokens", int)
        if chat and "max_completion_tokens" in body
        else _opt(body, "max_tokens", int),
        temperature=_opt(body, "temperature", float),
        top_p=_opt(body, "top_p", float),
        top_k=_opt(body, "top_k", int) or 0,
        repetition_penalty=_opt(body, "repetition_penalty", float),
        stop=_stop(body.get("stop")),
        seed=_seed(body.get("seed")),
        request_id=_opt(body, "request_id", str) or "",
        priority=_priority(body.get("priority")),
        resume_from_index=_opt(body, "resume_from_index", int),
        **_controls(body, chat),
    )
    params.constraint, params.constraint_param = constraint_of(body, chat=chat)
    tools = parse_tools(body) if chat else None
    if tools is not None and tools.forced:
        if params.constraint is not None:
            raise InvalidArgument("a required tool call cannot be combined with another output constraint",
                                  param="tool_choice")
        params.constraint, params.constraint_param = tool_constraint(tools), "tools"
    prompts = None
    if chat:
        params.messages = render_messages(_messages(body.get("messages")), tools)
    else:
        prompts = _prompts(body.get("prompt"))
    stream = bool(_opt(body, "stream", bool))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidArgument("stream_options must be an object")
    include_usage = bool(_opt(options or {}, "include_usage", bool))
    if prompts is not None and len(prompts) == 1:
        if isinstance(prompts[0], str):
            params.prompt = prompts[0]
        else:
            params.prompt_token_ids = prompts[0]
    echo = not chat and bool(_opt(body, "echo", bool))
    return OpenAIRequest(params, chat, stream, include_usage, n=1 if n is None else n, prompts=prompts,
                         echo=echo, tools=tools)


def _controls(body: dict, chat: bool) -> dict:
    """Penalties, bias, vLLM-style extras and the logprobs request, type-checked."""
    if chat:
        logprobs = bool(_opt(body, "logprobs", bool))
        top = _opt(body, "top_logprobs", int)
        if top is not None and not logprobs:
            raise InvalidArgument("top_logprobs requires logprobs: true", param="top_logprobs")
    else:
        top = _opt(body, "logprobs", int)
        if top is not None and not 0 <= top <= 5:
            raise InvalidArgument(f"logprobs must be an integer in [0, 5]; got {top}", param="logprobs")
        logprobs = top is not None
    echo = not chat and bool(_opt(body, "echo", bool))
    return {
        "prompt_logprobs": echo and logprobs,
        "presence_penalty": _opt(body, "presence_penalty", float),
        "frequency_penalty": _opt(body, "frequency_penalty", float),
        "logit_bias": _logit_bias(body.get("logit_bias")),
        "min_p": _opt(body, "min_p", float),
        "min_tokens": _opt(body, "min_tokens", int) or 0,
        "stop_token_ids": _int_list(body.get("stop_token_ids"), "stop_token_ids"),
        "ignore_eos": bool(_opt(body, "ignore_eos", bool)),
        "logprobs": logprobs,
        "top_logprobs": top or 0,
    }


def _logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("logit_bias must be an object of token id -> bias", param="logit_bias")
    out = {}
    for key, bias in value.items():
        token = str(key)
        if not token.isdigit() or len(token) > 9 or isinstance(bias, bool) or not isinstance(bias, int | float):
            raise InvalidArgument("logit_bias must map token ids (as strings) to numbers", param="logit_bias")
        out[int(token)] = float(bias)
    return out


def _int_list(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InvalidArgument(f"{name} must be a list of integers", param=name)
    return list(value)


def _opt(body: dict, name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python, JSON keeps them apart; an int is a fine float.
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise InvalidArgument(f"{name} must be a {_TYPE_NAMES[kind]}", param=name)
    return value


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise InvalidArgument("stop must be a string or a list of strings")


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SEED:
        raise InvalidArgument("seed must be an integer in [0, 2^64-1]")
    return value


def _priority(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value in _PRIORITIES:
        return _PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # validation names the allowed values
    raise InvalidArgument("priority must be low, normal or high")


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list):
        raise InvalidArgument("messages must be a list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidArgument(f"messages[{i}] must be an object with a string role")
        message = {"role": m["role"], "content": _content(m.get("content"), i)}
        calls = m.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise InvalidArgument(f"messages[{i}].tool_calls must be a list of tool calls")
        if calls and m["role"] == "assistant":
            message["tool_calls"] = calls
        if m["role"] == "tool":
            message["tool_call_id"] = str(m.get("tool_call_id") or "")
        out.append(message)
    return out


def _content(value: Any, i: int) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # The content-parts form: only text parts are served by a text model.
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise InvalidArgument(f"messages[{i}].content must be a string or a list of text parts")


def _prompts(value: Any) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(_is_int(v) for v in value):
            return [list(value)]
        if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
            return [list(v) for v in value]
    raise InvalidArgument("prompt must be a string, a list of strings, a list of token ids or a list of "
                          "lists of token ids (none empty)", param="prompt")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def usage(finish: FinishEvent) -> dict:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


def error_body(error: LLMServeError) -> tuple[int, dict]:
    """(HTTP status, OpenAI-shaped error object) for a domain error."""
    kind, code = openai_error_of(error)
    return http_status_for(error), {
        "error": {"message": bounded(error.message), "type": kind, "code": code,
                  "param": getattr(error, "param", None)}
    }
