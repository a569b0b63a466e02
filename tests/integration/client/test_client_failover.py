"""The client against real in-process gateways over real Redis (ScriptedEngine worker).

Two gateways share one scheduler and worker; the client balances over both, and when one
gateway is stopped mid-run every request still completes, through the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.client import AsyncClient, Client, RetryPolicy
from llmserve.common import redis_keys as keys
from llmserve.common.server import GrpcApp
from llmserve.gateway.app import GatewayService
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.settings import GatewaySettings
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


@contextlib.asynccontextmanager
async def two_gateways(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine(step_delay_s=0.002)], catalog) as stack:
        settings = GatewaySettings(redis_url=redis_url, port=0, drain_seconds=2, api_keys=[f"t1={API_KEY}"])
        async with GrpcApp(GatewayService(settings, catalog=catalog), settings) as second:
            yield stack.gateway, second


async def test_round_robin_spreads_calls_over_both_gateways(redis_url, catalog):
    async with two_gateways(redis_url, catalog) as (a, b):
        addresses = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        async with AsyncClient(addresses, api_key=API_KEY, timeout=10) as client:
            results = await asyncio.gather(*(client.generate(MODEL, "hi", max_tokens=3) for _ in range(8)))
            assert all(r.completion_tokens == 3 for r in results)
            pieces = [p async for p in client.stream(MODEL, "hi", max_tokens=4)]
            assert [i for p in pieces for i in range(p.index, p.index + len(p.token_ids))] == [0, 1, 2, 3]
        # Each request's record names the gateway that enqueued it: both took a share (not
        # exactly half: a retried call moves to the other gateway, by design).
        r = aioredis.from_url(redis_url)
        gateways = Counter([await r.hget(keys.request_key(x.request_id), "gateway") for x in results])
        await r.aclose()
        assert len(gateways) == 2 and sum(gateways.values()) == 8, gateways


async def test_sync_client_keeps_working_when_one_gateway_stops_mid_run(redis_url, catalog):
    async with two_gateways(redis_url, catalog) as (a, b):
        addresses = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
        policy = RetryPolicy(initial_backoff_s=0.02)
        stopped = asyncio.Event()

        def run(n: int) -> list[int]:
            counts = []
            with Client(addresses, api_key=API_KEY, timeout=15, retry=policy) as client:
                for i in range(n):
                    if i == n // 2:
                        asyncio.run_coroutine_threadsafe(b.stop(), loop).result(timeout=10)
                        stopped.set()
                    pieces = list(client.stream(MODEL, f"prompt {i}", max_tokens=3))
                    counts.append(sum(len(p.token_ids) for p in pieces))
                    counts.append(client.generate(MODEL, f"again {i}", max_tokens=2).completion_tokens)
            return counts

        loop = asyncio.get_running_loop()
        counts = await asyncio.to_thread(run, 10)
        assert stopped.is_set()
        assert counts == [3, 2] * 10


async def test_a_reused_request_id_is_refused_by_the_real_gateway(redis_url, catalog):
    async with (
        two_gateways(redis_url, catalog) as (a, _),
        AsyncClient(f"127.0.0.1:{a.port}", api_key=API_KEY, timeout=10) as client,
    ):
        first = await client.generate(MODEL, "hi", max_tokens=2, request_id="fixed-id")
        assert first.request_id == "fixed-id"
        with pytest.raises(grpc.RpcError) as caught:
            await client.generate(MODEL, "hi", max_tokens=2, request_id="fixed-id")
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
