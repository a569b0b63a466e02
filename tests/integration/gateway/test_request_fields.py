"""Every field of the `openai` SDK's own request types is honoured, harmless, or a 400 naming it.

The lists come from the installed SDK (its TypedDicts), so a field a new SDK version adds
fails `test_every_sdk_field_is_classified` (top level) or `test_sdk_nested_types_match_the_models`
(messages, tools, formats) until someone decides what it does here.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params

from llmserve.gateway.http.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, ErrorBody
from llmserve.gateway.http.protocol import chat as chat_models
from llmserve.gateway.http.protocol.sampling import StreamOptions
from llmserve.gateway.http.request_fields import HONOURED, NO_EFFECT, NOT_IMPLEMENTED
from llmserve.gateway.routing.catalog import ModelCatalog
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

MESSAGES = [{"role": "user", "content": "Hello there"}]
#: A value that asks for something this server does not do, per not-implemented field.
ASKING = {
    "functions": [{"name": "f"}],
    "function_call": "auto", "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"}, "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "low", "verbosity": "low", "web_search_options": {}, "moderation": {},
}
ASKING_COMPLETION = {"suffix": "x"}
#: Fields of the SDK's nested types that this server refuses (a 400 naming them).
REFUSED_NESTED = {"ChatCompletionAssistantMessageParam": {"audio", "function_call"}}


def sdk_fields(params_module) -> set[str]:
    return set(params_module.CompletionCreateParamsBase.__annotations__) | {"stream"}


def model_fields(model) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def test_every_sdk_field_is_classified():
    for chat, module, model in ((True, chat_params, ChatCompletionRequest), (False, completion_params,
                                                                             CompletionRequest)):
        known = HONOURED[chat] | NO_EFFECT[chat] | set(NOT_IMPLEMENTED[chat])
        assert sdk_fields(module) - known == set(), f"unclassified {'chat' if chat else 'completion'} fields"
        # The model reads exactly the classified fields (and refuses every other one).
        assert model_fields(model) == known, model.__name__
        assert model.model_config["extra"] == "forbid"


def test_sdk_nested_types_match_the_models():
    """The SDK's message, tool, format and option types: every key is a field of our model or refused."""
    from openai.types import shared_params
    from openai.types.chat import (
        ChatCompletionContentPartTextParam,
        ChatCompletionFunctionToolParam,
        ChatCompletionMessageToolCallParam,
        ChatCompletionNamedToolChoiceParam,
        ChatCompletionStreamOptionsParam,
    )
    from openai.types.shared_params.response_format_json_schema import JSONSchema

    messages = [t for t in chat_params.ChatCompletionMessageParam.__args__ if t.__name__ != "ChatCompletionFunctionMessageParam"]
    pairs = [(t, ChatMessage) for t in messages] + [
        (ChatCompletionContentPartTextParam, chat_models.TextPart),
        (ChatCompletionMessageToolCallParam, chat_models.ToolCallIn),
        (ChatCompletionFunctionToolParam, chat_models.Tool),
        (shared_params.FunctionDefinition, chat_models.FunctionDefinition),
        (ChatCompletionNamedToolChoiceParam, chat_models.NamedToolChoice),
        (shared_params.ResponseFormatJSONSchema, chat_models.ResponseFormat),
        (JSONSchema, chat_models.JsonSchemaFormat),
        (ChatCompletionStreamOptionsParam, StreamOptions),
    ]
    for sdk, model in pairs:
        refused = REFUSED_NESTED.get(sdk.__name__, set())
        assert set(sdk.__annotations__) - refused - model_fields(model) == set(), (sdk.__name__, model.__name__)
        assert model.model_config["extra"] == "forbid"
    roles = {t.__annotations__["role"].__forward_arg__.split("'")[1] for t in messages}
    assert roles == set(ChatMessage.model_fields["role"].annotation.__args__), "a role the SDK sends"
    assert set(NOT_IMPLEMENTED[True]) == set(ASKING)
    assert set(NOT_IMPLEMENTED[False]) == set(ASKING_COMPLETION)


async def test_each_unimplemented_field_is_a_400_naming_it(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0)
        for name, value in ASKING.items():
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2,
                                                     extra_body={name: value})
            assert caught.value.param == name, (name, caught.value.body)
        for name, value in ASKING_COMPLETION.items():
            with pytest.raises(openai.BadRequestError) as caught:
                await client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, extra_body={name: value})
            assert caught.value.param == name, (name, caught.value.body)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"min_pp": 0.1})
        assert caught.value.param == "min_pp" and "unrecognized" in caught.value.message


