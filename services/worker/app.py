"""Wires the worker: settings -> models (each with its engine) -> runtime -> gRPC server."""

from __future__ import annotations

from llmserve.common import internal_policy, redis_client
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger
from llmserve.common.server import Service
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc

from .engine.interface import Engine
from .model_admin import ModelAdmin
from .model_loading import default_budget, engine_memory_bytes
from .runtime import WorkerRuntime
from .served_models import ModelSet, ServedModel
from .servicer import WorkerServicer
from .settings import WorkerSettings

log = get_logger(__name__)


class WorkerService(Service):
    """A worker serving `settings.models` (or `settings.model`), loaded when it starts.

    Tests pass ready engines instead: `engine` (+ `model_name`) for one model, or `engines`
    (served id -> engine) for several; nothing is then loaded from disk.
    """

    service_names = (worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,)
    internal_policy = internal_policy.WORKER

    def __init__(self, settings: WorkerSettings, engine: Engine | None = None, model_name: str | None = None,
                 engines: dict[str, Engine] | None = None):
        self.settings = settings
        self.internal_auth = InternalAuth.from_settings(settings, "worker", settings.worker_id)
        if engine is not None:
            engines = {model_name or settings.model: engine}
        self._refs = [] if engines else (settings.models or [settings.model])
        models = ModelSet(settings.model_memory_bytes or default_budget(settings))
        for served_id, e in (engines or {}).items():
            models.add(ServedModel(served_id, e, engine_memory_bytes(e), served_id))
        self.redis = redis_client.connect(settings.redis_url, socket_timeout=5, connect_timeout=2)
        self.runtime = WorkerRuntime(settings, self.redis, models)
        self.admin = ModelAdmin(self.runtime, settings)
        self.supervisor = self.runtime.supervisor  # its fatal failures stop the server (GrpcApp)

    def register(self, server) -> None:
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(
            WorkerServicer(self.runtime, self.admin, self.settings), server)

    async def start(self, bound_port: int) -> None:
        # Models first: requests this worker held before a restart run again on them.
        for ref in self._refs:
            await self.admin.load(ref)
        await self.runtime.start(f"{self.settings.advertise_host or self.settings.host}:{bound_port}")

    async def drain(self) -> None:
        await self.runtime.drain()

    async def fail(self) -> None:
        await self.runtime.fail()

    async def close(self) -> None:
        await self.runtime.close()
        await self.redis.aclose()
