"""Shared by the registry-routing tests: a registered two-version model and a client loop."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis

from llmserve.common.models.registry import ModelRegistry
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.stack import API_KEY

NAME = "smol"
KEYS = {"t1": API_KEY, "t2": "other-key"}
#: No static catalog: every model comes from the registry.
NO_CATALOG = ModelCatalog({})
#: Limits that would throttle a load test are off; they are not what these tests are about.
UNLIMITED = {"requests_per_minute": 0, "tokens_per_minute": 0, "max_concurrent_streams": 0}


async def two_versions(redis_url: str, path) -> ModelRegistry:
    """`smol` v1 (active) and v2, both pointing at the tiny model (its tokenizer is what matters)."""
    registry = ModelRegistry(aioredis.Redis.from_url(redis_url))
    await registry.register(NAME, path, activate=True)
    await registry.register(NAME, path)
    return registry


@dataclass
class Outcome:
    request_id: str
    tenant: str
    started: float  # time.monotonic()
    model: str = ""  # the served model id the response named
    error: grpc.StatusCode | None = None


async def generate(
    stub, request_id: str, tenant: str = "t1", max_tokens: int = 2, model: str = NAME
) -> Outcome:
    outcome = Outcome(request_id, tenant, time.monotonic())
    request = pb.GenerateRequest(
        model=model, prompt="Hello there", max_tokens=max_tokens, request_id=request_id
    )
    try:
        reply = await stub.Generate(
            request, metadata=(("authorization", f"Bearer {KEYS[tenant]}"),), timeout=30
        )
        outcome.model = reply.model
    except grpc.aio.AioRpcError as e:
        outcome.error = e.code()
    return outcome


async def run_requests(address: str, ids: list[str], concurrency: int, **kw) -> list[Outcome]:
    """Send one request per id, `concurrency` at a time."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        queue = list(reversed(ids))
        out: list[Outcome] = []

        async def loop():
            while queue:
                out.append(await generate(stub, queue.pop(), **kw))

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return out


async def load_until(address: str, stop: asyncio.Event, concurrency: int, prefix: str, **kw) -> list[Outcome]:
    """A steady stream of requests from `concurrency` clients until `stop` is set."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        out: list[Outcome] = []

        async def loop(c: int):
            i = 0
            while not stop.is_set():
                out.append(await generate(stub, f"{prefix}-{c}-{i}", **kw))
                i += 1

        await asyncio.gather(*(loop(c) for c in range(concurrency)))
        return out
