"""The client's retry rules against a scripted, real gRPC gateway (grpc.aio in this loop)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
import pytest

from llmserve.cli.redis_server import free_port
from llmserve.client import (
    AsyncClient,
    BearerToken,
    Client,
    RequestAlreadyAccepted,
    RetryPolicy,
    StreamInterrupted,
)
from tests.unit.client.fake_gateway import FakeGateway

UNAVAILABLE, EXHAUSTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


async def test_rate_limit_waits_the_servers_retry_after_and_keeps_the_request_id():
    async with (
        FakeGateway([("error", EXHAUSTED, 300), ("error", EXHAUSTED, 300), "ok"]) as gw,
        AsyncClient(gw.address, api_key="k", retry=FAST) as client,
    ):
        started = time.monotonic()
        result = await client.generate("m", "hi")
    assert time.monotonic() - started >= 0.6
    ids = {rid for rid, _ in gw.calls}
    assert len(gw.calls) == 3 and ids == {result.request_id} and result.request_id
    assert all(auth == "Bearer k" for _, auth in gw.calls)


async def test_retry_after_beyond_the_deadline_fails_at_once():
    async with (
        FakeGateway([("error", EXHAUSTED, 60_000), "ok"]) as gw,
        AsyncClient(gw.address, timeout=2.0, retry=FAST) as client,
    ):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            await client.generate("m", "hi")
    assert caught.value.code() == EXHAUSTED
    assert time.monotonic() - started < 1.0 and len(gw.calls) == 1


async def test_non_retryable_codes_are_raised_after_one_attempt():
    async with (
        FakeGateway([("error", grpc.StatusCode.INVALID_ARGUMENT, None), "ok"]) as gw,
        AsyncClient(gw.address, retry=FAST) as client,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            await client.generate("m", "hi")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(gw.calls) == 1


async def test_a_retry_that_finds_its_own_earlier_enqueue_is_reported_not_rerun():
    async with (
        FakeGateway(["enqueue-then-unavailable", "ok"]) as gw,
        AsyncClient(gw.address, retry=FAST) as client,
    ):
        with pytest.raises(RequestAlreadyAccepted) as caught:
            await client.generate("m", "hi")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len({rid for rid, _ in gw.calls}) == 1, "the retry reused the id (never a second generation)"


async def test_on_accepted_new_id_runs_it_again_under_a_fresh_id():
    policy = RetryPolicy(initial_backoff_s=0.01, on_accepted="new_id")
    async with (
        FakeGateway(["enqueue-then-unavailable", "ok"]) as gw,
        AsyncClient(gw.address, retry=policy) as client,
    ):
        result = await client.generate("m", "hi")
    first, second, third = (rid for rid, _ in gw.calls)
    assert first == second != third == result.request_id


async def test_a_callers_reused_id_is_raised_as_already_exists():
    async with FakeGateway(["ok"]) as gw, AsyncClient(gw.address, retry=FAST) as client:
        await client.generate("m", "hi", request_id="mine")
        with pytest.raises(grpc.RpcError) as caught:
            await client.generate("m", "hi", request_id="mine")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert not isinstance(caught.value, RequestAlreadyAccepted)


async def test_stream_retries_before_the_first_token_only():
    async with (
        FakeGateway([("error", UNAVAILABLE, None), "ok"]) as gw,
        AsyncClient(gw.address, retry=FAST, eject_cooldown_s=0.01) as client,
    ):
        text = "".join([p.text async for p in client.stream("m", "hi")])
    assert text == "ab" and len(gw.calls) == 2

    # Without re-attach (the default re-attaches: tests/e2e/test_reattach.py), a broken stream
    # is never replayed.
    no_reattach = dataclasses.replace(FAST, reattach=False)
    async with FakeGateway(["break-after-token", "ok"]) as gw, AsyncClient(gw.address, retry=no_reattach) as client:
        pieces = []
        with pytest.raises(StreamInterrupted):
            async for p in client.stream("m", "hi"):
                pieces.append(p)
    assert [p.text for p in pieces] == ["a"] and len(gw.calls) == 1


async def test_sync_client_fails_over_and_refreshes_bearer_tokens():
    tokens = iter(["t1", "t2"])
    auth = BearerToken(lambda: (next(tokens), time.time() - 1))  # always expired: refreshed per call
    async with FakeGateway([("error", UNAVAILABLE, 5000)]) as down, FakeGateway(["ok"]) as up:

        def run():
            with Client([down.address, up.address], auth=auth, retry=FAST) as client:
                return [p.text for p in client.stream("m", "hi")]

        assert "".join(await asyncio.to_thread(run)) == "ab"
    assert [a for _, a in down.calls + up.calls] == ["Bearer t1", "Bearer t2"]


async def test_both_clients_list_models_past_a_dead_address():
    async with FakeGateway(["ok"]) as up:
        addresses = [f"127.0.0.1:{free_port()}", up.address]  # nothing listens on the first

        def run():
            with Client(addresses, retry=FAST) as client:
                return client.list_models()

        synced = await asyncio.to_thread(run)
        async with AsyncClient(addresses, retry=FAST) as client:
            awaited = await client.list_models()
    assert [m.name for m in synced] == [m.name for m in awaited] == ["m"]
