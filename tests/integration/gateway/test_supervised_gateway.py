"""The gateway's supervised loops with an injected exception: the limiter's lease renewal is
counted and restarted (admission keeps working); the HTTP server dying is fatal: NOT_SERVING,
exit 1. (The limiter has no long-lived batch sender: each batch runs on its own task, and a batch
task that raises or is cancelled is covered in test_limiter_sender.py.)"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from llmserve.gateway.admission.ratelimit import RateLimiter
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.polling import wait_for
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack
from tests.support.supervision import count_failures, fail_once, failures_from_start

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def test_a_failed_lease_renewal_is_counted_and_restarted(redis_url, catalog, monkeypatch):
    monkeypatch.setattr(RateLimiter, "_renew_forever", fail_once(RateLimiter._renew_forever))
    task = "ratelimit-renew"
    failures = failures_from_start(monkeypatch)  # the loop fails as soon as the gateway starts it
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        supervisor = stack.gateway.service.supervisor
        await wait_for(lambda: failures("gateway", task) == 1)
        await wait_for(lambda: supervisor.running(task))
        async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            replies = await asyncio.gather(*(
                stub.Generate(pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=2), metadata=AUTH, timeout=10)
                for _ in range(20)))
        assert all(r.usage.completion_tokens == 2 for r in replies)
        assert failures("gateway", task) == 1 and stack.gateway.exit_code == 0


async def test_the_http_server_dying_is_fatal(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        service = stack.gateway.service
        failures = count_failures(service.supervisor)
        service.http._task.cancel()  # uvicorn's serve task ends without being asked to stop
        await asyncio.wait_for(stack.gateway.wait_failed(), 10)
        assert failures("http") == 1 and stack.gateway.exit_code == 1
