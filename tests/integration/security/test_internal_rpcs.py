"""Every method of every internal proto, walked from the descriptors (a new RPC cannot be left
open): from the public port it is UNIMPLEMENTED; on its internal port no credential and a
forged one are UNAUTHENTICATED, a valid credential of a role the method does not allow is
PERMISSION_DENIED, and an allowed one is served. Reflection on the public port lists only the
public service and health."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmserve.common import internal_policy
from llmserve.common import redis_keys as keys
from llmserve.common.internal_auth import METADATA_KEY, ROLES, InternalAuth, mint_token
from llmserve.common.server import GrpcApp
from llmserve.common.tokensink.v1 import token_sink_pb2
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.monitor.app import MonitorService
from llmserve.monitor.settings import MonitorSettings
from tests.integration.security.rpc_walk import call, internal_methods, internal_services, path
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import MODEL, running_stack

SECRET = "s3cret-" + "k" * 24
POLICY = {**internal_policy.TOKEN_SINK, **internal_policy.SCHEDULER, **internal_policy.WORKER,
          **internal_policy.MONITOR}
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED}


def token(role: str, ident: str = "t1") -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, mint_token(SECRET, role, ident)),)


@pytest.fixture
async def suite(redis_url, tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        s = await stack.enter_async_context(running_stack(
            redis_url, [ScriptedEngine()], catalog=ModelCatalog.load([MODEL]), internal_secret=SECRET))
        mon_settings = MonitorSettings(redis_url=redis_url, port=0, http_port=0, internal_secret=SECRET,
                                       drain_seconds=1)
        monitor = await stack.enter_async_context(GrpcApp(MonitorService(mon_settings), mon_settings))
        ports = {
            "llmserve.common.tokensink.v1.TokenSinkService": s.gateway.service.internal_port,
            "llmserve.scheduler.v1.SchedulerService": s.scheduler.port,
            "llmserve.worker.v1.WorkerService": s.workers[0].port,
        }
        for svc in internal_services():
            ports.setdefault(svc.full_name, monitor.port)
        yield s, ports


def test_every_internal_method_has_a_policy():
    assert sorted(path(m) for m in internal_methods()) == sorted(POLICY)


async def test_public_port_serves_no_internal_method_and_reflects_only_public(suite):
    s, _ = suite
    async with grpc.aio.insecure_channel(s.gateway_address) as channel:
        for method in internal_methods():
            assert await call(channel, method, token("scheduler")) == grpc.StatusCode.UNIMPLEMENTED, path(method)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(ask()):
            names = sorted(x.name for x in reply.list_services_response.service)
            break
    assert names == ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection", "llmserve.gateway.v1.GenerationService"]


async def test_internal_ports_refuse_missing_forged_and_wrong_role(suite, redis_url):
    _, ports = suite
    # A worker may fence only a request placed on it: give the walk's worker identity one.
    r = aioredis.Redis.from_url(redis_url)
    await r.hset(keys.request_key("walk-req"), mapping={"worker": "t1", "attempt": 1})
    await r.aclose()
    requests = {"/llmserve.common.tokensink.v1.TokenSinkService/Fence":
                token_sink_pb2.FenceRequest(request_id="walk-req", attempt=2)}
    forged = ((METADATA_KEY, mint_token("not-the-secret-" + "x" * 20, "operator", "me")),)
    for method in internal_methods():
        allowed = POLICY[path(method)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[method.containing_service.full_name]}") as ch:
            where = path(method)
            assert await call(ch, method) == grpc.StatusCode.UNAUTHENTICATED, where
            assert await call(ch, method, forged) == grpc.StatusCode.UNAUTHENTICATED, where
            assert await call(ch, method, ((METADATA_KEY, "v1.operator.me"),)) == grpc.StatusCode.UNAUTHENTICATED
            two = token(sorted(allowed)[0]) + token(sorted(allowed)[0], "other")
            assert await call(ch, method, two) == grpc.StatusCode.UNAUTHENTICATED, where
            for role in sorted(ROLES - allowed):
                assert await call(ch, method, token(role)) == grpc.StatusCode.PERMISSION_DENIED, (where, role)
            for role in sorted(allowed):
                served = await call(ch, method, token(role), timeout=2, request=requests.get(where))
                assert served not in REFUSED, (where, role, served)


async def test_health_needs_no_credential_and_clients_attach_theirs(suite):
    _, ports = suite
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['llmserve.worker.v1.WorkerService']}") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # A channel from InternalAuth carries the credential by itself.
    operator = InternalAuth(token=mint_token(SECRET, "operator", "cli"))
    from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc

    async with operator.aio_channel(f"127.0.0.1:{ports['llmserve.worker.v1.WorkerService']}") as ch:
        status = await worker_pb2_grpc.WorkerServiceStub(ch).GetStatus(worker_pb2.GetStatusRequest(), timeout=3)
        assert status.worker_id == "w0"

    def blocking() -> str:  # the CLI's kind of channel; in a thread, the servers share this loop
        with operator.channel(f"127.0.0.1:{ports['llmserve.worker.v1.WorkerService']}") as ch:
            return worker_pb2_grpc.WorkerServiceStub(ch).GetStatus(worker_pb2.GetStatusRequest(), timeout=3).worker_id

    assert await asyncio.to_thread(blocking) == "w0"


async def test_the_stack_serves_with_internal_auth_on(suite):
    s, _ = suite
    from llmserve.gateway.v1 import generation_pb2 as pb
    from llmserve.gateway.v1 import generation_pb2_grpc
    from tests.support.stack import API_KEY

    async with grpc.aio.insecure_channel(s.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        reply = await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=3),
                                    metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=10)
    assert reply.text and reply.usage.completion_tokens == 3
