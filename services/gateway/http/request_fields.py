"""Which request fields the OpenAI-compatible API honours, and the 400 for the rest.

A field is either honoured as OpenAI documents it, accepted because it cannot change the
output, or refused with a 400 whose `param` names it; never dropped without a word. Fields this
server does not implement yet are still accepted at their neutral value (what the SDKs and
LangChain send by default, e.g. `presence_penalty: 0`, `logprobs: false`), since those ask for
exactly what the server does. A field OpenAI does not define at all is refused, as OpenAI
refuses it. `tests/integration/gateway/test_request_fields.py` walks the `openai` SDK's own
request types so a field added to the SDK cannot slip through unclassified.
"""

from __future__ import annotations

from typing import Any

from llmserve.common.errors import InvalidArgument

_COMMON_HONOURED = frozenset({
    "model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    # llmserve extensions (vLLM's names where vLLM has them; documented in docs/backend.md)
    "top_k", "repetition_penalty", "request_id", "priority", "min_p", "min_tokens", "stop_token_ids",
    "ignore_eos", "resume_from_index", "structured_outputs",
})
HONOURED = {
    True: _COMMON_HONOURED | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                              "tool_choice"},
    False: _COMMON_HONOURED | {"prompt", "echo"},
}

#: Accepted and ignored: they label, bill, route or cache a request but cannot change its text.
NO_EFFECT = {
    True: frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
                     "prompt_cache_retention", "prompt_cache_options", "parallel_tool_calls"}),
    False: frozenset({"user"}),
}

_ANY_FALSY = object()  # neutral: null, false, 0, "", [] or {}

#: Defined by OpenAI, not implemented here: accepted only at the neutral values listed.
NOT_IMPLEMENTED: dict[bool, dict[str, tuple[Any, ...]]] = {
    True: {
        "functions": (_ANY_FALSY,), "function_call": (None, "none"),
        "modalities": (None, ["text"]), "audio": (None,),
        "prediction": (None,), "reasoning_effort": (None,), "verbosity": (None,),
        "web_search_options": (None,), "moderation": (None,),
    },
    False: {
        "best_of": (None, 1), "suffix": (None, ""),
    },
}


def check_fields(body: dict, *, chat: bool) -> None:
    """Raise InvalidArgument (with `param`) for the first field this server would not honour."""
    honoured, ignored, partial = HONOURED[chat], NO_EFFECT[chat], NOT_IMPLEMENTED[chat]
    for name, value in body.items():
        if name in honoured or name in ignored:
            continue
        if name in partial:
            if not _neutral(value, partial[name]):
                raise InvalidArgument(f"{name} is not supported by this server (only its default is accepted)",
                                      param=name)
            continue
        endpoint = "chat completions" if chat else "completions"
        raise InvalidArgument(f"unrecognized request argument {name!r} for {endpoint}"[:200], param=name[:100])


def _neutral(value: Any, allowed: tuple[Any, ...]) -> bool:
    if value is None:
        return True  # null is "unset" for every nullable OpenAI field
    if _ANY_FALSY in allowed and value in (False, 0, "", [], {}):
        return True
    return any(a is not _ANY_FALSY and value == a for a in allowed)
