"""Three real gateway processes share one tenant's limit through one Redis: exactly the limit is
admitted out of a 1000-request burst spread over them, and every other request is refused
with RESOURCE_EXHAUSTED and a retry delay in the trailing metadata."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.cli.redis_server import RedisServer, free_port
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.common import redis_keys as keys
from llmserve.common.errors import RETRY_AFTER_KEY
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.v1 import work_pb2
from llmserve.gateway.admission.ratelimit_scripts import tenant_keys
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LIMIT, BURST, GATEWAYS = 100, 1000, 3
KEY = "e2e-burst-key"
ENV = {
    "LLMSERVE_GATEWAY_API_KEYS": f"acme={KEY}",
    "LLMSERVE_GATEWAY_REQUESTS_PER_MINUTE": str(LIMIT),
    "LLMSERVE_GATEWAY_MAX_CONCURRENT_STREAMS": "0",  # only the per-minute limit is under test
    # Three gateways and this client share two cores during the burst: a slow answer must not
    # count as a Redis outage (fail closed: UNAVAILABLE). The bench measures the real latency.
    "LLMSERVE_GATEWAY_RATELIMIT_TIMEOUT_MS": "2000",
}


@pytest.fixture
def gateways(tmp_path, model_path):
    """Three `python -m llmserve.gateway` processes on one private redis-server; no worker."""
    with RedisServer() as redis:
        suite = LocalSuite(
            ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path, with_monitor=False, env=ENV
        )
        try:
            for i in range(GATEWAYS):
                port = free_port()
                suite.spawn(
                    f"gateway{i}",
                    "llmserve.gateway",
                    port,
                    {"LLMSERVE_GATEWAY_PORT": str(port), "LLMSERVE_GATEWAY_HTTP_PORT": "0",
                     "LLMSERVE_GATEWAY_INTERNAL_PORT": "0"},
                )
            suite.wait_serving(timeout=120)
            yield suite, redis.url
        finally:
            suite.stop()


async def _outcome(call) -> grpc.aio.AioRpcError | None:
    """The status a call ended with; it ends only when refused (no worker ever answers)."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as e:
        return e
    return None


async def _settled(redis, stream: str, calls: list[asyncio.Task], timeout: float) -> int:
    """Wait until every request is decided: refused (its call ended) or enqueued (in the stream)."""
    deadline = time.monotonic() + timeout
    while True:
        enqueued = await redis.xlen(stream)
        if enqueued + sum(c.done() for c in calls) >= len(calls) or time.monotonic() > deadline:
            return enqueued
        await asyncio.sleep(0.1)


def _retry_after_ms(error: grpc.aio.AioRpcError) -> int:
    return int(dict(error.trailing_metadata() or ())[RETRY_AFTER_KEY])


async def test_three_gateway_processes_admit_exactly_the_limit_of_1000_concurrent_requests(gateways):
    """`requests_per_minute=100` for the key, 1000 concurrent GenerateStream calls, i-th to gateway i % 3.

    How "admitted" is recognised: no worker runs, so an admitted request never ends on its
    own; its gateway has enqueued it on the model's Redis stream and holds the call open. A
    refused one ends at once with RESOURCE_EXHAUSTED. So once every call has either ended or
    appeared on the stream, the admitted set is exactly the calls still open, and it must
    equal the request ids on the stream. No client deadline takes part in the decision (a
    short one could turn a slow refusal into DEADLINE_EXCEEDED and hide a miscount).
    """
    suite, redis_url = gateways
    stream = keys.request_stream(DEFAULT_MODEL)
    auth = (("authorization", f"Bearer {KEY}"),)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in suite.services]
    redis = aioredis.Redis.from_url(redis_url)
    try:
        stubs = [generation_pb2_grpc.GenerationServiceStub(c) for c in channels]
        await asyncio.gather(*(c.channel_ready() for c in channels))
        started = time.monotonic()
        calls = [
            stubs[i % GATEWAYS].GenerateStream(
                pb.GenerateRequest(
                    model=DEFAULT_MODEL, prompt="Hello", max_tokens=4, request_id=f"burst-{i}"
                ),
                metadata=auth,
                timeout=120,
            )
            for i in range(BURST)
        ]
        outcomes = [asyncio.create_task(_outcome(c)) for c in calls]
        enqueued = await _settled(redis, stream, outcomes, timeout=45)
        decided_s = time.monotonic() - started

        refused = {i: t.result() for i, t in enumerate(outcomes) if t.done()}
        open_ids = {f"burst-{i}" for i, t in enumerate(outcomes) if not t.done()}
        entries = await redis.xrange(stream)
        on_stream = {
            work_pb2.WorkItem.FromString(f[keys.PAYLOAD_FIELD.encode()]).request_id for _, f in entries
        }
        assert enqueued == LIMIT and len(open_ids) == LIMIT, (enqueued, len(open_ids), decided_s)
        assert on_stream == open_ids
        assert len(refused) == BURST - LIMIT
        codes = {e.code() if e else None for e in refused.values()}
        assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        delays = [_retry_after_ms(e) for e in refused.values()]
        assert all(0 < d <= 60_000 for d in delays), (min(delays), max(delays))
        assert all("requests_per_minute" in e.details() for e in refused.values())
        window, _, streams = tenant_keys("acme")
        assert await redis.zcard(window) == LIMIT  # one admission per request on the shared window
        per_gateway = [
            sum(1 for i in range(g, BURST, GATEWAYS) if f"burst-{i}" in open_ids) for g in range(GATEWAYS)
        ]
        print(f"decided in {decided_s:.2f}s; admitted per gateway {per_gateway}")

        # Clients going away release their concurrency slots on every gateway.
        for call in calls:
            call.cancel()
        await asyncio.gather(*outcomes, return_exceptions=True)  # a cancelled call raises CancelledError
        deadline = time.monotonic() + 10
        while await redis.zcard(streams) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await redis.zcard(streams) == 0
    finally:
        await redis.aclose()
        for c in channels:
            await c.close()
