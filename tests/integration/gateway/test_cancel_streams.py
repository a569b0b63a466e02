"""A client opens 100 streams and cancels 10 of them at seeded random points, through the whole
in-process stack (gateway -> Redis -> scheduler -> worker) with the real `LLMEngine` on a tiny
Llama built from a config (the real model's tokenizer, random weights: seconds, no download)."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.gateway.admission.ratelimit_scripts import tenant_keys
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.types import FinishReason
from tests.support.stack import API_KEY, MODEL, running_stack
from tests.support.tiny_models import tiny_llama

STREAMS, CANCELLED, FULL_LENGTH = 100, 10, 48
AUTH = (("authorization", f"Bearer {API_KEY}"),)


class StepRecorder:
    """Drives a real engine and records, per request, the engine steps around its abort.

    `started` counts steps begun. An abort that arrives while step n runs (or before step
    n+1 begins) is stamped `abort_at = n`; the engine must drop the sequence in the next
    step at the latest: its CANCELLED output comes from step n or n+1, it is in neither the
    running batch nor the waiting queue after that step, and no token of it is made after
    step n (step n may already have been computing it when the abort came).
    """

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self.started = 0
        self.abort_at: dict[str, int] = {}
        self.cancelled_at: dict[str, int] = {}
        self.left_batch_at: dict[str, int] = {}
        self.last_token_at: dict[str, int] = {}

    def abort_request(self, request_id: str) -> None:
        with self._lock:
            self.abort_at.setdefault(request_id, self.started)
        self.engine.abort_request(request_id)

    def step(self):
        with self._lock:
            self.started += 1
            n = self.started
            aborted = set(self.abort_at) - set(self.left_batch_at)
        outputs = self.engine.step()
        for out in outputs:
            if out.token_ids:
                self.last_token_at[out.request_id] = n
            if out.finish_reason == FinishReason.CANCELLED:
                self.cancelled_at[out.request_id] = n
        scheduled = {s.request_id for s in (*self.engine.batch_scheduler.running, *self.engine.batch_scheduler.waiting)}
        for request_id in aborted - scheduled:
            self.left_batch_at[request_id] = n
        return outputs

    def add_request(self, request) -> None:
        self.engine.add_request(request)

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def stats(self):
        return self.engine.stats()


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def tiny_engine(catalog) -> LLMEngine:
    served = catalog.get(MODEL)
    model = tiny_llama(0)
    engine = LLMEngine.from_model(
        EngineConfig(
            model=served.path, device="cpu", num_kv_blocks=1024, max_num_seqs=128, max_num_batched_tokens=1024
        ),
        model,
        served.tokenizer,
    )
    # Random weights emit the tokenizer's EOS at random steps; every stream that is not
    # cancelled must run its full length, so that "complete normally" is exact.
    engine.eos_token_ids = frozenset()
    return engine


async def run_stream(stub, i: int, cancel_after: int | None) -> dict:
    """Read stream i; cancel it after `cancel_after` tokens (it never ends on its own then)."""
    max_tokens = 400 if cancel_after is not None else FULL_LENGTH
    call = stub.GenerateStream(
        pb.GenerateRequest(
            model=MODEL,
            prompt=f"Story number {i}:",
            max_tokens=max_tokens,
            temperature=0.0,
            request_id=f"s{i}",
        ),
        metadata=AUTH,
        timeout=120,
    )
    indexes: list[int] = []
    last = None
    async for message in call:
        indexes.extend(range(message.index, message.index + len(message.token_ids)))
        last = message
        if cancel_after is not None and len(indexes) >= cancel_after:
            call.cancel()
            break
    return {"indexes": indexes, "last": last, "code": await call.code()}


async def test_cancelling_10_of_100_streams_frees_everything_within_one_step(redis_url, catalog):
    rng = random.Random(1234)
    cancel_after = {i: rng.randint(1, 40) for i in rng.sample(range(STREAMS), CANCELLED)}
    recorder = StepRecorder(tiny_engine(catalog))
    total = recorder.stats().total_kv_blocks
    streams_key = tenant_keys("t1")[2]  # the limiter's concurrent-streams leases of API_KEY's tenant
    overrides = {"max_concurrent_streams": STREAMS}
    async with (
        running_stack(redis_url, [recorder], catalog, gateway_overrides=overrides) as stack,
        grpc.aio.insecure_channel(stack.gateway_address) as channel,
    ):
        redis = aioredis.Redis.from_url(redis_url)
        baseline = await redis.zcard(streams_key)
        assert baseline == 0 and recorder.stats().free_kv_blocks == total
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        results = await asyncio.gather(*(run_stream(stub, i, cancel_after.get(i)) for i in range(STREAMS)))

        for i, result in enumerate(results):
            if i in cancel_after:
                assert result["code"] == grpc.StatusCode.CANCELLED, i
                assert result["indexes"][: cancel_after[i]] == list(range(cancel_after[i])), i
                continue
            assert result["code"] == grpc.StatusCode.OK, (i, result["code"])
            assert result["indexes"] == list(range(FULL_LENGTH)), i
            assert result["last"].finish_reason == pb.FINISH_REASON_LENGTH
            assert result["last"].usage.completion_tokens == FULL_LENGTH

        # Each cancelled stream reached the engine as an abort, and left it within one step.
        cancelled_ids = {f"s{i}" for i in cancel_after}
        deadline = time.monotonic() + 10
        while (
            set(recorder.left_batch_at) != cancelled_ids or recorder.has_unfinished()
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert set(recorder.abort_at) == cancelled_ids
        assert set(recorder.cancelled_at) == cancelled_ids
        for request_id, abort_at in recorder.abort_at.items():
            assert recorder.cancelled_at[request_id] - abort_at <= 1, request_id
            assert recorder.left_batch_at[request_id] - abort_at <= 1, request_id
            assert recorder.last_token_at.get(request_id, 0) <= abort_at, request_id
        steps_late = [recorder.cancelled_at[r] - a for r, a in recorder.abort_at.items()]
        print(f"abort -> cancelled, in steps: {sorted(steps_late)}; engine steps {recorder.started}")

        # KV blocks and the tenant's concurrency slots are back to their baseline.
        while (
            recorder.stats().free_kv_blocks != total or await redis.zcard(streams_key) != baseline
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert recorder.stats().free_kv_blocks == total
        assert recorder.engine.block_manager.num_free_blocks == total
        assert await redis.zcard(streams_key) == baseline
        await redis.aclose()
