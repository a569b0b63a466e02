"""The OpenAI-compatible HTTP API and the WebSocket stream, on the in-process stack over real Redis.

Clients are the real ones: the official `openai` package, httpx reading raw SSE, and the
`websockets` package. The worker runs a ScriptedEngine (token i is "<last prompt id + i + 1> ").
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import redis.asyncio as aioredis
import websockets

from llmserve.gateway.admission.validation import GenerateParams
from llmserve.gateway.routing.catalog import ModelCatalog
from tests.support.polling import wait_for
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

HEADERS = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def http_base(stack) -> str:
    return f"http://127.0.0.1:{stack.gateway.service.http_port}"


async def test_openai_sdk_streams_a_chat_completion(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        client = openai.AsyncOpenAI(base_url=http_base(stack) + "/v1", api_key=API_KEY, max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 5
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []
        whole = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=3
        )
        assert whole.choices[0].message.content.split() == text.split()[:3]
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + 3
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(
                base_url=http_base(stack) + "/v1", api_key="nope", max_retries=0
            ).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        await client.close()


async def sse_events(response: httpx.Response) -> list:
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_raw_sse_text_completion_has_usage_in_the_last_chunk(redis_url, catalog):
    async with (
        running_stack(redis_url, [ScriptedEngine()], catalog) as stack,
        httpx.AsyncClient(base_url=http_base(stack), headers=HEADERS, timeout=10) as http,
    ):
        body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 4, "stream": True}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await sse_events(response)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "text_completion" for c in chunks)
        assert "".join(c["choices"][0]["text"] for c in chunks).split() == [
            str((catalog.get(MODEL).encode_prompt("Hello there")[-1] + 1 + i) % 1000) for i in range(4)
        ]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_websocket_streams_tokens_and_reports_errors(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        url = f"ws://127.0.0.1:{stack.gateway.service.http_port}/v1/ws"
        async with websockets.connect(url, additional_headers=HEADERS) as ws:
            await ws.send(
                json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            )
            messages = []
            while not messages or messages[-1]["type"] not in ("done", "error"):
                messages.append(json.loads(await ws.recv()))
            assert [m["index"] for m in messages if m["type"] == "token"] == [0, 1, 2]
            assert messages[-1]["usage"]["completion_tokens"] == 3
            await ws.send(json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 0}))
            error = json.loads(await ws.recv())
            assert (
                error["type"] == "error"
                and error["status"] == 400
                and "max_tokens" in error["error"]["message"]
            )
        async with websockets.connect(url) as ws:  # no credentials
            await ws.send(json.dumps({"model": MODEL, "prompt": "hi"}))
            assert json.loads(await ws.recv())["status"] == 401


async def streams_held(redis_url) -> int:
    r = aioredis.Redis.from_url(redis_url)
    try:
        return sum([await r.zcard(k) for k in await r.keys("llmserve:ratelimit:*:streams")])
    finally:
        await r.aclose()


async def test_http_disconnect_and_websocket_close_cancel_the_request(redis_url, catalog):
    engine = ScriptedEngine(step_delay_s=0.02)
    async with (
        running_stack(redis_url, [engine], catalog) as stack,
        httpx.AsyncClient(base_url=http_base(stack), headers=HEADERS, timeout=10) as http,
    ):
        body = {"model": MODEL, "prompt": "go", "max_tokens": 1000, "stream": True, "request_id": "sse-bye"}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
        # the client closed the connection mid-stream
        await wait_for(lambda: "sse-bye" in engine._aborted and not engine.has_unfinished(), timeout=5)

        url = f"ws://127.0.0.1:{stack.gateway.service.http_port}/v1/ws"
        async with websockets.connect(url, additional_headers=HEADERS) as ws:
            await ws.send(
                json.dumps({"model": MODEL, "prompt": "go", "max_tokens": 1000, "request_id": "ws-bye"})
            )
            assert json.loads(await ws.recv())["type"] == "token"
        await wait_for(lambda: "ws-bye" in engine._aborted and not engine.has_unfinished(), timeout=5)
        await wait_for(lambda: stack.gateway.service.limiter.live_leases == 0, timeout=5)
        assert await streams_held(redis_url) == 0


async def test_a_stream_closed_between_events_cancels_its_request_before_close_returns(redis_url, catalog):
    """What the SSE and WebSocket writers do when their client goes: close the event stream
    while it waits between tokens. The request must be cancelled by the time that returns."""
    engine = ScriptedEngine(step_delay_s=0.02)
    async with running_stack(redis_url, [engine], catalog) as stack:
        generation = stack.gateway.service.generation
        params = GenerateParams(model=MODEL, prompt="go", max_tokens=1000, request_id="closed-between")
        job = await generation.admit(HEADERS["authorization"], params)
        events = generation.stream(job, 30)
        await anext(events)
        await events.aclose()
        # no await since aclose: the cleanup ran inside it, not in a task scheduled for later
        assert generation.inflight.get("closed-between") is None
        assert generation.limiter.live_leases == 0
        await wait_for(lambda: "closed-between" in engine._aborted and not engine.has_unfinished(), timeout=5)
