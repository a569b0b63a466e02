"""The worker's Redis and token-sink side: take requests from its stream as fast as the
engine can hold them, publish every step's tokens, acknowledge finished requests."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.exceptions import RedisError

from llmserve.common import redis_keys as keys
from llmserve.common.logging import get_logger
from llmserve.common.metrics import WorkerMetrics
from llmserve.common.streams import StreamEntry, ensure_group, read_group, read_own_pending
from llmserve.common.telemetry import extract_context
from llmserve.common.v1 import work_pb2
from llmserve.common.workers import WorkerLoad, publish_heartbeat
from llmserve.gateway.sink_client import OutChunk, SinkClient

from .engine.interface import Engine
from .engine.types import EngineRequest, FinishReason, SamplingParams, TokenOutput
from .engine_thread import EngineThread
from .resume import owed_text
from .settings import WorkerSettings

log = get_logger(__name__)
_tracer = trace.get_tracer("llmserve.worker")


@dataclass
class Active:
    """A request this worker holds: where its tokens go and which entry to acknowledge."""

    entry_id: str
    reply_to: str
    attempt: int
    deadline_unix_ms: int
    owed_text: str = ""  # decoded by a previous attempt, never delivered: goes out first
    span: Any = None  # the request's "worker.generate" span, in the gateway's trace


def engine_request(item: work_pb2.WorkItem) -> EngineRequest:
    s = item.sampling
    return EngineRequest(
        request_id=item.request_id,
        prompt_token_ids=list(item.prompt_token_ids),
        sampling=SamplingParams(
            max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            repetition_penalty=s.repetition_penalty, stop=tuple(s.stop),
            seed=s.seed if s.has_seed else None,
        ),
        resume_token_ids=list(item.resume_token_ids),
        deadline=item.deadline_unix_ms / 1000 if item.deadline_unix_ms else None,
    )


def _outcome(out: TokenOutput, active: Active) -> str:
    if not out.finished:
        return ""
    reason = out.finish_reason
    if reason == FinishReason.CANCELLED and 0 < active.deadline_unix_ms <= time.time() * 1000:
        return "deadline"
    return {FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
            FinishReason.CANCELLED: "cancelled", FinishReason.ERROR: "error"}[reason]


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings, redis: aioredis.Redis, engine: Engine, model_name: str):
        self.settings = settings
        self.redis = redis
        self.engine = engine
        self.model_name = model_name
        self.stream = keys.worker_stream(settings.worker_id)
        self.active: dict[str, Active] = {}
        self.sink = SinkClient(settings.worker_id, on_cancel=self.cancel)
        self.address = ""
        self.draining = False
        self._thread: EngineThread | None = None
        self._tasks: list[asyncio.Task] = []
        self._to_ack: list[str] = []
        self.metrics = WorkerMetrics(settings.worker_id)

    async def start(self, address: str) -> None:
        self.address = address
        self._thread = EngineThread(self.engine, asyncio.get_running_loop(), self._publish, self._record_step)
        self._thread.start()
        await ensure_group(self.redis, self.stream, keys.WORKER_GROUP)
        # Requests read before a restart and never finished are ours to run again.
        await self._admit(await read_own_pending(self.redis, keys.WORKER_GROUP, self.settings.worker_id,
                                                 self.stream))
        await self._heartbeat()
        self._tasks = [asyncio.create_task(self._intake_loop()), asyncio.create_task(self._heartbeat_loop())]

    def cancel(self, request_id: str) -> bool:
        if request_id not in self.active:
            return False
        self.engine.abort_request(request_id)
        self._thread and self._thread.wake()
        return True

    def load(self) -> WorkerLoad:
        stats = self.engine.stats()
        return WorkerLoad(
            worker_id=self.settings.worker_id, address=self.address, models=[self.model_name],
            total_kv_blocks=stats.total_kv_blocks, free_kv_blocks=stats.free_kv_blocks,
            block_size=stats.block_size, running=stats.running, waiting=stats.waiting,
            draining=self.draining,
        )

    async def _intake_loop(self) -> None:
        while not self.draining:
            try:
                room = self.settings.max_backlog - self.engine.stats().waiting
                if room <= 0:
                    await asyncio.sleep(0.005)
                    continue
                entries = await read_group(self.redis, keys.WORKER_GROUP, self.settings.worker_id,
                                           [self.stream], count=room, block_ms=50)
                await self._admit(entries)
                await self._flush_acks()
            except RedisError as e:
                if "NOGROUP" in str(e):  # Redis came back empty: recreate our group
                    await ensure_group(self.redis, self.stream, keys.WORKER_GROUP)
                    continue
                log.warning("redis unavailable; retrying", error=type(e).__name__)
                await asyncio.sleep(0.2)

    async def _admit(self, entries: list[StreamEntry]) -> None:
        if not entries:
            return
        items = [work_pb2.WorkItem.FromString(e.payload) for e in entries]
        cancelled = await self.redis.mget([keys.cancel_key(i.request_id) for i in items])
        now_ms = time.time() * 1000
        for entry, item, flag in zip(entries, items, cancelled, strict=True):
            active = Active(entry.entry_id, item.reply_to, item.attempt, item.deadline_unix_ms,
                            owed_text(getattr(self.engine, "tokenizer", None), list(item.prompt_token_ids),
                                      list(item.resume_token_ids), item.resume_text))
            if flag is not None or 0 < item.deadline_unix_ms <= now_ms:
                outcome = "cancelled" if flag is not None else "deadline"
                self.sink.send(item.reply_to, [OutChunk(item.request_id, item.attempt,
                                                        len(item.resume_token_ids), [], "", outcome=outcome)])
                self._to_ack.append(entry.entry_id)
                continue
            active.span = _tracer.start_span(
                "worker.generate", context=extract_context(dict(item.trace_context)),
                attributes={"llmserve.request_id": item.request_id, "llmserve.worker": self.settings.worker_id,
                            "llmserve.attempt": item.attempt, "llmserve.prompt_tokens": len(item.prompt_token_ids)})
            self.active[item.request_id] = active
            self.engine.add_request(engine_request(item))
        if self._thread:
            self._thread.wake()

    def _publish(self, outputs: list[TokenOutput]) -> None:
        """Called on the event loop after each engine step."""
        by_gateway: dict[str, list[OutChunk]] = defaultdict(list)
        for out in outputs:
            active = self.active.get(out.request_id)
            if active is None:
                continue
            text, active.owed_text = active.owed_text + out.text, ""
            by_gateway[active.reply_to].append(OutChunk(
                out.request_id, active.attempt, out.index, out.token_ids, text,
                outcome=_outcome(out, active), prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens, error=out.error or "",
            ))
            if out.finished:
                del self.active[out.request_id]
                active.span.set_attribute("llmserve.completion_tokens", out.completion_tokens)
                active.span.set_attribute("llmserve.finish_reason", _outcome(out, active))
                active.span.end()
                self._to_ack.append(active.entry_id)
        for reply_to, chunks in by_gateway.items():
            self.sink.send(reply_to, chunks)

    def _record_step(self, seconds: float, outputs: list[TokenOutput]) -> None:
        tokens = sum(len(o.token_ids) for o in outputs)
        self.metrics.step(self.model_name, len(outputs), 0, tokens, seconds)
        timings = getattr(self.engine, "last_step_timings", None)
        if timings:
            self.metrics.step_phases(self.model_name, timings)

    async def _flush_acks(self) -> None:
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

    async def _heartbeat(self) -> None:
        load = self.load()
        self.metrics.set_kv_blocks(self.model_name, load.total_kv_blocks - load.free_kv_blocks,
                                   load.free_kv_blocks)
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
        await self._heartbeat()
        while self.active:
            await asyncio.sleep(0.02)
        await self._flush_acks()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._thread:
            self._thread.stop()
        await self.sink.close()
        try:
            await self._flush_acks()
            if not self.active:  # leftovers stay registered so the scheduler recovers them
                from llmserve.common.workers import withdraw

                await withdraw(self.redis, self.settings.worker_id)
        except RedisError:
            pass
