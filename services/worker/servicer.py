"""The worker's admin gRPC API: a thin adapter between protobuf and the runtime."""

from __future__ import annotations

import time
from pathlib import Path

from llmserve.common.errors import FailedPrecondition, InvalidArgument, ModelNotFound
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc

from .admin_paths import check_model_ref
from .model_admin import ModelAdmin
from .runtime import WorkerRuntime
from .settings import WorkerSettings


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Worker admin RPCs; domain errors answer their table status through GrpcApp's error path."""

    def __init__(self, runtime: WorkerRuntime, admin: ModelAdmin, settings: WorkerSettings):
        self.runtime = runtime
        self.admin = admin
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

    async def Reattach(self, request, context):
        if not request.request_id or not request.reply_to or request.from_index < 0:
            raise InvalidArgument("request_id, reply_to and from_index >= 0 are required")
        found = self.runtime.reattach(request.request_id, request.reply_to, request.from_index)
        return worker_pb2.ReattachResponse(found=found)

    async def StartProfile(self, request, context):
        if request.num_steps < 1:
            raise InvalidArgument("num_steps must be >= 1")
        models = self.runtime.models.all()
        model = self.runtime.models.find(request.model) if request.model else (models[0] if models else None)
        if model is None:
            raise ModelNotFound(f"model {request.model!r} is not loaded here")
        path = Path(self.settings.profile_dir) / f"{self.settings.worker_id}-{int(time.time())}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.engine.start_profile(request.num_steps, path)
        return worker_pb2.StartProfileResponse(trace_path=str(path.resolve()))

    async def LoadModel(self, request, context):
        try:
            check_model_ref(request.ref, self.settings.model_dirs)
            before = self.runtime.models.serving_ids()
            model = await self.admin.load(request.ref)
        # Missing or unreadable weights, no room left for a KV cache, CUDA out of memory.
        except (OSError, ValueError, RuntimeError) as e:
            raise FailedPrecondition(f"cannot load {request.ref!r}: {e}") from e
        return worker_pb2.LoadModelResponse(served_id=model.served_id, memory_bytes=model.memory_bytes,
                                            already_loaded=model.served_id in before)

    async def UnloadModel(self, request, context):
        if not request.served_id:
            raise InvalidArgument("served_id is required")
        done = await self.admin.unload(request.served_id, force=request.force)
        return worker_pb2.UnloadModelResponse(served_id=done.served_id, freed_bytes=done.freed_bytes,
                                              cancelled=done.cancelled, handed_off=done.handed_off)

    async def ListModels(self, request, context):
        models = self.runtime.models
        return worker_pb2.ListModelsResponse(
            models=[_loaded_pb(m) for m in sorted(models.all(), key=lambda m: m.served_id)],
            loading=models.loading_ids(), memory_budget_bytes=models.budget_bytes,
            memory_used_bytes=models.used_bytes(),
        )


def _loaded_pb(model) -> worker_pb2.LoadedModel:
    load = model.load()
    return worker_pb2.LoadedModel(
        served_id=model.served_id, ref=model.ref, serving=model.serving, memory_bytes=model.memory_bytes,
        total_kv_blocks=load.total_kv_blocks, free_kv_blocks=load.free_kv_blocks, running=load.running,
        waiting=load.waiting,
    )


