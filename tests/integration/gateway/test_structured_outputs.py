"""Structured outputs and tool calling through the HTTP API, with the `openai` SDK and the real model.

In-process stack (gateway -> Redis -> scheduler -> worker) around the real SmolLM2-135M
engine. The schema set is `tests/data/json_schemas/schemas.json` (120 shapes); the default run
takes every 10th, the slow-marked run all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import jsonschema
import openai
import pytest

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.support.stack import API_KEY, MODEL, running_stack

SCHEMAS = json.loads((Path(__file__).parents[2] / "data" / "json_schemas" / "schemas.json").read_text())
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}},
]


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


@pytest.fixture(scope="module")
def engine(catalog):
    return LLMEngine.from_pretrained(catalog.get(MODEL).path, device="cpu", max_num_seqs=16, num_kv_blocks=2048)


def _client(stack) -> openai.AsyncOpenAI:
    base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
    return openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=300)


async def _schema_outputs(client, schemas) -> None:
    import asyncio

    async def one(entry):
        reply = await client.chat.completions.create(
            model=MODEL, max_tokens=300, temperature=0,
            messages=[{"role": "user", "content": f"Give an example {entry['name'].split('_')[0]} as JSON."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": entry["name"], "schema": entry["schema"], "strict": True}},
        )
        text = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop", (entry["name"], text)
        jsonschema.validate(json.loads(text), entry["schema"])

    for i in range(0, len(schemas), 8):  # eight at a time: batched, and modest on a shared box
        await asyncio.gather(*(one(e) for e in schemas[i : i + 8]))


async def test_json_schema_outputs_parse_and_validate(redis_url, catalog, engine):
    async with running_stack(redis_url, [engine], catalog) as stack:
        await _schema_outputs(_client(stack), SCHEMAS[::10])


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.timeout(1800)
async def test_every_shipped_schema_is_obeyed(redis_url, catalog, engine):
    assert len(SCHEMAS) >= 100
    async with running_stack(redis_url, [engine], catalog) as stack:
        await _schema_outputs(_client(stack), SCHEMAS)


async def test_json_object_choice_regex_and_grammar(redis_url, catalog, engine):
    async with running_stack(redis_url, [engine], catalog) as stack:
        client = _client(stack)
        ask = [{"role": "user", "content": "Describe a cat."}]
        reply = await client.chat.completions.create(model=MODEL, messages=ask, max_tokens=120, temperature=0,
                                                     response_format={"type": "json_object"})
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
        reply = await client.chat.completions.create(model=MODEL, messages=ask, max_tokens=10,
                                                     extra_body={"structured_outputs": {"choice": ["cute", "scary"]}})
        assert reply.choices[0].message.content in ("cute", "scary")
        text = await client.completions.create(model=MODEL, prompt="A phone number:", max_tokens=20,
                                               extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}})
        assert len(text.choices[0].text) == 8 and text.choices[0].text[3] == "-"
        reply = await client.chat.completions.create(
            model=MODEL, messages=ask, max_tokens=10,
            extra_body={"structured_outputs": {"grammar": 'root ::= "purr" ("!" | "?")'}})
        assert reply.choices[0].message.content in ("purr!", "purr?")
        chunks = [c async for c in await client.chat.completions.create(
            model=MODEL, messages=ask, max_tokens=120, temperature=0, stream=True,
            response_format={"type": "json_object"})]  # greedy: the same object as above, streamed
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), dict)


async def test_invalid_constraints_are_a_400_naming_the_field(redis_url, catalog, engine):
    async with running_stack(redis_url, [engine], catalog) as stack:
        client = _client(stack)
        ask = [{"role": "user", "content": "hi"}]
        cases = [
            ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frog"}}}},
             "response_format.json_schema.schema"),
            ({"response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "integer", "minimum": "zero"}}}}, "response_format.json_schema.schema"),
            ({"response_format": {"type": "yaml"}}, "response_format.type"),
            ({"structured_outputs": {"regex": "(("}}, "structured_outputs.regex"),
            ({"structured_outputs": {"grammar": "root ::= nothing"}}, "structured_outputs.grammar"),
            ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
            ({"structured_outputs": {"pattern": "a"}}, "structured_outputs"),
            ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ]
        for extra, param in cases:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model=MODEL, messages=ask, max_tokens=5, extra_body=extra)
            assert caught.value.param == param, (extra, caught.value.body)
        # The gRPC API checks the same way.
        async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            meta = (("authorization", f"Bearer {API_KEY}"),)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="x", structured_output=pb.StructuredOutput(
                    json_schema='{"type": "frog"}')), metadata=meta)
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            ok = await stub.Generate(pb.GenerateRequest(
                model=MODEL, prompt="Age:", max_tokens=10, temperature=0,
                structured_output=pb.StructuredOutput(json_schema='{"type":"integer","minimum":1,"maximum":99}')),
                metadata=meta)
            assert 1 <= int(ok.text) <= 99


async def test_two_turn_tool_conversation_with_required_choice(redis_url, catalog, engine):
    async with running_stack(redis_url, [engine], catalog) as stack:
        client = _client(stack)
        messages = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
        first = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                                     tool_choice="required", max_tokens=80, temperature=0)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        args = json.loads(call.function.arguments)
        schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call.function.name]
        jsonschema.validate(args, schema)
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
        ]
        stream = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                                      max_tokens=40, temperature=0, stream=True)
        chunks = [c async for c in stream]
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(pieces) > 1 and "".join(pieces).strip()  # the final answer really streamed
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


async def test_named_tool_call_streams_as_openai_deltas(redis_url, catalog, engine):
    async with running_stack(redis_url, [engine], catalog) as stack:
        client = _client(stack)
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Time in Tokyo?"}], tools=TOOLS, stream=True,
            tool_choice={"type": "function", "function": {"name": "get_time"}}, max_tokens=60, temperature=0)
        chunks = [c async for c in stream]
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls and calls[0].function.name == "get_time" and calls[0].id.startswith("call_")
        args = json.loads("".join(tc.function.arguments or "" for tc in calls))
        assert isinstance(args.get("city"), str)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        assert not any(c.choices[0].delta.content for c in chunks if c.choices)
