"""Which port serves what: the gateway's public port serves only `llmserve.gateway.v1` (plus
health and reflection of it); the workers' token sink listens on its own internal port with
health and reflection of its own. Reflection answers under `grpc.reflection.v1` as well as
`v1alpha` on every service (newer grpcurl and Postman ask for v1 first)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from llmserve.common.tokensink.v1 import token_sink_pb2, token_sink_pb2_grpc
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.settings import GatewaySettings
from tests.integration.monitor.harness import running_monitor
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import MODEL, running_stack

HEALTH = "grpc.health.v1.Health"
REFLECTION = {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
GENERATION = "llmserve.gateway.v1.GenerationService"
TOKEN_SINK = "llmserve.common.tokensink.v1.TokenSinkService"


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def reflect(address: str, request: reflection_pb2.ServerReflectionRequest, version: str = "v1"):
    """One reflection exchange over `grpc.reflection.<version>` (the v1 messages are v1alpha's)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return [r async for r in call(iter([request]), timeout=5)]


async def listed(address: str, version: str = "v1") -> set[str]:
    replies = await reflect(address, reflection_pb2.ServerReflectionRequest(list_services=""), version)
    return {s.name for r in replies for s in r.list_services_response.service}


async def test_public_port_serves_only_the_public_api_and_the_sink_its_own_port(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog, internal_secret="") as stack:
        public = stack.gateway_address
        internal = stack.gateway.service.queue.reply_to  # what workers are told to dial
        assert internal != public and internal == stack.gateway.service.internal_address
        for version in ("v1", "v1alpha"):
            assert await listed(public, version) == {GENERATION, HEALTH, *REFLECTION}
            assert await listed(internal, version) == {TOKEN_SINK, HEALTH, *REFLECTION}
        async with grpc.aio.insecure_channel(public) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await token_sink_pb2_grpc.TokenSinkServiceStub(channel).Fence(
                    token_sink_pb2.FenceRequest(request_id="r", attempt=2), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(internal) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", TOKEN_SINK):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health.Check(health_pb2.HealthCheckRequest(service=GENERATION), timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            reply = await token_sink_pb2_grpc.TokenSinkServiceStub(channel).Fence(
                token_sink_pb2.FenceRequest(request_id="nobody", attempt=2), timeout=5)
            assert not reply.found


async def test_v1_reflection_describes_services_on_every_service(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog, internal_secret="") as stack, running_monitor() as monitor:
        where = {
            GENERATION: stack.gateway_address,
            TOKEN_SINK: stack.gateway.service.internal_address,
            "llmserve.scheduler.v1.SchedulerService": f"127.0.0.1:{stack.scheduler.port}",
            "llmserve.worker.v1.WorkerService": f"127.0.0.1:{stack.workers[0].port}",
            "llmserve.monitor.v1.MonitorService": monitor.grpc_address,
        }
        for service, address in where.items():
            assert service in await listed(address)
            for symbol in (service, "grpc.reflection.v1.ServerReflection"):
                replies = await reflect(address, reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=symbol))
                assert replies[0].WhichOneof("message_response") == "file_descriptor_response", (address, symbol)
                assert replies[0].file_descriptor_response.file_descriptor_proto


def test_the_token_sink_port_defaults_to_50055_and_is_ephemeral_beside_an_ephemeral_public_port():
    assert GatewaySettings(port=50051).internal_port == 50055
    assert GatewaySettings(port=0).internal_port == 0
    assert GatewaySettings(port=0, internal_port=50099).internal_port == 50099
