"""The protocol models' parse: strict types, unknown fields refused, the 400's param a field path."""

from __future__ import annotations

import pytest

from llmserve.common.errors import InvalidArgument
from llmserve.gateway.http.openai_format import parse_request
from llmserve.gateway.http.protocol import ChatCompletionRequest, CompletionRequest, parse

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refused(body: dict, chat: bool = True) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        parse_request(body, chat=chat)
    return caught.value


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"max_tokens": True}, "max_tokens", "must be an integer"),
    ({"max_tokens": "9"}, "max_tokens", "must be an integer"),
    ({"max_tokens": 9.0}, "max_tokens", "must be an integer"),
    ({"temperature": "hot"}, "temperature", "must be a number"),
    ({"stream": "yes"}, "stream", "must be a boolean"),
    ({"seed": 2**64}, "seed", "[0, 2^64-1]"),
    ({"stop": [1]}, "stop", "a string or a list of strings"),
    ({"min_pp": 0.1}, "min_pp", "unrecognized request argument 'min_pp' for chat completions"),
    ({"messages": [{"role": "user", "content": "x", "x": 1}]}, "messages[0].x", "unrecognized field"),
    ({"messages": [{"role": "user"}, {"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[1].content", "text parts"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": {}}]}]},
     "messages[1].tool_calls[0].function.name", "is required"),
    ({"logit_bias": {"7": "x"}}, "logit_bias", "token ids"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage", "must be a boolean"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name", "is required"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "is required"),
    ({"audio": {"voice": "alloy"}}, "audio", "only its default"),
    ({"x" * 500: 1}, "x" * 100, "unrecognized"),
])
def test_a_body_that_does_not_fit_names_the_field(fields, param, words):
    error = refused(CHAT | fields)
    assert error.param == param and words in error.message, (error.param, error.message)
    assert "validation error" not in error.message and "input_value" not in error.message


def test_completion_fields_and_best_of():
    assert refused({"model": "m", "prompt": "x", "suffix": "y"}, chat=False).param == "suffix"
    assert refused({"model": "m", "prompt": "x", "messages": []}, chat=False).param == "messages"
    assert refused({"model": "m", "prompt": [[1], []]}, chat=False).param == "prompt"
    for extra in ({"n": 3, "best_of": 2}, {"best_of": 2, "stream": True}, {"best_of": 0}):
        assert refused({"model": "m", "prompt": "x"} | extra, chat=False).param == "best_of", extra
    ranked = parse_request({"model": "m", "prompt": "x", "n": 2, "best_of": 3}, chat=False)
    assert (ranked.n, ranked.best_of, ranked.ranking_logprobs, ranked.params.logprobs) == (2, 3, True, True)
    shown = parse_request({"model": "m", "prompt": "x", "best_of": 3, "logprobs": 1}, chat=False)
    assert not shown.ranking_logprobs and shown.params.top_logprobs == 1
    assert parse_request({"model": "m", "prompt": "x", "n": 2}, chat=False).best_of == 2
    prompts = [CompletionRequest.model_validate({"prompt": p}).prompt_list()
               for p in ("a", ["a", "b"], [1, 2], [[1], [2, 3]])]
    assert prompts == [["a"], ["a", "b"], [[1, 2]], [[1], [2, 3]]]


def test_what_is_accepted_becomes_the_request():
    body = CHAT | {"max_tokens": 3, "max_completion_tokens": 5, "temperature": 1, "user": "u", "metadata": {"k": "v"},
                   "messages": [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text",
                                                                                                   "text": "brief."}]},
                                {"role": "user", "content": "hi", "name": "ann"}],
                   "functions": [], "function_call": "none", "stop": "x", "logit_bias": {"7": -100}}
    request = parse_request(body, chat=True)
    assert request.params.max_tokens == 5 and request.params.temperature == 1.0
    assert request.params.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert request.params.stop == ["x"] and request.params.logit_bias == {7: -100.0}
    assert parse(ChatCompletionRequest, CHAT, "chat completions").model_fields_set == {"model", "messages"}
