"""Hostile input at the public door gets its own status, a bounded echo and a quiet log."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

HUGE = "m" * 100_000


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def test_a_100kb_model_name_is_not_found_with_a_bounded_echo(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(pb.GenerateRequest(model=HUGE, prompt="hi", max_tokens=2),
                                    metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(caught.value.details()) < 400 and "100000 characters" in caught.value.details()

        base = f"http://127.0.0.1:{stack.gateway.service.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            reply = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {API_KEY}"},
                                      json={"model": HUGE, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 404
        assert len(reply.text) < 600 and "100000 characters" in reply.json()["error"]["message"]


async def test_a_client_leaving_mid_body_is_not_an_internal_error(redis_url, catalog, capfd):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        port = stack.gateway.service.http_port
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"mo")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            reply = await client.get("/v1/models", headers={"authorization": f"Bearer {API_KEY}"})
        assert reply.status_code == 200
    out, err = capfd.readouterr()
    logged = out + err
    assert "Traceback" not in logged and "unexpected error" not in logged
    assert "Exception in ASGI application" not in logged
