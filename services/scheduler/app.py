"""Wires the scheduler: settings -> loop -> gRPC server."""

from __future__ import annotations

import asyncio
import contextlib

from llmserve.common import internal_policy, redis_client
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.server import Service
from llmserve.common.supervise import Supervisor
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
        self.redis = redis_client.connect(settings.redis_url, socket_timeout=5, connect_timeout=2)
        self.supervisor = Supervisor("scheduler")
        self.core = SchedulerCore(settings, self.redis, self.supervisor)
        self._task: asyncio.Task | None = None

    def register(self, server) -> None:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(self.core), server)

    async def start(self, bound_port: int) -> None:
        # The loop's state (held work, registry view) survives a restart: a bug in one round
        # costs a backoff, not the scheduler.
        self._task = self.supervisor.spawn("dispatch", self.core.run)

    async def drain(self) -> None:
        # Held requests stay pending in the consumer group: a peer (or our restart) takes them.
        self.core.stop()
        if self._task:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def close(self) -> None:
        await self.supervisor.stop()
        await self.core.close()
        await self.redis.aclose()
