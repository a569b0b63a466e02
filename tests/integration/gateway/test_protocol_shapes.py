"""What the HTTP API sends fits the protocol models, whole and chunk by chunk, with the real model.

Stream chunks are built as plain dicts for speed (response_builder), so this is where their
shape is held to `ChatCompletionChunk` / `CompletionResponse`: every chunk of streams with
logprobs, n > 1, usage, echo and tool calls is validated (unknown keys refused), and so is
each whole response and the error body.
"""

from __future__ import annotations

import json

import httpx
import pytest

from llmserve.gateway.http.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionResponse,
    ErrorBody,
    ResponseModel,
)
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.support.stack import API_KEY, MODEL, running_stack

HEADERS = {"authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
    "additionalProperties": False}}}]


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


@pytest.fixture(scope="module")
def engine(catalog):
    return LLMEngine.from_pretrained(catalog.get(MODEL).path, device="cpu", max_num_seqs=8, num_kv_blocks=512)


async def streamed(http: httpx.AsyncClient, path: str, body: dict, model: type[ResponseModel]) -> list:
    """Every `data:` chunk of a stream, each validated against `model`."""
    chunks = []
    async with http.stream("POST", path, headers=HEADERS, json=body | {"stream": True}) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(model.model_validate_json(line[len("data: "):]))
    assert chunks
    return chunks


async def test_streamed_chunks_and_whole_responses_fit_the_models(redis_url, catalog, engine):
    async with (
        running_stack(redis_url, [engine], catalog) as stack,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.gateway.service.http_port}", timeout=120) as http,
    ):
        chat = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
        chunks = await streamed(http, "/v1/chat/completions", chat | {
            "n": 2, "logprobs": True, "top_logprobs": 2, "seed": 3, "stream_options": {"include_usage": True}},
            ChatCompletionChunk)
        entries = [e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
        assert len(entries) == 8 and all(len(e.top_logprobs) == 2 for e in entries)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
        calls = await streamed(http, "/v1/chat/completions", chat | {
            "max_tokens": 40, "tools": TOOLS, "tool_choice": "required"}, ChatCompletionChunk)
        deltas = [d for c in calls for ch in c.choices for d in ch.delta.tool_calls or ()]
        assert [d.function.name for d in deltas] == ["get_weather"]
        assert json.loads(deltas[0].function.arguments)["city"]
        assert calls[-1].choices[0].finish_reason == "tool_calls"
        text = {"model": MODEL, "prompt": "The sky is", "max_tokens": 3, "temperature": 0}
        echoed = await streamed(http, "/v1/completions", text | {"echo": True, "logprobs": 1}, CompletionResponse)
        assert echoed[0].choices[0].text == "The sky is" and echoed[0].choices[0].logprobs.token_logprobs[0] is None
        await streamed(http, "/v1/completions", text | {"prompt": ["a", "b"]}, CompletionResponse)

        whole = await http.post("/v1/chat/completions", headers=HEADERS, json=chat | {"logprobs": True})
        assert ChatCompletionResponse.model_validate_json(whole.content).choices[0].logprobs.content
        called = await http.post("/v1/chat/completions", headers=HEADERS,
                                 json=chat | {"max_tokens": 40, "tools": TOOLS, "tool_choice": "required"})
        message = ChatCompletionResponse.model_validate_json(called.content).choices[0].message
        assert message.content is None and message.tool_calls[0].function.name == "get_weather"
        scored = await http.post("/v1/completions", headers=HEADERS,
                                 json=text | {"max_tokens": 0, "echo": True, "logprobs": 0, "best_of": 1})
        assert CompletionResponse.model_validate_json(scored.content).usage.completion_tokens == 0
        refused = await http.post("/v1/completions", headers=HEADERS, json=text | {"suffix": "!"})
        assert refused.status_code == 400 and ErrorBody.model_validate_json(refused.content).error.param == "suffix"
