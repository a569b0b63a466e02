"""The gateway's domain: authenticate, validate, enqueue, and stream events back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.exceptions import RedisError

from llmserve.common.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, LLMServeError
from llmserve.common.logging import get_logger
from llmserve.common.workers import registry_snapshot

from .auth import ApiKeyAuthenticator
from .catalog import ModelCatalog
from .inflight import Event, FinishEvent, InflightRegistry
from .request_queue import RequestQueue
from .settings import GatewaySettings
from .validation import GenerateParams, Job, validate

log = get_logger(__name__)


class GenerationService:
    def __init__(self, settings: GatewaySettings, auth: ApiKeyAuthenticator, catalog: ModelCatalog,
                 queue: RequestQueue, inflight: InflightRegistry, redis):
        self.settings = settings
        self.redis = redis
        self.auth = auth
        self.catalog = catalog
        self.queue = queue
        self.inflight = inflight
        self.draining = False

    def admit(self, authorization: str | None, params: GenerateParams) -> Job:
        """Authenticate and validate; raises before anything is written anywhere."""
        identity = self.auth.authenticate(authorization)
        if not params.model:
            raise InvalidArgument("model is required")
        model = self.catalog.get(params.model)
        return validate(params, model, identity.tenant, self.settings)

    async def list_models(self) -> list[ModelStatus]:
        return await list_models(self.catalog, self.redis)

    async def stream(self, job: Job, timeout_s: float | None) -> AsyncIterator[Event]:
        """Enqueue the job and yield its events until it finishes.

        Raises the request's error (deadline, cancellation, failure). If the caller stops
        iterating early (client gone), the request is cancelled everywhere.
        """
        timeout = timeout_s if timeout_s is not None else self.settings.default_timeout_s
        deadline = time.monotonic() + timeout
        stream = self.inflight.open(job.request_id)
        if stream is None:
            raise AlreadyExists(f"request_id {job.request_id!r} is already streaming")
        enqueued = finished = False
        try:
            await self.queue.enqueue(job, int((time.time() + timeout) * 1000))
            enqueued = True
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"no result within the deadline ({timeout:.1f}s)")
                try:
                    event = await asyncio.wait_for(stream.events.get(), remaining)
                except TimeoutError:
                    continue
                finished = isinstance(event, FinishEvent | LLMServeError)
                if isinstance(event, LLMServeError):
                    raise event
                yield event
                if finished:
                    return
        finally:
            self.inflight.close(job.request_id)
            if enqueued and not finished:
                await self._cancel(job.request_id, stream.worker_id)

    async def _cancel(self, request_id: str, worker_id: str) -> None:
        log.info("cancelling", request_id=request_id)
        if worker_id:
            self.inflight.notify_worker_cancel(request_id, worker_id)
        await asyncio.shield(self.queue.cancel(request_id))



@dataclass
class ModelStatus:
    name: str
    context_length: int
    ready_workers: int


async def list_models(catalog: ModelCatalog, redis) -> list[ModelStatus]:
    """Served models with the number of live workers for each (0 when Redis is unreachable)."""
    try:
        live, _ = await registry_snapshot(redis)
    except RedisError:
        live = []
    out = []
    for name in catalog.names():
        model = catalog.get(name)
        ready = sum(1 for w in live if name in w.models and not w.draining)
        out.append(ModelStatus(name, model.context_length, ready))
    return out
