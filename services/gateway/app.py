"""Wires the gateway: settings -> components -> gRPC server."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from llmserve.common.logging import get_logger
from llmserve.gateway.internal.v1 import token_sink_pb2, token_sink_pb2_grpc
from llmserve.gateway.v1 import generation_pb2, generation_pb2_grpc

from .auth import ApiKeyAuthenticator
from .catalog import ModelCatalog
from .generation import GenerationService
from .inflight import InflightRegistry
from .request_queue import RequestQueue
from .servicer import GenerationServicer, TokenSinkServicer
from .settings import GatewaySettings

log = get_logger(__name__)


class GatewayService:
    """The gateway as a `llmserve.common.server.Service`."""

    service_names = (
        generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
        token_sink_pb2.DESCRIPTOR.services_by_name["TokenSinkService"].full_name,
    )

    def __init__(self, settings: GatewaySettings, catalog: ModelCatalog | None = None):
        self.settings = settings
        self.catalog = catalog or ModelCatalog.load(settings.models)
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        self.inflight = InflightRegistry()
        self.auth = ApiKeyAuthenticator(settings.api_keys)
        if not self.auth.configured:
            log.warning("no API keys configured: every request will be UNAUTHENTICATED")
        self.queue = RequestQueue(self.redis, settings.max_queue_len)
        self.generation = GenerationService(settings, self.auth, self.catalog, self.queue, self.inflight,
                                            self.redis)

    def register(self, server) -> None:
        token_sink_pb2_grpc.add_TokenSinkServiceServicer_to_server(TokenSinkServicer(self.inflight), server)
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(self.generation), server)

    async def start(self, bound_port: int) -> None:
        self.queue.reply_to = f"{self.settings.advertise_host or self.settings.host}:{bound_port}"

    async def drain(self) -> None:
        self.generation.draining = True
        while len(self.inflight):
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.redis.aclose()

