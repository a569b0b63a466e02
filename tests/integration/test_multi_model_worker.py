"""One worker, two models (tiny random Llamas on real engines, loaded from disk by the worker
as in production): both stream at once, and unloading one through the admin RPC leaves the
other's streams exactly as they are alone, stops placing the unloaded model there and frees it.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.workers import registry_snapshot
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, model_worker, operator_channel, running_stack
from tests.support.tiny_models import save_tiny_llama

AUTH = (("authorization", f"Bearer {API_KEY}"),)
A, B = "tiny-a", "tiny-b"
PROMPTS_A = ["The river bends twice before", "Seven ships sailed", "A quiet morning in"]
PROMPTS_B = ["Once upon a time", "The capital of France is", "def fibonacci(n):"]
FINISHED = (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
N_FORCED = 480  # long enough that a forced unload lands mid-stream (the context is 512)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("models")
    return save_tiny_llama(root / A, 1, model_path), save_tiny_llama(root / B, 2, model_path)


@pytest.fixture(scope="module")
def catalog(tiny_dirs):
    return ModelCatalog.load([str(d) for d in tiny_dirs])


class Streams:
    """Streams through the gateway, noting when each has its first token and checking that
    every completion index arrives exactly once, in order."""

    def __init__(self, stub):
        self.stub = stub
        self.started: list[asyncio.Event] = []
        self.received: list[list[int]] = []  # the token ids each stream has got so far

    def start(self, model: str, prompt: str, max_tokens: int, request_id: str = "") -> asyncio.Task:
        first, got = asyncio.Event(), []
        self.started.append(first)
        self.received.append(got)
        return asyncio.create_task(self._run(model, prompt, max_tokens, request_id, first, got))

    async def _run(self, model, prompt, max_tokens, request_id, first, got) -> tuple[str, int]:
        req = pb.GenerateRequest(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                 request_id=request_id)  # fmt: skip
        parts, finish = [], pb.FINISH_REASON_UNSPECIFIED
        async for m in self.stub.GenerateStream(req, metadata=AUTH, timeout=120):
            parts.append(m.text)
            finish = m.finish_reason or finish
            if m.token_ids:
                assert m.index == len(got), f"index {m.index} after {len(got)} tokens: missing or repeated"
                got.extend(m.token_ids)
                first.set()
            if m.finish_reason:
                assert m.usage.completion_tokens == len(got)
        return "".join(parts), finish

    async def all_started(self) -> None:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.started)), 60)


async def _two_model_stack(redis_url, tiny_dirs, catalog):
    """(stack context, worker context) holding A and B on worker w0."""
    worker = model_worker(redis_url, "w0", models=[str(d) for d in tiny_dirs], device="cpu",
                          kv_cache_bytes=1 << 20, max_num_seqs=8)  # fmt: skip
    return running_stack(redis_url, [], catalog), worker


async def _holders(stub) -> dict[str, list[str]]:
    """The gateway's ListModels: model -> workers that have it loaded."""
    reply = await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=5)
    return {m.name: list(m.worker_ids) for m in reply.models}


async def _b_alone(streams: Streams) -> list[tuple[str, int]]:
    return await asyncio.gather(*(streams.start(B, p, 48) for p in PROMPTS_B))


