"""Loading and unloading models on a running worker (the LoadModel/UnloadModel RPCs).

A load runs its blocking part (reading weights, building the engine) on a thread of its
own, so the other models' engine threads keep stepping and the event loop keeps streaming.
An unload stops advertising the model first (an immediate heartbeat), then lets its
requests finish (or, forced, hands them to other workers, each resuming right after what its
client already received, as dead-worker recovery does), then frees it.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass

import torch

from llmserve.common.errors import ResourceExhausted
from llmserve.common.logging import get_logger
from llmserve.common.tokensink.handoff import ABANDONED, REQUEUED

from .model_loading import build_engine, engine_memory_bytes, estimate_bytes, resolve_spec
from .runtime import HAND_OFF_FAILED, WorkerRuntime
from .served_models import ServedModel
from .settings import WorkerSettings

log = get_logger(__name__)


@dataclass
class Unloaded:
    served_id: str
    freed_bytes: int
    cancelled: int  # requests a forced unload ended here: no client waited, or the hand-off failed
    handed_off: int = 0  # requests a forced unload requeued to resume on another worker


class ModelAdmin:
    def __init__(self, runtime: WorkerRuntime, settings: WorkerSettings):
        self.runtime = runtime
        self.models = runtime.models
        self.settings = settings

    async def load(self, ref: str) -> ServedModel:
        """Load `ref` (idempotent: an id already served here is returned as it is)."""
        spec = await resolve_spec(ref, self.runtime.redis)
        existing = self.models.serving(spec.served_id)
        if existing is not None:
            return existing
        self.models.reserve(spec.served_id, await asyncio.to_thread(estimate_bytes, spec, self.settings))
        try:
            log.info("loading model", model=spec.served_id, ref=ref, path=str(spec.path))
            engine = await asyncio.to_thread(build_engine, spec, self.settings)
            model = ServedModel(spec.served_id, engine, await asyncio.to_thread(engine_memory_bytes, engine), ref)
            try:
                self.models.add(model)
            except ResourceExhausted:
                del engine, model
                await asyncio.to_thread(_collect)
                raise
        finally:
            self.models.cancel_reservation(spec.served_id)
        self.runtime.start_model(model)
        await self.runtime.publish_load()
        log.info("model loaded", model=model.served_id, memory_bytes=model.memory_bytes)
        return model

    async def unload(self, served_id: str, force: bool = False) -> Unloaded:
        """Stop advertising `served_id`, drain (or with `force` hand off) its requests, free it."""
        model = self.models.begin_unload(served_id)
        await self.runtime.publish_load()
        outcomes = await self.runtime.hand_off(served_id) if force else []
        handed_off = outcomes.count(REQUEUED)
        cancelled = sum(1 for o in outcomes if o in (ABANDONED, HAND_OFF_FAILED))
        while self.runtime.requests_of(served_id) or model.engine.has_unfinished():
            await asyncio.sleep(0.02)
        freed = model.memory_bytes
        if self.models.find(served_id) is model:  # a concurrent unload may have finished first
            self.models.remove(served_id)
            del model  # the last reference: the engine's memory goes with the collection below
            await asyncio.to_thread(_collect)
            await self.runtime.publish_load()
            log.info("model unloaded", model=served_id, freed_bytes=freed, handed_off=handed_off,
                     cancelled=cancelled)
        return Unloaded(served_id, freed, cancelled, handed_off)

def _collect() -> None:
    # Engines hold reference cycles (runner <-> timer); collect now so the memory goes now.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
