"""Which request fields the OpenAI-compatible API honours: the classification the docs list.

A field is either honoured as OpenAI documents it, accepted because it cannot change the
output, or refused with a 400 whose `param` names it; never dropped without a word. Fields
this server does not implement are still accepted at their neutral value (what the SDKs and
LangChain send by default, e.g. `function_call: "none"`, `suffix: ""`), since those ask for
exactly what the server does. A field OpenAI does not define at all is refused, as OpenAI
refuses it. The protocol models (`protocol/`) enforce this; these sets name their fields, and
`tests/integration/gateway/test_request_fields.py` checks that they match the models and cover
the `openai` SDK's own request types, so a field added to the SDK cannot slip through.
"""

from __future__ import annotations

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
    False: _COMMON_HONOURED | {"prompt", "echo", "best_of"},
}

#: Accepted and ignored: they label, bill, route or cache a request but cannot change its text.
NO_EFFECT = {
    True: frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
                     "prompt_cache_retention", "prompt_cache_options", "parallel_tool_calls"}),
    False: frozenset({"user"}),
}

#: Defined by OpenAI, not implemented here: accepted only at their neutral values, else a 400.
NOT_IMPLEMENTED = {
    True: frozenset({"functions", "function_call", "modalities", "audio", "prediction", "reasoning_effort",
                     "verbosity", "web_search_options", "moderation"}),
    False: frozenset({"suffix"}),
}