async def test_unloading_one_model_leaves_the_other_streams_untouched(redis_url, tiny_dirs, catalog):
    stack_cm, worker_cm = await _two_model_stack(redis_url, tiny_dirs, catalog)
    r = aioredis.Redis.from_url(redis_url)
    async with stack_cm as stack, worker_cm as w0, \
            grpc.aio.insecure_channel(stack.gateway_address) as gw, \
            operator_channel(f"127.0.0.1:{w0.port}") as wc:
        streams, admin = Streams(generation_pb2_grpc.GenerationServiceStub(gw)), worker_pb2_grpc.WorkerServiceStub(wc)
        assert await _holders(streams.stub) == {A: ["w0"], B: ["w0"]}
        alone = await _b_alone(streams)
        assert all(f in FINISHED for _, f in alone) and all(t for t, _ in alone)

        a_tasks = [streams.start(A, p, 160) for p in PROMPTS_A]
        b_tasks = [streams.start(B, p, 48) for p in PROMPTS_B]
        await streams.all_started()  # both models are streaming from w0 at once
        before = await admin.ListModels(worker_pb2.ListModelsRequest(), timeout=5)
        a_engine = weakref.ref(w0.service.runtime.models.find(A).engine)
        assert not any(t.done() for t in b_tasks), "B's streams must still run while A unloads"
        unloaded = await admin.UnloadModel(worker_pb2.UnloadModelRequest(served_id=A), timeout=60)

        assert await asyncio.gather(*b_tasks) == alone  # B: exactly the text it makes alone
        assert all(f in FINISHED for _, f in await asyncio.gather(*a_tasks))  # A's in-flight finished
        assert unloaded.cancelled == 0

        # A is released: no longer advertised, its memory accounted back, its engine gone.
        after = await admin.ListModels(worker_pb2.ListModelsRequest(), timeout=5)
        a_before = next(m for m in before.models if m.served_id == A)
        assert [m.served_id for m in after.models] == [B]
        assert unloaded.freed_bytes == a_before.memory_bytes > 0
        assert after.memory_used_bytes == before.memory_used_bytes - a_before.memory_bytes
        gc.collect()
        assert a_engine() is None, "the unloaded engine (weights and KV cache) must be freed"
        live, _ = await registry_snapshot(r)
        assert live[0].models == [B] and list(live[0].model_loads) == [B]
        assert await _holders(streams.stub) == {A: [], B: ["w0"]}

        # A's new requests are not placed on w0: they wait, then run on a worker that has A.
        late = streams.start(A, PROMPTS_A[0], 4, request_id="late-a")
        await asyncio.sleep(0.5)
        assert not late.done()
        async with model_worker(redis_url, "w1", {A: ScriptedEngine()}):
            text, finish = await asyncio.wait_for(late, 30)
            assert await _holders(streams.stub) == {A: ["w1"], B: ["w0"]}
        last = catalog.get(A).encode_prompt(PROMPTS_A[0])[-1]
        assert text == "".join(f"{(last + 1 + i) % 1000} " for i in range(4))  # ScriptedEngine's text
        assert (await r.hget(keys.request_key("late-a"), "worker")) == b"w1"
    await r.aclose()


def _worker_with(redis_url, worker_id: str, tiny_dirs, *served) -> object:
    """A worker loading `served` (of A, B) from disk."""
    dirs = {A: str(tiny_dirs[0]), B: str(tiny_dirs[1])}
    return model_worker(redis_url, worker_id, models=[dirs[m] for m in served], device="cpu",
                        kv_cache_bytes=1 << 20, max_num_seqs=8, model_dirs=[str(tiny_dirs[0].parent)])  # fmt: skip


async def _forced_unload_mid_stream(streams: Streams, admin, before=None):
    """Start A's streams (w0 is the only worker with A), force-unload A on w0 once each has
    tokens (after awaiting `before`, if given). Returns (tasks, reply, the token lists of the
    streams, how many tokens each had when the unload began)."""
    first = len(streams.received)
    a_tasks = [streams.start(A, p, N_FORCED, request_id=f"forced-{i}") for i, p in enumerate(PROMPTS_A)]
    await streams.all_started()
    if before is not None:
        await before
    got = streams.received[first:]
    had = [len(g) for g in got]
    unloaded = await admin.UnloadModel(worker_pb2.UnloadModelRequest(served_id=A, force=True), timeout=60)
    return a_tasks, unloaded, got, had


async def _a_alone(streams: Streams) -> list[tuple[str, int]]:
    return await asyncio.gather(*(streams.start(A, p, N_FORCED) for p in PROMPTS_A))


