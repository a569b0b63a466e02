"""The worker's Redis and token-sink side: take requests from its stream as fast as the
engines can hold them, route each to the engine of its model, publish every step's tokens,
acknowledge finished requests. The models themselves live in `served_models.ModelSet`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import defaultdict

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.exceptions import RedisError

from llmserve.common import redis_keys as keys
from llmserve.common.fair_share import Refunder
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger
from llmserve.common.metrics import WorkerMetrics
from llmserve.common.outcome import Outcome
from llmserve.common.prefix_affinity import prefix_key
from llmserve.common.streams import (
    StreamEntry,
    consume_forever,
    ensure_group,
    past_deadline,
    read_group,
    read_own_pending,
)
from llmserve.common.supervise import Supervisor
from llmserve.common.telemetry import extract_context
from llmserve.common.tokensink.client import OutChunk, SinkClient
from llmserve.common.tokensink.handoff import Handoff
from llmserve.common.v1 import work_pb2
from llmserve.common.workers import WorkerLoad, expire_heartbeat, publish_heartbeat, withdraw

from .active import Active, engine_request, log_context
from .engine.types import TokenOutput
from .engine_thread import EngineThread
from .reattach import ReplyRouter
from .resume import owed_text
from .served_models import ModelSet, ServedModel
from .settings import WorkerSettings
from .step_metrics import record_step, step_of

log = get_logger(__name__)
_tracer = trace.get_tracer("llmserve.worker")
HAND_OFF_FAILED = "failed"  # a hand-off outcome beside handoff's: Redis refused the move


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings, redis: aioredis.Redis, models: ModelSet):
        self.settings = settings
        self.redis = redis
        self.models = models
        self.stream = keys.worker_stream(settings.worker_id)
        self.active: dict[str, Active] = {}
        self.sink = SinkClient(settings.worker_id, on_cancel_from=self._cancel_from,
                               auth=InternalAuth.from_settings(settings, "worker", settings.worker_id))
        self.replies = ReplyRouter(redis, self.sink, settings.worker_id, self.active, self.cancel,
                                   settings.orphan_grace_s, settings.result_ttl_s)
        self.handoff = Handoff(redis, self.sink)
        self.address = ""
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beat_lock = asyncio.Lock()  # see _heartbeat
        self.supervisor = Supervisor("worker")
        self.failed = False
        self._to_ack: list[str] = []
        # Request ids released here whose engine sequence has not finished yet, and the newer
        # attempt of each that waits for it (the engine holds one sequence per request id).
        self._retiring: dict[str, int] = {}  # request id -> the attempt released
        self._deferred: dict[str, tuple[StreamEntry, work_pb2.WorkItem, ServedModel]] = {}
        self._hand_backs: set[asyncio.Future] = set()
        # Finished requests whose unproduced output the tenant's fair share gets back.
        self._refunder = Refunder(redis)
        self._refunds: list[tuple[work_pb2.WorkItem, int]] = []
        self.metrics = WorkerMetrics(settings.worker_id)

    async def start(self, address: str) -> None:
        self.address = address
        self._loop = asyncio.get_running_loop()
        self.supervisor.watch(self._loop)
        for model in self.models.all():
            self.start_model(model)
        await ensure_group(self.redis, self.stream, keys.WORKER_GROUP)
        # Requests read before a restart and never finished are ours to run again.
        await self._take(await read_own_pending(self.redis, keys.WORKER_GROUP, self.settings.worker_id,
                                                 self.stream))
        await self._heartbeat()
        # A dead intake leaves a worker that heartbeats but never reads: fatal. A heartbeat is
        # only a write; restarting it loses nothing.
        self.supervisor.spawn("intake", self._intake_loop, "fatal")
        self.supervisor.spawn("heartbeat", self._heartbeat_loop, "restart")
        self.supervisor.spawn("orphans", lambda: self.replies.watch(self.settings.heartbeat_interval_ms / 1000),
                              "restart")

    def start_model(self, model: ServedModel) -> None:
        """Give a model its own step thread (at start, or once a LoadModel finished)."""
        if self._loop is None:
            return  # not started yet: start() gives every model its thread
        self.metrics.model_started(model.served_id)
        name = f"engine-{model.served_id}"
        model.thread = EngineThread(model.engine, self._loop, self._publish,
                                    functools.partial(self._record_step, model), name=name,
                                    on_failure=functools.partial(self.supervisor.fail_threadsafe, name),
                                    fail_step_after=self.settings.fail_step_after)
        model.thread.start()

    def cancel(self, request_id: str) -> bool:
        """Abort a request held here (its client hears CANCELLED)."""
        active = self.active.get(request_id)
        model = self.models.find(active.model) if active else None
        if active is None or model is None:
            return False
        model.engine.abort_request(request_id)
        model.thread and model.thread.wake()
        return True

    def _cancel_from(self, request_id: str, gateway: str) -> None:
        if self.replies.accepts_cancel(request_id, gateway):
            self.cancel(request_id)

    def reattach(self, request_id: str, reply_to: str, from_index: int) -> bool:
        """Its client re-attached through `reply_to`: stream the request there (see reattach.py)."""
        return self.replies.reattach(request_id, reply_to, from_index)

    async def hand_off(self, served_id: str) -> list[str]:
        """Stop every request of `served_id` here and resume each on another worker from what
        its client already has (a forced unload); the handoff outcome of each."""
        released = [self._release(rid) for rid in self.requests_of(served_id)]
        return list(await asyncio.gather(*(self._resume_elsewhere(a) for a in released)))

    def _release(self, request_id: str) -> Active:
        """Forget a request without a word to its client: its engine outputs are dropped from now on."""
        active = self.active.pop(request_id)
        model = self.models.find(active.model)
        if model is not None:
            self._retiring[request_id] = active.attempt
            model.engine.abort_request(request_id)
            model.thread and model.thread.wake()
        active.span.set_attribute("llmserve.finish_reason", "handed_off")
        active.span.end()
        return active

    async def _resume_elsewhere(self, active: Active) -> str:
        item = work_pb2.WorkItem.FromString(active.payload)
        try:
            return await self.handoff.resume_elsewhere(self.stream, active.entry_id, item)
        except RedisError as e:  # it cannot move: tell the client to retry rather than leave it waiting
            with log_context(item):
                log.warning("hand-off failed", error=type(e).__name__)
            self.sink.send(item.reply_to, [OutChunk(item.request_id, item.attempt + 1, 0, [], "", outcome=Outcome.ERROR,
                                                    error=f"{item.model} was unloaded and the request could not "
                                                          f"be moved to another worker; retry it")])  # fmt: skip
            return HAND_OFF_FAILED

    def requests_of(self, served_id: str) -> list[str]:
        return [rid for rid, a in self.active.items() if a.model == served_id]

    def load(self) -> WorkerLoad:
        """Heartbeat: serving models with their own load; totals over every engine held."""
        loads = {m.served_id: m.load() for m in self.models.all()}
        serving = self.models.serving_ids()
        return WorkerLoad(
            worker_id=self.settings.worker_id, address=self.address, models=serving,
            total_kv_blocks=sum(x.total_kv_blocks for x in loads.values()),
            free_kv_blocks=sum(x.free_kv_blocks for x in loads.values()),
            block_size=next((x.block_size for x in loads.values()), 16),
            running=sum(x.running for x in loads.values()), waiting=sum(x.waiting for x in loads.values()),
            draining=self.draining, model_loads={m: loads[m] for m in serving},
            max_backlog=self.settings.max_backlog,
        )

    async def publish_load(self) -> None:
        """Heartbeat now (a model came or went); the loop's next beat retries on failure."""
        if self._loop is None:
            return
        try:
            await self._heartbeat()
        except RedisError as e:
            log.warning("heartbeat failed", error=type(e).__name__)

    def _waiting(self) -> int:
        return sum(m.engine.stats().waiting for m in self.models.all())

    async def _intake_loop(self) -> None:
        await consume_forever(self._intake_once, lambda: not self.draining,
                              lambda: ensure_group(self.redis, self.stream, keys.WORKER_GROUP))

    async def _intake_once(self) -> None:
        room = self.settings.max_backlog - self._waiting()
        if room <= 0:
            await asyncio.sleep(0.005)
            return
        entries = await read_group(self.redis, keys.WORKER_GROUP, self.settings.worker_id,
                                   [self.stream], count=room, block_ms=50)
        await self._take(entries)
        await self._flush_acks()

    async def _take(self, entries: list[StreamEntry]) -> None:
        if not entries:
            return
        now_ms = time.time() * 1000
        woken: dict[str, ServedModel] = {}
        started: list[str] = []
        for entry in entries:
            item = work_pb2.WorkItem.FromString(entry.payload)
            if past_deadline(item.deadline_unix_ms, now_ms):
                self._refuse(entry, item, Outcome.DEADLINE_EXCEEDED)
                continue
            model = self.models.serving(item.model)
            if model is None:  # placed from a stale heartbeat: never taken, never dropped
                if await self.handoff.hand_back(self.stream, entry.entry_id, item, entry.payload):
                    log.info("handed back work for a model not served here", request_id=item.request_id,
                             model=item.model)
                continue
            if not self._admit_duplicate(entry, item, model):
                continue
            self._start(entry, item, model)
            woken[model.served_id] = model
            started.append(item.request_id)
        for model in woken.values():
            model.thread and model.thread.wake()
        # A client may have cancelled between dispatch and now. Checked after the engines are
        # woken, so this round trip overlaps the first step instead of delaying it; a flagged
        # request ends CANCELLED at the next step boundary.
        if started:
            flags = await self.redis.mget([keys.cancel_key(r) for r in started])
            for request_id, flag in zip(started, flags, strict=True):
                if flag is not None:
                    self.cancel(request_id)
            # Its client may have re-attached through another gateway while it was queued.
            await self.replies.adopt_owners(started)

    def _admit_duplicate(self, entry: StreamEntry, item: work_pb2.WorkItem, model: ServedModel) -> bool:
        """True if `item` may start now. A second delivery of a request held here (a Redis
        restart, a copied entry) is acknowledged and dropped when its attempt is not newer; a
        newer attempt replaces the old sequence, and starts once the engine has let it go."""
        rid = item.request_id
        held = self.active.get(rid)
        if held is None and rid not in self._retiring:
            return True
        newest = held.attempt if held is not None else self._retiring[rid]
        if rid in self._deferred:
            newest = max(newest, self._deferred[rid][1].attempt)
        if item.attempt <= newest:
            if held is None or entry.entry_id != held.entry_id:
                log.warning("duplicate delivery ignored", request_id=rid, attempt=item.attempt,
                            held_attempt=newest)
                self._to_ack.append(entry.entry_id)
            return False
        if held is not None:
            log.warning("newer attempt replaces the one held here", request_id=rid, attempt=item.attempt,
                        held_attempt=held.attempt)
            self._to_ack.append(self._release(rid).entry_id)
        superseded = self._deferred.pop(rid, None)
        if superseded is not None:
            self._to_ack.append(superseded[0].entry_id)
        self._deferred[rid] = (entry, item, model)
        return False

    def _start_deferred(self, request_id: str) -> None:
        """The engine let go of `request_id`: start the attempt that waited for it."""
        self._retiring.pop(request_id, None)
        waiting = self._deferred.pop(request_id, None)
        if waiting is None:
            return
        entry, item, model = waiting
        if self.models.serving(model.served_id) is not model:  # unloaded meanwhile: the queue takes it
            task = asyncio.ensure_future(self.handoff.hand_back(self.stream, entry.entry_id, item, entry.payload))
            self._hand_backs.add(task)
            task.add_done_callback(self._hand_backs.discard)
            return
        self._start(entry, item, model)
        model.thread and model.thread.wake()

    def _refuse(self, entry: StreamEntry, item: work_pb2.WorkItem, outcome: Outcome) -> None:
        self.sink.send(item.reply_to, [OutChunk(item.request_id, item.attempt, len(item.resume_token_ids), [], "",
                                                outcome=outcome)])
        self._to_ack.append(entry.entry_id)

    def _start(self, entry: StreamEntry, item: work_pb2.WorkItem, model: ServedModel) -> None:
        tokenizer = getattr(model.engine, "tokenizer", None)
        active = Active(entry.entry_id, item.reply_to, item.attempt, item.deadline_unix_ms, model.served_id,
                        owed_text(tokenizer, list(item.prompt_token_ids), list(item.resume_token_ids),
                                  item.resume_text), payload=entry.payload, tenant=item.tenant)
        active.span = _tracer.start_span(
            "worker.generate", context=extract_context(dict(item.trace_context)),
            attributes={"llmserve.request_id": item.request_id, "llmserve.worker": self.settings.worker_id,
                        "llmserve.model": model.served_id, "llmserve.attempt": item.attempt,
                        "llmserve.prompt_tokens": len(item.prompt_token_ids)})
        self.active[item.request_id] = active
        model.engine.add_request(engine_request(item))
        model.prefixes.add(prefix_key(item.prompt_token_ids))
        with log_context(item):
            log.info("request started", worker=self.settings.worker_id, attempt=item.attempt,
                     prompt_tokens=len(item.prompt_token_ids))

    def _publish(self, outputs: list[TokenOutput]) -> None:
        """Called on the event loop after each engine step."""
        by_gateway: dict[str, list[OutChunk]] = defaultdict(list)
        for out in outputs:
            active = self.active.get(out.request_id)
            if active is None:
                if out.finished and out.request_id in self._retiring:
                    self._start_deferred(out.request_id)
                continue
            text, active.owed_text = active.owed_text + out.text, ""
            outcome = out.finish_reason or Outcome.UNSPECIFIED
            chunk = OutChunk(out.request_id, active.attempt, out.index, out.token_ids, text,
                             outcome=outcome, prompt_tokens=out.prompt_tokens,
                             completion_tokens=out.completion_tokens, error=out.error or "",
                             logprobs=out.logprobs, prompt_logprobs=out.prompt_logprobs)
            active.sent.append(chunk)
            by_gateway[active.reply_to].append(chunk)
            if out.finished:
                if active.payload:
                    item = work_pb2.WorkItem.FromString(active.payload)
                    with log_context(item):
                        log.info("request finished", outcome=outcome, completion_tokens=out.completion_tokens)
                    self._refunds.append((item, out.completion_tokens))
                served = self.models.serving(active.model)
                if served is not None:
                    served.rates.finished(out.completion_tokens)
                del self.active[out.request_id]
                self.replies.finished(out.request_id, active)
                active.span.set_attribute("llmserve.completion_tokens", out.completion_tokens)
                active.span.set_attribute("llmserve.finish_reason", outcome)
                active.span.end()
                self._to_ack.append(active.entry_id)
        for reply_to, chunks in by_gateway.items():
            self.sink.send(reply_to, chunks)

    def _record_step(self, model: ServedModel, seconds: float, outputs: list[TokenOutput]) -> None:
        """Metrics of one step, from the engine's own account of it (on the engine thread)."""
        record_step(self.metrics, model.served_id, model.engine, seconds, outputs)
        model.rates.record(step_of(model.engine, outputs), seconds)

    async def _flush_acks(self) -> None:
        await self._flush_refunds()
        if not self._to_ack:
            return
        ids, self._to_ack = self._to_ack, []
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(self.stream, keys.WORKER_GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()
        except RedisError:
            self._to_ack.extend(ids)
            raise

    async def _flush_refunds(self) -> None:
        refunds, self._refunds = self._refunds, []
        for item, produced in refunds:
            try:
                await self._refunder.refund(item.request_id, item.tenant, item.model, item.priority, produced)
            except RedisError as e:  # only the tenant's share is off by what it did not use
                log.warning("fair-share refund failed", request_id=item.request_id, error=type(e).__name__)

    async def _heartbeat(self) -> None:
        # One beat at a time, and never after `fail` withdrew it: a beat already on the wire
        # when the worker failed would otherwise land after the withdrawal and revive it.
        async with self._beat_lock:
            if self.failed:  # out of service for good: recovery is moving our work
                return
            load = self.load()
            for served_id, m in load.model_loads.items():
                self.metrics.set_kv_blocks(served_id, m.total_kv_blocks - m.free_kv_blocks, m.free_kv_blocks)
            await publish_heartbeat(self.redis, load, self.settings.heartbeat_ttl_ms)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_ms / 1000)
            try:
                await self._heartbeat()
                await self._flush_acks()
            except RedisError as e:
                log.warning("heartbeat failed", error=type(e).__name__)

    async def drain(self) -> None:
        """Stop taking work, let running requests finish (the bootstrap bounds the wait)."""
        self.draining = True
        try:
            await self._heartbeat()  # "draining": the scheduler sends nothing more here
        except RedisError as e:  # Redis down: the running requests still finish and are delivered
            log.warning("draining without a heartbeat", error=type(e).__name__)
        while self.active:
            await asyncio.sleep(0.02)
        try:
            await self._flush_acks()
        except RedisError as e:  # unacknowledged entries are re-read: duplicates are dropped by attempt
            log.warning("draining: acknowledgements not flushed", error=type(e).__name__)

    async def fail(self) -> None:
        """A fatal failure (an engine or the intake died): take no more work and leave what is
        held here to the schedulers' recovery, which resumes each request on another worker
        from what its client has (and dead-letters one that keeps killing workers). Deleting
        the heartbeat, not the registration, is what makes this worker dead to them at once."""
        self.failed = self.draining = True
        for model in self.models.all():
            model.serving = False
        # Dead to the schedulers first: stopping the other loops may take a while. Under the
        # beat lock: a beat in progress finishes first, and none starts after.
        try:
            async with self._beat_lock:
                await expire_heartbeat(self.redis, self.settings.worker_id)
        except RedisError as e:  # it expires by its TTL instead
            log.warning("could not withdraw the heartbeat", error=type(e).__name__)
        await self.supervisor.stop()
        with contextlib.suppress(RedisError):  # a heartbeat sent while the loops stopped
            await expire_heartbeat(self.redis, self.settings.worker_id)

    async def close(self) -> None:
        await self.supervisor.stop()
        for model in self.models.all():
            model.thread and model.thread.stop()
        await self.sink.close()
        try:
            await self._flush_acks()
            # Leftovers (and everything after a failure) stay registered for recovery.
            if not self.active and not self.failed:
                await withdraw(self.redis, self.settings.worker_id)
        except RedisError:
            pass
