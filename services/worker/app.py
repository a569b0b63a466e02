"""Wires the worker: settings -> model -> engine -> runtime -> gRPC server."""

from __future__ import annotations

import time
from pathlib import Path

import redis.asyncio as aioredis
import torch

from llmserve.common.logging import get_logger
from llmserve.common.model_store import resolve_model
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc

from .engine.config import EngineConfig
from .engine.llm_engine import LLMEngine
from .runtime import WorkerRuntime
from .settings import WorkerSettings

log = get_logger(__name__)


def build_engine(settings: WorkerSettings) -> tuple[LLMEngine, str]:
    path = resolve_model(settings.model, log=lambda msg: log.info(msg))
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = EngineConfig(
        model=path, device=device, dtype=settings.dtype, kv_cache_bytes=settings.kv_cache_bytes,
        num_kv_blocks=settings.num_kv_blocks, gpu_memory_fraction=settings.gpu_memory_fraction,
        max_num_seqs=settings.max_num_seqs, max_num_batched_tokens=settings.max_num_batched_tokens,
        num_threads=settings.num_threads,
    )
    started = time.monotonic()
    engine = LLMEngine.from_config(config)
    log.info("engine ready", model=settings.model, device=device, seconds=round(time.monotonic() - started, 2))
    name = Path(settings.model).name if Path(settings.model).is_dir() else settings.model
    return engine, name


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, runtime: WorkerRuntime, settings: WorkerSettings):
        self.runtime = runtime
        self.settings = settings

    async def GetStatus(self, request, context):
        load = self.runtime.load()
        return worker_pb2.GetStatusResponse(
            worker_id=load.worker_id, models=load.models, total_kv_blocks=load.total_kv_blocks,
            free_kv_blocks=load.free_kv_blocks, running=load.running, waiting=load.waiting,
            block_size=load.block_size,
        )

    async def CancelRequest(self, request, context):
        return worker_pb2.CancelRequestResponse(found=self.runtime.cancel(request.request_id))

    async def StartProfile(self, request, context):
        import grpc

        if request.num_steps < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "num_steps must be >= 1")
        path = Path(self.settings.profile_dir) / f"{self.settings.worker_id}-{int(time.time())}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.runtime.engine.start_profile(request.num_steps, path)
        return worker_pb2.StartProfileResponse(trace_path=str(path.resolve()))


class WorkerService:
    service_names = (worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,)

    def __init__(self, settings: WorkerSettings, engine=None, model_name: str | None = None):
        self.settings = settings
        if engine is None:
            engine, model_name = build_engine(settings)
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.runtime = WorkerRuntime(settings, self.redis, engine, model_name or settings.model)

    def register(self, server) -> None:
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(self.runtime, self.settings), server)

    async def start(self, bound_port: int) -> None:
        await self.runtime.start(f"{self.settings.advertise_host or self.settings.host}:{bound_port}")

    async def drain(self) -> None:
        await self.runtime.drain()

    async def close(self) -> None:
        await self.runtime.close()
        await self.redis.aclose()
