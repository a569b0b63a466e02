"""Gateway -> Redis -> scheduler -> worker -> token sink -> client, in-process, real Redis.

The worker runs a ScriptedEngine so these tests exercise the plumbing, not torch.
"""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def request(**kw) -> pb.GenerateRequest:
    kw.setdefault("model", MODEL)
    if "prompt" not in kw and "messages" not in kw:
        kw["prompt"] = "Hello there"
    messages = kw.pop("messages", None)
    req = pb.GenerateRequest(**kw)
    if messages is not None:
        req.messages.messages.extend(pb.ChatMessage(**m) for m in messages)
    return req


async def test_stream_delivers_tokens_in_order_with_usage(redis_url, catalog):
    engine = ScriptedEngine()
    async with running_stack(redis_url, [engine], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        messages = [m async for m in stub.GenerateStream(request(max_tokens=5), metadata=AUTH, timeout=10)]
        tokens = [m for m in messages if m.token_ids]
        assert [m.index for m in tokens] == [0, 1, 2, 3, 4]
        last = messages[-1]
        assert last.finish_reason == pb.FINISH_REASON_LENGTH
        assert last.usage.completion_tokens == 5
        assert last.usage.prompt_tokens == len(catalog.get(MODEL).encode_prompt("Hello there"))
        assert last.usage.total_tokens == last.usage.prompt_tokens + 5
        first = (catalog.get(MODEL).encode_prompt("Hello there")[-1] + 1) % 1000
        assert [m.token_ids[0] for m in tokens] == [first + i for i in range(5)]

        whole = await stub.Generate(request(max_tokens=3, request_id="unary-1"), metadata=AUTH, timeout=10)
        assert whole.text == "".join(f"{first + i} " for i in range(3))
        assert whole.request_id == "unary-1"
        assert whole.finish_reason == pb.FINISH_REASON_LENGTH


async def test_health_and_reflection(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        for app in (stack.gateway, stack.scheduler, *stack.workers):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = [s.name async for r in call for s in r.list_services_response.service]
            assert "llmserve.gateway.v1.GenerationService" in names


BAD_INPUTS = [
    ("no key", {}, None, grpc.StatusCode.UNAUTHENTICATED, "authorization"),
    ("wrong key", {}, "nope", grpc.StatusCode.UNAUTHENTICATED, "invalid API key"),
    ("unknown model", {"model": "gpt-17"}, API_KEY, grpc.StatusCode.NOT_FOUND, "gpt-17"),
    ("no model", {"model": ""}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "model"),
    ("empty prompt", {"prompt": ""}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ("blank prompt", {"prompt": "   "}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ("no messages", {"messages": []}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "messages"),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}]}, API_KEY,
     grpc.StatusCode.INVALID_ARGUMENT, "role"),
    ("max_tokens 0", {"max_tokens": 0}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("max_tokens negative", {"max_tokens": -5}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("max_tokens past context", {"max_tokens": 9000}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT,
     "context length (8192"),
    ("temperature NaN", {"temperature": math.nan}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("temperature negative", {"temperature": -0.5}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("temperature too high", {"temperature": 7}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("top_p zero", {"top_p": 0}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ("top_p above one", {"top_p": 1.5}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ("top_k negative", {"top_k": -1}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    ("repetition_penalty zero", {"repetition_penalty": 0}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT,
     "repetition_penalty"),
    ("too many stops", {"stop": ["a", "b", "c", "d", "e"]}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT,
     "max_stop_strings"),
    ("empty stop", {"stop": [""]}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "stop"),
    ("long stop", {"stop": ["x" * 65]}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "max_stop_bytes"),
    ("bad request_id", {"request_id": "has space"}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ("huge prompt", {"prompt": "word " * 60_000}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "max_prompt_bytes"),
    ("prompt past context", {"prompt": "word " * 9000}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT,
     "context length"),
    ("bad priority", {"priority": 9}, API_KEY, grpc.StatusCode.INVALID_ARGUMENT, "priority"),
]


async def test_bad_inputs_get_their_status_and_write_nothing(redis_url, catalog):
    engine = ScriptedEngine()
    async with running_stack(redis_url, [engine], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        r = aioredis.Redis.from_url(redis_url)
        for name, fields, key, code, words in BAD_INPUTS:
            metadata = (("authorization", f"Bearer {key}"),) if key else ()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(request(**fields), metadata=metadata, timeout=10)
            assert caught.value.code() == code, name
            assert words in caught.value.details(), (name, caught.value.details())
        assert await r.keys("llmserve:request:*") == []
        assert await r.keys("llmserve:requests:*") == [] or all(
            [await r.xlen(k) == 0 for k in await r.keys("llmserve:requests:*")])
        assert engine.seen == []
        ok = await stub.Generate(request(max_tokens=2), metadata=AUTH, timeout=10)
        assert ok.usage.completion_tokens == 2
        await r.aclose()


async def test_request_id_is_idempotent(redis_url, catalog):
    engine = ScriptedEngine()
    async with running_stack(redis_url, [engine], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        await stub.Generate(request(max_tokens=2, request_id="once"), metadata=AUTH, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request(max_tokens=2, request_id="once"), metadata=AUTH, timeout=10)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert engine.seen.count("once") == 1


async def test_client_cancel_stops_the_engine_request(redis_url, catalog):
    engine = ScriptedEngine(step_delay_s=0.02)
    async with running_stack(redis_url, [engine], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = stub.GenerateStream(request(max_tokens=1000, request_id="bye"), metadata=AUTH, timeout=30)
        got = 0
        async for _ in call:
            got += 1
            if got == 3:
                break
        call.cancel()
        for _ in range(200):
            if not engine.has_unfinished():
                break
            await asyncio.sleep(0.02)
        assert not engine.has_unfinished(), "the worker kept generating for a cancelled client"
        assert "bye" in engine._aborted


async def test_client_deadline_is_deadline_exceeded(redis_url, catalog):
    engine = ScriptedEngine(step_delay_s=0.05)
    async with running_stack(redis_url, [engine], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request(max_tokens=1000), metadata=AUTH, timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_list_models_counts_ready_workers(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine(), ScriptedEngine()], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        reply = await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=5)
        assert [(m.name, m.context_length, m.ready_workers) for m in reply.models] == [(MODEL, 8192, 2)]


async def test_a_request_lost_by_redis_fails_with_unavailable(redis_url, catalog):
    """Redis comes back empty (restarted without persistence): the client hears it, fast."""
    async with running_stack(redis_url, [], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = stub.Generate(request(max_tokens=4), metadata=AUTH, timeout=30)
        r = aioredis.Redis.from_url(redis_url)
        for _ in range(100):
            if await r.keys("llmserve:request:*"):
                break
            await asyncio.sleep(0.02)
        await r.flushall()
        await r.aclose()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "lost" in caught.value.details()
