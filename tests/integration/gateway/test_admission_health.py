"""Gateway health follows its admission path (issue 21): while the rate limiter's oldest call
goes unanswered past `admission_stall_s`, the gateway's gRPC health is NOT_SERVING; once
admissions complete again it is SERVING. Real gateway server, real redis-server kept busy."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.common.server import GrpcApp
from llmserve.gateway.admission.validation import GenerateParams
from llmserve.gateway.app import GatewayService
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.settings import GatewaySettings
from tests.support.polling import wait_for
from tests.support.slow_redis import slow_redis
from tests.support.stack import API_KEY, MODEL

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        return reply.status


async def test_health_is_not_serving_while_admissions_do_not_complete(redis_url, catalog):
    # A limiter deadline far longer than the stall bound: calls stay unanswered while Redis spins.
    settings = GatewaySettings(redis_url=redis_url, port=0, api_keys=[f"t1={API_KEY}"],
                               ratelimit_timeout_ms=10_000, admission_stall_s=0.3)  # fmt: skip
    async with GrpcApp(GatewayService(settings, catalog=catalog), settings) as app:
        service: GatewayService = app.service  # type: ignore[assignment]
        assert await health(app.port) == SERVING
        admit = service.generation.admit(f"Bearer {API_KEY}", GenerateParams(model=MODEL, prompt="Hi"))
        async with slow_redis(redis_url, spin_ms=1500, pause_s=0.5):
            pending = asyncio.create_task(admit)
            await wait_for(lambda: not service.watchdog.serving, timeout=3)
            assert await health(app.port) == NOT_SERVING
            job = await asyncio.wait_for(pending, 5)  # Redis answers at last: the admission completes
        await wait_for(lambda: service.watchdog.serving, timeout=3)
        assert await health(app.port) == SERVING
        await service.limiter.release(job.lease, 1)


async def test_the_watchdog_flips_on_the_pulse_alone():
    from llmserve.gateway.admission.admission_watch import AdmissionWatchdog

    age, seen = [0.0], []

    async def record(serving: bool) -> None:
        seen.append(serving)

    watchdog = AdmissionWatchdog(lambda: age[0], record, stall_s=1.0)
    await watchdog.check()
    age[0] = 1.5
    await watchdog.check()
    await watchdog.check()
    age[0] = 0.0
    await watchdog.check()
    assert seen == [False, True]