#: (path, body fields, the param the 400 names): unknown fields and wrong types, nested.
NESTED = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, "messages[0].colour"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "audio": {}}]},
     "messages[1].audio"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, {
        "role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": 5}}]}]},
     "messages[1].tool_calls[0].function.name"),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True, "every": 2}},
     "stream_options.every"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {}, "stict": True}}}, "response_format.json_schema.stict"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ("/v1/chat/completions", {"top_logprobs": 2.5, "logprobs": True}, "top_logprobs"),
    ("/v1/chat/completions", {"structured_outputs": {"choice": ["a", 1]}}, "structured_outputs.choice[1]"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ("/v1/completions", {"prompt": "x", "echo": 1}, "echo"),
    ("/v1/completions", {"prompt": "x", "messages": []}, "messages"),
]


async def test_unknown_and_mistyped_nested_fields_are_a_400_naming_their_path(redis_url, catalog):
    """OpenAI's error body, `param` the field's path, a message of our own (not pydantic's dump)."""
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}"
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for path, fields, param in NESTED:
                body = {"model": MODEL, "max_tokens": 2} | ({"messages": MESSAGES} if "chat" in path else {}) | fields
                reply = await http.post(path, headers=headers, json=body)
                assert reply.status_code == 400, (param, reply.text)
                error = ErrorBody.model_validate_json(reply.content).error
                assert error.param == param and error.type == "invalid_request_error", (param, reply.text)
                assert error.message.startswith(param) or param in error.message, (param, error.message)
                assert not any(w in error.message for w in ("validation error", "input_value", "pydantic")), error
            extra = await http.post("/tokenize", headers=headers,
                                    json={"model": MODEL, "messages": [{"role": "user", "content": "x", "y": 1}]})
            assert extra.status_code == 400 and extra.json()["error"]["param"] == "messages[0].y"


async def test_neutral_values_and_harmless_fields_are_served(redis_url, catalog):
    """What the SDKs and LangChain send by default asks for nothing this server lacks."""
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0)
        plain = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        neutral = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=3, n=1, presence_penalty=0, frequency_penalty=0.0,
            logprobs=False, logit_bias={}, tools=[], tool_choice="none", response_format={"type": "text"},
            user="u1", metadata={"k": "v"}, store=False, service_tier="auto", parallel_tool_calls=True,
        )
        assert neutral.choices[0].message.content == plain.choices[0].message.content
        text = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, echo=False, best_of=1,
                                               suffix=None, logprobs=None, user="u1")
        assert text.choices[0].text


async def test_bodies_that_are_not_json_objects_are_refused(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}"
        headers = {"authorization": f"Bearer {API_KEY}"}
        deep = "[" * 100_000 + "]" * 100_000
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            reply = await http.post("/v1/chat/completions", headers=headers | {"content-type": "application/json"},
                                    content=deep)
            assert reply.status_code == 400 and "nested too deeply" in reply.json()["error"]["message"]
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            for media in ("text/plain", "application/x-www-form-urlencoded"):
                reply = await http.post("/v1/chat/completions", headers=headers | {"content-type": media},
                                        content=body)
                assert reply.status_code == 415, (media, reply.text)
                assert reply.json()["error"]["param"] == "content-type"
            reply = await http.post("/v1/chat/completions", headers=headers | {"content-type": "application/json"},
                                    content=body)
            assert reply.status_code == 200


async def test_tokenize_and_detokenize_round_trip_with_the_model_tokenizer(redis_url, catalog):
    model = catalog.get(MODEL)
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}"
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            reply = await http.post("/tokenize", headers=headers, json={"model": MODEL, "prompt": "Hello, world"})
            assert reply.status_code == 200, reply.text
            tokens = reply.json()["tokens"]
            assert tokens == model.encode_prompt("Hello, world") and reply.json()["count"] == len(tokens)
            assert reply.json()["max_model_len"] == model.context_length
            chat = await http.post("/tokenize", headers=headers, json={"model": MODEL, "messages": MESSAGES})
            assert chat.json()["tokens"] == model.encode_chat(MESSAGES)
            back = await http.post("/detokenize", headers=headers, json={"model": MODEL, "tokens": tokens})
            assert back.json()["prompt"] == model.tokenizer.decode(tokens)
            for body, param in (({"model": MODEL, "tokens": [10**9]}, "tokens"),
                                ({"model": MODEL, "prompt": "x", "extra": 1}, "extra")):
                path = "/detokenize" if "tokens" in body else "/tokenize"
                bad = await http.post(path, headers=headers, json=body)
                assert bad.status_code == 400 and bad.json()["error"]["param"] == param
            unauthenticated = await http.post("/tokenize", json={"model": MODEL, "prompt": "x"})
            assert unauthenticated.status_code == 401
