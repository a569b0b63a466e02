"""Every field of the `openai` SDK's own request types is honoured, harmless, or a 400 naming it.

The lists come from the installed SDK (its TypedDicts), so a field a new SDK version adds
fails `test_every_sdk_field_is_classified` until someone decides what it does here.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params

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
ASKING_COMPLETION = {"best_of": 2, "suffix": "x"}


def sdk_fields(params_module) -> set[str]:
    return set(params_module.CompletionCreateParamsBase.__annotations__) | {"stream"}


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def test_every_sdk_field_is_classified():
    for chat, module in ((True, chat_params), (False, completion_params)):
        known = HONOURED[chat] | NO_EFFECT[chat] | set(NOT_IMPLEMENTED[chat])
        assert sdk_fields(module) - known == set(), f"unclassified {'chat' if chat else 'completion'} fields"
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