async def test_forced_unload_resumes_its_streams_on_another_worker_exactly(redis_url, tiny_dirs, catalog):
    """w1 serves A too: A's forced-unloaded streams continue there, each client's text exactly
    the uninterrupted text, no index missing or repeated; B's streams are untouched."""
    stack_cm, worker_cm = await _two_model_stack(redis_url, tiny_dirs, catalog)
    r = aioredis.Redis.from_url(redis_url)
    async with stack_cm as stack, worker_cm as w0, _worker_with(redis_url, "w1", tiny_dirs, B) as w1, \
            grpc.aio.insecure_channel(stack.gateway_address) as gw, \
            operator_channel(f"127.0.0.1:{w0.port}") as c0, \
            operator_channel(f"127.0.0.1:{w1.port}") as c1:
        streams = Streams(generation_pb2_grpc.GenerationServiceStub(gw))
        admin0, admin1 = worker_pb2_grpc.WorkerServiceStub(c0), worker_pb2_grpc.WorkerServiceStub(c1)
        alone_a, alone_b = await _a_alone(streams), await _b_alone(streams)  # only w0 has A

        b_tasks = [streams.start(B, p, 48) for p in PROMPTS_B]
        load_a_on_w1 = admin1.LoadModel(worker_pb2.LoadModelRequest(ref=str(tiny_dirs[0])), timeout=60)
        a_tasks, unloaded, got, had = await _forced_unload_mid_stream(streams, admin0, load_a_on_w1)

        assert (unloaded.handed_off, unloaded.cancelled) == (len(PROMPTS_A), 0)
        assert await asyncio.gather(*a_tasks) == alone_a  # resumed on w1: the uninterrupted text
        assert await asyncio.gather(*b_tasks) == alone_b
        for i, tokens in enumerate(had):
            assert 0 < tokens < len(got[i]), (tokens, len(got[i]))  # the hand-off really was mid-stream
            request = await r.hgetall(keys.request_key(f"forced-{i}"))
            assert (request[b"worker"], request[b"attempt"]) == (b"w1", b"2")
        assert await _holders(streams.stub) == {A: ["w1"], B: ["w0", "w1"]}
        assert await r.xlen(keys.worker_stream("w0")) == 0  # nothing left behind on w0
    await r.aclose()


async def test_forced_unload_with_no_other_worker_waits_in_the_queue(redis_url, tiny_dirs, catalog):
    """Nobody else serves A: its forced-unloaded requests wait in A's queue (their clients
    still connected), then resume exactly once a worker with A comes up."""
    stack_cm, worker_cm = await _two_model_stack(redis_url, tiny_dirs, catalog)
    r = aioredis.Redis.from_url(redis_url)
    async with stack_cm as stack, worker_cm as w0, \
            grpc.aio.insecure_channel(stack.gateway_address) as gw, \
            operator_channel(f"127.0.0.1:{w0.port}") as wc:
        streams, admin = Streams(generation_pb2_grpc.GenerationServiceStub(gw)), worker_pb2_grpc.WorkerServiceStub(wc)
        alone = await _a_alone(streams)
        a_tasks, unloaded, got, had = await _forced_unload_mid_stream(streams, admin)
        assert (unloaded.handed_off, unloaded.cancelled) == (len(PROMPTS_A), 0)
        waited = [len(g) for g in got]
        await asyncio.sleep(1.0)
        assert not any(t.done() for t in a_tasks)  # waiting, their clients still connected
        assert [len(g) for g in got] == waited and all(0 < h <= w for h, w in zip(had, waited, strict=True))
        with pytest.raises(grpc.aio.AioRpcError) as err:  # gone: a second unload finds nothing
            await admin.UnloadModel(worker_pb2.UnloadModelRequest(served_id=A), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        async with _worker_with(redis_url, "w1", tiny_dirs, A):
            assert await asyncio.wait_for(asyncio.gather(*a_tasks), 60) == alone  # exact, resumed
        for i, tokens in enumerate(waited):
            assert tokens < len(got[i])
            assert await r.hget(keys.request_key(f"forced-{i}"), "worker") == b"w1"
    await r.aclose()
