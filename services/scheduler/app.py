"""Wires the scheduler: settings -> loop -> gRPC server."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from llmserve.common import internal_policy
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.server import Service
from llmserve.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from .core import SchedulerCore
from .servicer import SchedulerServicer
from .settings import SchedulerSettings


class SchedulerService(Service):
    """The scheduler as a `llmserve.common.server.Service`: its loop runs beside the gRPC API."""

    service_names = (scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,)
    internal_policy = internal_policy.SCHEDULER

    def __init__(self, settings: SchedulerSettings):
        self.settings = settings
        self.internal_auth = InternalAuth.from_settings(settings, "scheduler", settings.scheduler_id)
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.core = SchedulerCore(settings, self.redis)
        self._task: asyncio.Task | None = None

    def register(self, server) -> None:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(self.core), server)

    async def start(self, bound_port: int) -> None:
        self._task = asyncio.create_task(self.core.run())

    async def drain(self) -> None:
        # Held requests stay pending in the consumer group: a peer (or our restart) takes them.
        self.core.stop()
        if self._task:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def close(self) -> None:
        await self.core.close()
        await self.redis.aclose()
