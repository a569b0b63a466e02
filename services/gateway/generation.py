"""The gateway's domain: authenticate, validate, enqueue, and stream events back."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

from opentelemetry import trace

from llmserve.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    LLMServeError,
    RateLimited,
    RequestNotFound,
    Unavailable,
    status_code_for,
)
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import bind_request, get_logger, trace_id_of
from llmserve.common.metrics import GatewayMetrics, status_label

from .admission.auth import Authenticator, Identity
from .admission.ratelimit import RateLimiter
from .admission.validation import GenerateParams, Job, Sampling, check_request_id, validate
from .routing.catalog import ModelCatalog
from .routing.model_list import ModelLister, ModelStatus
from .routing.router import ModelRouter
from .settings import GatewaySettings
from .streams.inflight import Event, FinishEvent, InflightRegistry, RequestStream, TokenEvent
from .streams.reattach import Reattacher
from .streams.request_queue import RequestQueue

log = get_logger(__name__)
_tracer = trace.get_tracer("llmserve.gateway")
# A request silent this long is checked for in Redis: one that came back empty (restarted
# without persistence) has lost it, and the client should hear so rather than wait it out.
_WATCH_S = 5.0


class GenerationService:
    """The one path every front end (gRPC, HTTP, WebSocket) takes: admit, then stream."""

    def __init__(self, settings: GatewaySettings, auth: Authenticator, catalog: ModelCatalog,
                 queue: RequestQueue, inflight: InflightRegistry, redis, limiter: RateLimiter,
                 reattacher: Reattacher | None = None):
        self.settings = settings
        self.redis = redis
        self.auth = auth
        self.catalog = catalog
        self.queue = queue
        self.inflight = inflight
        self.limiter = limiter
        self.reattacher = reattacher or Reattacher(redis, InternalAuth())
        self.draining = False
        self.metrics = GatewayMetrics()
        self.router = ModelRouter(catalog, redis, settings)
        self.lister = ModelLister(catalog, self.router, redis)

    async def identify(self, authorization: str | None) -> Identity:
        return await self.auth.authenticate(authorization)

    async def admit(self, authorization: str | None, params: GenerateParams) -> Job:
        """Authenticate, authorize, validate, then take a rate-limit lease.

        Everything before the lease is checked without writing anything anywhere; the
        returned job must be passed to `stream`, which gives the lease back.
        """
        try:
            return await self._check_and_reserve(authorization, params)
        except LLMServeError as e:
            # Refused before it started: counted by status, but never active, so not "finished".
            self.metrics.request_refused(params.model, status_label(status_code_for(e)))
            if isinstance(e, RateLimited):
                self.metrics.rate_limited("", "admission")
            raise

    async def _check_and_reserve(self, authorization: str | None, params: GenerateParams) -> Job:
        received_at = time.monotonic()
        if self.draining:
            raise Unavailable("the gateway is draining; retry on another replica", retry_after_s=1.0)
        identity = await self.auth.authenticate(authorization)
        if params.resume_from_index is not None:
            return await self._admit_reattach(identity, params, received_at)
        if not params.model:
            raise InvalidArgument("model is required")
        params = dataclasses.replace(params, request_id=params.request_id or uuid.uuid4().hex)
        route = await self.router.route(params.model, identity.tenant, params.request_id)
        identity.check_model(route.requested)
        job = validate(params, route.model, identity.tenant, self.settings)
        reserved = len(job.prompt_token_ids) + job.sampling.max_tokens
        lease = await self.limiter.acquire(identity.tenant, identity.limits, reserved)
        return dataclasses.replace(job, lease=lease, received_at=received_at)

    async def _admit_reattach(self, identity: Identity, params: GenerateParams, received_at: float) -> Job:
        """A re-attach: the same tenant's request, streamed from the client's index on. It takes
        no new lease: it holds the one its first gateway took (admission already counted it)."""
        if not params.request_id:
            raise InvalidArgument("resume_from_index needs the request_id of the request to re-attach to")
        if params.resume_from_index is None or params.resume_from_index < 0:
            raise InvalidArgument("resume_from_index must be >= 0")
        check_request_id(params.request_id)
        record = await self.reattacher.check(params.request_id, identity.tenant)
        lease = self.limiter.adopt(identity.tenant, record.lease_id) if record.lease_id else None
        return Job(request_id=params.request_id, tenant=identity.tenant, model=record.model, prompt_token_ids=[],
                   sampling=_UNUSED_SAMPLING, priority=0, lease=lease, received_at=received_at,
                   resume_from=params.resume_from_index)

    async def list_models(self) -> list[ModelStatus]:
        return await self.lister.listing()

    async def stream(self, job: Job, timeout_s: float | None) -> AsyncIterator[Event]:
        """Enqueue the job and yield its events until it finishes.

        Raises the request's error (deadline, cancellation, failure). If the caller stops
        iterating early (client gone), the request is cancelled everywhere. Either way the
        job's rate-limit lease is released with the tokens really used.
        """
        used = _Usage(len(job.prompt_token_ids))
        span = _tracer.start_span("gateway.generate", attributes={
            "llmserve.request_id": job.request_id, "llmserve.model": job.model, "llmserve.tenant": job.tenant,
            "llmserve.prompt_tokens": len(job.prompt_token_ids)})
        # Every later line of this request's task (servicer, HTTP handler) carries these.
        bind_request(job.request_id, trace_id_of(span=span), job.tenant, job.model)
        clock = _Clock(self.metrics, job)
        events = self._events(job, timeout_s, trace.set_span_in_context(span))
        try:
            async for event in events:
                clock.observe(event)
                used.count(event)
                yield event
        except LLMServeError as e:
            clock.status = status_label(status_code_for(e))
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # A caller that stops right after the FinishEvent (a whole completion returning
            # from inside its `async for`) closes us too: it got everything, so that is ok.
            if not clock.finished:
                clock.status = "cancelled"
            raise
        finally:
            # Closed between events (an HTTP or WebSocket writer gone), `events` is suspended at
            # its own yield: close it now, so the request is cancelled everywhere at once rather
            # than whenever the garbage collector finalizes it.
            await events.aclose()
            clock.finish()
            span.set_attribute("llmserve.status", clock.status)
            span.set_attribute("llmserve.completion_tokens", used.completion)
            span.end()
            if job.lease is not None:
                await asyncio.shield(self.limiter.release(job.lease, used.total))

    async def _events(self, job: Job, timeout_s: float | None, trace_context) -> AsyncIterator[Event]:
        timeout = timeout_s if timeout_s is not None else self.settings.default_timeout_s
        deadline = time.monotonic() + timeout
        stream = self.inflight.open(job.request_id, replace=job.resume_from is not None)
        if stream is None:
            raise AlreadyExists(f"request_id {job.request_id!r} is already streaming")
        enqueued = finished = False
        try:
            if job.resume_from is None:
                await self.queue.enqueue(job, int((time.time() + timeout) * 1000), trace_context)
            else:
                await self._reattach(job, stream)
            enqueued = True
            self.metrics.request_started(job.model, job.tenant, len(job.prompt_token_ids))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"no result within the deadline ({timeout:.1f}s)")
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns an event that
                    # arrives in the loop turn the client's cancel lands, swallowing the cancel,
                    # and the stream then runs to its end for nobody, holding its lease.
                    async with asyncio.timeout(min(remaining, _WATCH_S)):
                        event = await stream.events.get()
                except TimeoutError:
                    if not await self.queue.still_known(job.request_id):
                        raise Unavailable("the request was lost while Redis was down; retry it",
                                          retry_after_s=1.0) from None
                    continue
                finished = isinstance(event, FinishEvent | LLMServeError)
                if isinstance(event, LLMServeError):
                    raise event
                yield event
                if finished:
                    return
        finally:
            self.inflight.close(job.request_id, stream)
            if enqueued and not finished:
                await self._cancel(job.request_id, stream.worker_id)

    async def _reattach(self, job: Job, stream: RequestStream) -> None:
        """Own the request from now on and get its tokens from the client's index: from the
        worker that runs it, or from its stored result once it finished."""
        assert job.resume_from is not None
        stream.next_index = job.resume_from
        reply_to = self.queue.reply_to
        worker, state = await self.reattacher.take_over(job.request_id, job.tenant, reply_to)
        if worker and await self.reattacher.redirect(worker, job.request_id, reply_to, job.resume_from):
            return
        # Finished (its result is stored), or between workers (the next one reads the record
        # and streams here), or still queued: the worker that takes it reads the record too.
        result = await self.reattacher.stored_result(job.request_id)
        if result is None and state == "finished":
            raise RequestNotFound(f"request {job.request_id!r} finished and its result is no longer kept")
        for chunk in result or ():
            stream.offer(chunk)
        log.info("re-attached", request_id=job.request_id, from_index=job.resume_from, worker=worker,
                 from_stored_result=result is not None)

    async def _cancel(self, request_id: str, worker_id: str) -> None:
        log.info("cancelling", request_id=request_id)
        if worker_id:
            self.inflight.notify_worker_cancel(request_id, worker_id)
        await asyncio.shield(self.queue.cancel(request_id))


# A re-attach runs with the sampling of the request it joins; this is never sent anywhere.
_UNUSED_SAMPLING = Sampling(max_tokens=0, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, stop=(),
                            seed=None)


class _Clock:
    """TTFT, inter-token gaps and end-to-end time of one request, recorded as metrics."""

    def __init__(self, metrics: GatewayMetrics, job: Job):
        self.metrics = metrics
        self.job = job
        self.started = job.received_at or time.monotonic()  # the client's clock starts at its call
        self.last: float | None = None
        self.status = "ok"
        self.finished = False  # the FinishEvent went out

    def observe(self, event: Event) -> None:
        if isinstance(event, FinishEvent):
            self.finished = True
        if not isinstance(event, TokenEvent) or not event.token_ids:
            return
        now = time.monotonic()
        if self.last is None:
            self.metrics.first_token(self.job.model, self.job.tenant, now - self.started)
        gap = None if self.last is None else now - self.last
        self.metrics.tokens_delivered(self.job.model, self.job.tenant, len(event.token_ids), gap)
        self.last = now

    def finish(self) -> None:
        e2e_s = time.monotonic() - self.started
        self.metrics.request_finished(self.job.model, self.job.tenant, self.status, e2e_s)
        log.info("request finished", status=self.status, e2e_s=round(e2e_s, 4))


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

