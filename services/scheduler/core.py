"""The scheduling loop: read request streams, hold work in fair order, place it on workers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from opentelemetry import trace

from llmserve.common import fair_share, tenant_window
from llmserve.common import redis_keys as keys
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger, request_context, trace_id_of
from llmserve.common.metrics import SchedulerMetrics
from llmserve.common.outcome import Outcome
from llmserve.common.prefix_affinity import prefix_key
from llmserve.common.streams import (
    StreamEntry,
    consume_forever,
    ensure_group,
    past_deadline,
    read_group,
    read_own_pending,
    reclaim_stale,
)
from llmserve.common.supervise import Supervisor
from llmserve.common.telemetry import extract_context
from llmserve.common.tokensink.client import OutChunk, SinkClient
from llmserve.common.v1 import work_pb2
from llmserve.common.workers import WorkerLoad, registry_snapshot

from .admission import unmeetable
from .batching import Window, next_close
from .dispatch import CANCELLED, DISPATCHED, NOT_YOUR_TURN, WORKER_GONE, Dispatcher
from .placement import Placement
from .recovery import WorkerRecovery
from .redis_liveness import RedisLiveness
from .settings import SchedulerSettings
from .tenant_stats import TenantStats
from .waiting import Pending, WaitingQueue

log = get_logger(__name__)
_tracer = trace.get_tracer("llmserve.scheduler")


@dataclass(frozen=True)
class QueueStats:
    """One model's queue as this scheduler sees it."""

    model: str
    waiting: int  # entries in its request stream
    workers: int  # live workers serving the model


def pending_from_entry(entry: StreamEntry) -> Pending:
    item = work_pb2.WorkItem.FromString(entry.payload)
    return Pending(
        stream=entry.stream, entry_id=entry.entry_id, request_id=item.request_id, tenant=item.tenant,
        model=item.model, priority=item.priority, deadline_unix_ms=item.deadline_unix_ms,
        reply_to=item.reply_to, attempt=item.attempt,
        need_tokens=len(item.prompt_token_ids) + item.sampling.max_tokens, payload=entry.payload,
        enqueued_unix_ms=item.enqueued_unix_ms, trace_context=dict(item.trace_context),
        max_out=item.sampling.max_tokens, prompt_tokens=len(item.prompt_token_ids),
        prefix=prefix_key(item.prompt_token_ids),
    )


def _log_context(p: Pending):
    """Lines logged while handling `p` carry its request fields (one loop serves them all)."""
    return request_context(p.request_id, trace_id_of(p.trace_context), p.tenant, p.model)


