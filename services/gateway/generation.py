"""The gateway's domain: authenticate, validate, enqueue, and stream events back."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.exceptions import RedisError

from llmserve.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    LLMServeError,
    Unavailable,
)
from llmserve.common.logging import get_logger
from llmserve.common.workers import registry_snapshot

from .auth import Authenticator, Identity
from .catalog import ModelCatalog
from .inflight import Event, FinishEvent, InflightRegistry, TokenEvent
from .ratelimit import RateLimiter
from .request_queue import RequestQueue
from .settings import GatewaySettings
from .validation import GenerateParams, Job, validate

log = get_logger(__name__)


class GenerationService:
    """The one path every front end (gRPC, HTTP, WebSocket) takes: admit, then stream."""

    def __init__(self, settings: GatewaySettings, auth: Authenticator, catalog: ModelCatalog,
                 queue: RequestQueue, inflight: InflightRegistry, redis, limiter: RateLimiter):
        self.settings = settings
        self.redis = redis
        self.auth = auth
        self.catalog = catalog
        self.queue = queue
        self.inflight = inflight
        self.limiter = limiter
        self.draining = False

    async def identify(self, authorization: str | None) -> Identity:
        return await self.auth.authenticate(authorization)

    async def admit(self, authorization: str | None, params: GenerateParams) -> Job:
        """Authenticate, authorize, validate, then take a rate-limit lease.

        Everything before the lease is checked without writing anything anywhere; the
        returned job must be passed to `stream`, which gives the lease back.
        """
        if self.draining:
            raise Unavailable("the gateway is draining; retry on another replica", retry_after_s=1.0)
        identity = await self.auth.authenticate(authorization)
        if not params.model:
            raise InvalidArgument("model is required")
        model = self.catalog.get(params.model)
        identity.check_model(model.name)
        job = validate(params, model, identity.tenant, self.settings)
        reserved = len(job.prompt_token_ids) + job.sampling.max_tokens
        lease = await self.limiter.acquire(identity.tenant, identity.limits, reserved)
        return dataclasses.replace(job, lease=lease)

    async def list_models(self) -> list[ModelStatus]:
        return await list_models(self.catalog, self.redis)

    async def stream(self, job: Job, timeout_s: float | None) -> AsyncIterator[Event]:
        """Enqueue the job and yield its events until it finishes.

        Raises the request's error (deadline, cancellation, failure). If the caller stops
        iterating early (client gone), the request is cancelled everywhere. Either way the
        job's rate-limit lease is released with the tokens really used.
        """
        used = _Usage(len(job.prompt_token_ids))
        try:
            async for event in self._events(job, timeout_s):
                used.count(event)
                yield event
        finally:
            if job.lease is not None:
                await asyncio.shield(self.limiter.release(job.lease, used.total))

    async def _events(self, job: Job, timeout_s: float | None) -> AsyncIterator[Event]:
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


class _Usage:
    """Tokens a request really used: the prompt plus the completion tokens delivered."""

    def __init__(self, prompt_tokens: int):
        self.prompt = prompt_tokens
        self.completion = 0
        self.final: int | None = None

    def count(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self.completion += len(event.token_ids)
        elif isinstance(event, FinishEvent):
            self.final = event.prompt_tokens + event.completion_tokens

    @property
    def total(self) -> int:
        return self.final if self.final is not None else self.prompt + self.completion


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
