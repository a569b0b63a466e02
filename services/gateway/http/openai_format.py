"""OpenAI request bodies -> GenerateParams, and events -> OpenAI response objects.

Plain functions, no web framework: the HTTP and WebSocket adapters share them. Every
type or shape error is InvalidArgument naming the field, like the domain's own checks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from llmserve.common.errors import InvalidArgument, LLMServeError, bounded, http_status_for, openai_error_of

from ..admission.validation import GenerateParams
from ..streams.inflight import FinishEvent, TokenEvent
from .request_fields import check_fields
from .structured_fields import constraint_of
from .tool_calls import CallBuffer, Tools, parse_calls, parse_tools, render_messages
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
    if n not in (None, 1):
        raise InvalidArgument("n must be 1 (one choice per request)", param="n")
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
    )
    params.constraint, params.constraint_param = constraint_of(body, chat=chat)
    tools = parse_tools(body) if chat else None
    if tools is not None and tools.forced:
        if params.constraint is not None:
            raise InvalidArgument("a required tool call cannot be combined with another output constraint",
                                  param="tool_choice")
        params.constraint, params.constraint_param = tool_constraint(tools), "tools"
    if chat:
        params.messages = render_messages(_messages(body.get("messages")), tools)
    else:
        params.prompt = _prompt(body.get("prompt"))
    stream = bool(_opt(body, "stream", bool))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidArgument("stream_options must be an object")
    include_usage = bool(_opt(options or {}, "include_usage", bool))
    return OpenAIRequest(params, chat, stream, include_usage, tools)


def _opt(body: dict, name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python, JSON keeps them apart; an int is a fine float.
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise InvalidArgument(f"{name} must be a {_TYPE_NAMES[kind]}")
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


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise InvalidArgument("prompt must be a string (or a list holding one string)")
    return value


class ResponseBuilder:
    """Shapes events of one request as OpenAI objects (whole or as stream chunks)."""

    def __init__(self, request: OpenAIRequest, request_id: str, model: str):
        self.chat = request.chat
        self.include_usage = request.include_usage
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + request_id
        self.model = model
        self.created = int(time.time())
        self.tools = request.tools
        self.calls = CallBuffer(request.tools) if request.tools is not None else None

    def _base(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if chunk and self.chat else ""
        )
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: FinishEvent) -> dict:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish.reason, "logprobs": None}
        calls = parse_calls(text, self.tools) if self.tools is not None and finish.reason == "stop" else None
        if calls:
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
            choice["finish_reason"] = "tool_calls"
        elif self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self._base(False), "choices": [choice], "usage": usage(finish)}

    def chunk(self, event: TokenEvent) -> dict | None:
        """A token chunk; None when a possible tool call holds the text back."""
        text = event.text
        if self.calls is not None:
            text = self.calls.feed(text)
            if not text:
                return None
        return self._chunk_of(text)

    def final_chunks(self, finish: FinishEvent) -> list[dict]:
        """The finish chunk, and usage: in its own chunk when asked (as OpenAI does), else in the last one."""
        held = self._held_chunks(finish)
        last = self._chunk_of("")
        last["choices"][0]["finish_reason"] = "tool_calls" if held and "tool_calls" in held[-1]["choices"][0][
            "delta"] else finish.reason
        if self.chat:
            last["choices"][0]["delta"] = {}
        if not self.include_usage:
            return [*held, {**last, "usage": usage(finish)}]
        return [*held, {**last, "usage": None}, {**self._base(True), "choices": [], "usage": usage(finish)}]

    def role_chunk(self) -> dict:
        """The chat stream's first chunk: the assistant role announcement."""
        return {**self._base(True), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None, "logprobs": None}]}

    def _chunk_of(self, text: str) -> dict:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": None, "logprobs": None}
        return {**self._base(True), "choices": [choice]}

    def _held_chunks(self, finish: FinishEvent) -> list[dict]:
        """What a tool-call buffer still holds at the end: content, or the calls as one delta each."""
        if self.calls is None:
            return []
        text, calls = self.calls.finish()
        if calls and finish.reason == "stop":
            chunk = self._chunk_of("")
            chunk["choices"][0]["delta"] = {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}
            return [chunk]
        if calls:  # ended by length: what was made is content after all
            text = self.calls.held
        return [self._chunk_of(text)] if text else []


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