class SchedulerCore:
    def __init__(self, settings: SchedulerSettings, redis: aioredis.Redis, supervisor: Supervisor | None = None):
        self.settings = settings
        self.supervisor = supervisor or Supervisor("scheduler")
        self.redis = redis
        self.waiting = WaitingQueue(settings.tenant_weights, settings.fair_share_unit)
        self.placement = Placement(settings.max_worker_backlog,
                                   settings.affinity_backlog_slack if settings.prefix_affinity else None)
        self.dispatcher = Dispatcher(redis, settings.scheduler_id, settings.tenant_weights,
                                     settings.fair_mark_stale_ms, settings.fair_share_unit)
        self.sink = SinkClient(f"scheduler/{settings.scheduler_id}",
                               auth=InternalAuth.from_settings(settings, "scheduler", settings.scheduler_id))
        self.recovery = WorkerRecovery(redis, self.sink, settings.scheduler_id,
                                       max_attempts=settings.max_attempts)
        self.liveness = RedisLiveness(redis, settings.redis_restart_grace_ms / 1000)
        self.dispatched = 0
        self.tenants = TenantStats(settings.tenant_weights)
        self.metrics = SchedulerMetrics()
        self._streams: set[str] = set()
        self._last_refresh = 0.0
        self._last_reclaim = 0.0
        self._last_publish = 0.0
        self._stopping = False

    async def run(self) -> None:
        # Looked up on every round (not bound once), so a round can be replaced while running.
        await consume_forever(lambda: self.run_once(), lambda: not self._stopping, self._forget_groups)

    async def _forget_groups(self) -> None:
        # Redis lost its data: every stream's group is made again when next seen.
        self._streams.clear()
        self.dispatcher.forget_groups()

    async def run_once(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= self.settings.registry_refresh_ms / 1000:
            await self._refresh()
        if now - self._last_reclaim >= self.settings.reclaim_idle_ms / 3000:
            await self._reclaim()
            self._last_reclaim = now
        if now - self._last_publish >= tenant_window.PUBLISH_EVERY_S:
            # For `llmserve status`, which combines every live replica's window.
            await tenant_window.publish(self.redis, self.settings.scheduler_id, self.settings.fair_share_unit,
                                        self.tenants.window())
            self._last_publish = now
        block: int | None = self.settings.idle_block_ms
        if len(self.waiting):
            # A batching window is open: poll instead of blocking, since Redis ends a blocked
            # read's timeout only at its own cron tick (up to 100 ms late at the default hz).
            windows = {m: self.settings.window(m) for m in {p.model for p in self.waiting.all()}}
            until_close = next_close(windows, self.waiting.all(), time.monotonic())
            if until_close * 1000 < self.settings.idle_block_ms:
                await asyncio.sleep(min(until_close, 0.005))
                block = None
        entries = await read_group(self.redis, keys.SCHEDULER_GROUP, self.settings.scheduler_id,
                                   sorted(self._streams), count=self.settings.read_batch, block_ms=block)
        for entry in entries:
            self.waiting.push(self._pending(entry))
        if len(self.waiting):
            await self._dispatch_ready()

    def _pending(self, entry: StreamEntry) -> Pending:
        p = pending_from_entry(entry)
        target = self.settings.tenant_ttft_target_ms.get(p.tenant, 0)
        if target:
            p.ttft_target_unix_ms = (p.enqueued_unix_ms or int(time.time() * 1000)) + target
        return p

    def stop(self) -> None:
        self._stopping = True

    @property
    def streams(self) -> list[str]:
        """The request streams this scheduler reads, sorted (a copy: safe to iterate across awaits)."""
        return sorted(self._streams)

    async def queue_stats(self) -> list[QueueStats]:
        """Depth and live workers of every model queue this scheduler reads."""
        queues = []
        for stream in self.streams:
            model = stream.removeprefix(keys.request_stream(""))
            depth = await self.redis.xlen(stream)
            workers = sum(1 for w in self.placement.workers.values() if model in w.models)
            queues.append(QueueStats(model, depth, workers))
        return queues

    async def _refresh(self) -> None:
        live, dead = await registry_snapshot(self.redis)
        self.placement.update(live)
        serving = [w for w in live if not w.draining]
        self.metrics.set_workers({m: sum(m in w.models for w in serving) for m in self.placement.models()},
                                 live=len(serving), draining=len(live) - len(serving))
        self._record_queue_depth()
        if dead and not self.supervisor.running("recovery") and await self.liveness.heartbeats_trusted():
            # In the background: fencing asks gateways, and dispatch must not wait for that.
            # Restarted after a failure: every move is guarded, so a second pass moves nothing twice.
            self.supervisor.spawn("recovery", functools.partial(self.recovery.recover, dead))
        models = set(self.settings.models) | self.placement.models()
        for model in models:
            stream = keys.request_stream(model)
            if stream not in self._streams:
                await ensure_group(self.redis, stream, keys.SCHEDULER_GROUP)
                # Entries this consumer read before a restart are still ours to dispatch.
                for entry in await read_own_pending(self.redis, keys.SCHEDULER_GROUP,
                                                    self.settings.scheduler_id, stream):
                    self.waiting.push(self._pending(entry))
                self._streams.add(stream)
        self._last_refresh = time.monotonic()

    async def _reclaim(self) -> None:
        """Take over requests a dead scheduler read but never dispatched; keep ours fresh."""
        held = self.waiting.all()
        for stream in self._streams:
            mine = [p.entry_id for p in held if p.stream == stream]
            if mine:  # reset idle time so no live peer steals what we hold
                await self.redis.xclaim(stream, keys.SCHEDULER_GROUP, self.settings.scheduler_id,
                                        min_idle_time=0, message_ids=mine, justid=True)
            for entry in await reclaim_stale(self.redis, stream, keys.SCHEDULER_GROUP,
                                             self.settings.scheduler_id,
                                             min_idle_ms=self.settings.reclaim_idle_ms):
                if entry.entry_id not in mine:
                    self.waiting.push(self._pending(entry))

    async def _dispatch_ready(self) -> None:
        now_ms = int(time.time() * 1000)
        for p in self.waiting.remove_where(lambda p: past_deadline(p.deadline_unix_ms, now_ms)):
            if await self.dispatcher.drop(p, "expired"):
                self._notify(p, Outcome.DEADLINE_EXCEEDED)
        for (model, priority), state in (await self.dispatcher.mark_held(self.waiting.held_tenants())).items():
            self.waiting.sync(model, priority, *fair_share.parse_state(state))
        blocked_models = await self._dispatch_windows()  # models with a window: not one by one
        not_our_turn: set[tuple[str, int, str]] = set()  # a peer holds a tenant that is further behind
        progress = True
        while progress:
            progress = False
            for p in self.waiting.peek_order():
                if p.model in blocked_models or (p.model, p.priority, p.tenant) in not_our_turn:
                    continue
                worker = self.placement.choose(p.model, p.prefix, p.need_tokens)
                if worker is None:
                    blocked_models.add(p.model)
                    continue
                result = await self._dispatch_one(p, worker)
                if result == NOT_YOUR_TURN:
                    not_our_turn.add((p.model, p.priority, p.tenant))
                progress = True
                break  # the order changed: start again from the best candidate
        await self._refuse_unmeetable()

    async def _dispatch_windows(self) -> set[str]:
        """Dispatch each batching window that is ready, whole, to one worker; the models that have one."""
        windowed = set()
        for model in sorted({p.model for p in self.waiting.all()}):
            window = self.settings.window(model)
            if not window.enabled:
                continue
            windowed.add(model)
            while window.ready([p for p in self.waiting.all() if p.model == model], time.monotonic()):
                worker = self.placement.choose(model)
                if worker is None or not await self._dispatch_batch(model, window, worker):
                    break
        return windowed

    async def _dispatch_batch(self, model: str, window: Window, worker: WorkerLoad) -> int:
        """Up to a window's worth of `model`'s requests, in fair order, all to `worker`."""
        count = tokens = 0
        skip: set[tuple[int, str]] = set()
        while not window.full(count, tokens):
            p = next((q for q in self.waiting.peek_order() if q.model == model and (q.priority, q.tenant) not in skip),
                     None)
            if p is None or (count and not self.placement.has_room(worker)):
                break
            result = await self._dispatch_one(p, worker)
            if result == DISPATCHED:
                count, tokens = count + 1, tokens + p.need_tokens
            elif result == NOT_YOUR_TURN:
                skip.add((p.priority, p.tenant))
            elif result == WORKER_GONE:
                break
        if count:
            log.info("batch dispatched", model=model, worker=worker.worker_id, requests=count, tokens=tokens)
        return count

    async def _refuse_unmeetable(self) -> None:
        """What is still held after dispatch waits: refuse now what cannot start in time."""
        if not len(self.waiting):
            return
        doomed = {id(p) for p in unmeetable(self.waiting.all(), self.placement.workers.values(), time.time() * 1000)}
        if not doomed:
            return
        for p in self.waiting.remove_where(lambda q: id(q) in doomed):
            if await self.dispatcher.drop(p, "refused_deadline"):
                self.tenants.refused(p.tenant)
                self._notify(p, Outcome.DEADLINE_EXCEEDED)

    async def _dispatch_one(self, p: Pending, worker: WorkerLoad) -> int:
        with _log_context(p):
            result = await self.dispatcher.dispatch(p, worker.worker_id, self.waiting.holds(p) == 1)
            if result == DISPATCHED:
                self.waiting.pop(p)
                self.placement.reserve(worker, p.need_tokens, p.model, p.prefix)
                self.dispatched += 1
                waited = max(0.0, time.time() - p.enqueued_unix_ms / 1000) if p.enqueued_unix_ms else 0.0
                self.metrics.dispatched(p.model, p.priority, waited)
                self.tenants.dispatched(p.tenant, p.need_tokens, waited)
                self._trace_dispatch(p, worker.worker_id)
                log.info("dispatched", worker=worker.worker_id, waited_s=round(waited, 4))
            elif result == WORKER_GONE:  # its heartbeat ended since our last registry read
                self.placement.forget(worker.worker_id)
            elif result != NOT_YOUR_TURN:  # cancelled, or a peer handed it over already
                self.waiting.remove_where(lambda q: q is p)
                if result == CANCELLED:
                    self._notify(p, Outcome.CANCELLED)
        self.waiting.sync(p.model, p.priority, *fair_share.parse_state(self.dispatcher.last_state))
        return result

    def _trace_dispatch(self, p: Pending, worker_id: str) -> None:
        """One span from enqueue to dispatch, in the request's trace."""
        start_ns = p.enqueued_unix_ms * 1_000_000 if p.enqueued_unix_ms else None
        span = _tracer.start_span("scheduler.queue", context=extract_context(p.trace_context), start_time=start_ns,
                                  attributes={"llmserve.request_id": p.request_id, "llmserve.worker": worker_id,
                                              "llmserve.priority": p.priority, "llmserve.tenant": p.tenant})
        span.end()

    def _record_queue_depth(self) -> None:
        depth: dict[tuple[str, int], int] = {(m, prio): 0 for m in self.placement.models() for prio in (1, 2, 3)}
        for p in self.waiting.all():
            depth[(p.model, p.priority)] = depth.get((p.model, p.priority), 0) + 1
        for (model, priority), n in depth.items():
            self.metrics.set_queue_depth(model, priority, n)

    def _notify(self, p: Pending, outcome: Outcome) -> None:
        with _log_context(p):
            log.info("request dropped before dispatch", outcome=outcome.value)
        self.sink.send(p.reply_to, [OutChunk(p.request_id, p.attempt, 0, [], "", outcome=outcome)])

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # Redis may be down: the window then expires on its own
            await tenant_window.withdraw(self.redis, self.settings.scheduler_id)
        await self.sink.close()
