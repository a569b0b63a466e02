"""A worker's model set: the memory budget, and LoadModel of registry references."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
import torch

from llmserve.common.errors import ResourceExhausted
from llmserve.common.models import quantize
from llmserve.common.models.registry import ModelRegistry
from llmserve.common.workers import registry_snapshot
from llmserve.worker.engine.fallback import HFModelRunner
from llmserve.worker.engine.model_runner import PagedModelRunner
from llmserve.worker.served_models import ModelSet, ServedModel
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import model_worker, operator_channel
from tests.support.tiny_models import save_tiny_llama, tiny_llama

MIB = 1 << 20


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, model_path):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny", 0, model_path)


def test_budget_refuses_a_reservation_and_a_measured_size_that_do_not_fit():
    models = ModelSet(budget_bytes=100 * MIB)
    models.add(ServedModel("a", ScriptedEngine(), 60 * MIB))
    models.reserve("b", 30 * MIB)  # fits: 90 of 100
    with pytest.raises(ResourceExhausted, match="exceed this worker's model memory budget"):
        models.reserve("c", 20 * MIB)  # the reservation of b counts
    # b turned out bigger than its estimate once loaded: refused, and its reservation dropped.
    with pytest.raises(ResourceExhausted, match=r"b would exceed.*takes 0\.05 GiB"):
        models.add(ServedModel("b", ScriptedEngine(), 50 * MIB))
    models.cancel_reservation("b")
    assert models.serving_ids() == ["a"] and models.used_bytes() == 60 * MIB
    models.begin_unload("a")
    assert models.serving_ids() == []  # no longer advertised, still counted until freed
    models.remove("a")
    models.reserve("c", 100 * MIB)  # the room is back
    assert models.used_bytes() == 100 * MIB


async def _load(stub, ref):
    return await stub.LoadModel(worker_pb2.LoadModelRequest(ref=ref), timeout=60)


async def test_load_model_over_the_budget_is_refused_before_loading(redis_url, tiny_dir):
    # The tiny model's estimate is its weights (~12.6 MB fp32) plus the 1 MiB KV budget.
    async with model_worker(redis_url, "w0", {"other": ScriptedEngine()}, model_memory_bytes=8 * MIB,
                            kv_cache_bytes=MIB, device="cpu", model_dirs=[str(tiny_dir.parent)]) as app, \
            operator_channel(f"127.0.0.1:{app.port}") as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _load(stub, str(tiny_dir))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "memory budget" in err.value.details()
        listed = await stub.ListModels(worker_pb2.ListModelsRequest(), timeout=5)
        assert [m.served_id for m in listed.models] == ["other"] and not listed.loading
        assert listed.memory_budget_bytes == 8 * MIB and listed.memory_used_bytes == 0


async def test_load_model_resolves_registry_refs_to_the_concrete_version(redis_url, tiny_dir, tmp_path):
    client = aioredis.Redis.from_url(redis_url)
    registry = ModelRegistry(client)
    await registry.register("tiny", tiny_dir, activate=True)  # v1
    q = quantize.quantize_int8_dynamic(tiny_llama(0))
    from transformers import AutoTokenizer

    int8_dir = quantize.save_int8(q, AutoTokenizer.from_pretrained(str(tiny_dir)), tmp_path / "q")
    await registry.register("tiny", int8_dir)  # v2
    await registry.activate("tiny", "v2", alias="canary")
    async with model_worker(redis_url, "w0", {"other": ScriptedEngine()}, kv_cache_bytes=MIB,
                            device="cpu") as app, \
            operator_channel(f"127.0.0.1:{app.port}") as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        first = await _load(stub, "tiny")  # the bare name: its active version
        assert first.served_id == "tiny@v1" and not first.already_loaded
        # KV plus at least the embedding (bf16 beside the int4 projections of the default mode)
        assert first.memory_bytes >= MIB + 49152 * 64 * 2
        again = await _load(stub, "tiny@v1")
        assert again.served_id == "tiny@v1" and again.already_loaded
        canary = await _load(stub, "tiny@canary")  # int8: the fallback runner
        assert canary.served_id == "tiny@v2"

        models = app.service.runtime.models
        assert isinstance(models.find("tiny@v1").engine.runner, PagedModelRunner)
        assert isinstance(models.find("tiny@v2").engine.runner, HFModelRunner)
        assert models.find("tiny@v1").engine.config.model == tiny_dir  # that version's path
        int8_linears = [m for m in models.find("tiny@v2").engine.runner.model.modules()
                        if type(m).__module__.startswith("torch.ao.nn.quantized")]
        assert int8_linears, "the int8 version must be served from its quantized weights"
        live, _ = await registry_snapshot(client)
        assert live[0].models == ["other", "tiny@v1", "tiny@v2"]
        assert set(live[0].model_loads) == {"other", "tiny@v1", "tiny@v2"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _load(stub, "tiny@v9")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await client.aclose()



def test_kv_cache_bytes_caps_the_cuda_kv_budget(monkeypatch):
    from llmserve.worker.engine import loader
    from llmserve.worker.engine.config import EngineConfig

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _d: (100 * gib, 100 * gib))
    cuda = torch.device("cuda")
    whole = loader._num_blocks(EngineConfig(model="m", device="cuda", gpu_memory_fraction=0.5), 1024, cuda)
    capped = loader._num_blocks(EngineConfig(model="m", device="cuda", kv_cache_bytes=gib), 1024, cuda)
    assert whole == (50 * gib - gib) // (1024 * 16)  # the fraction, less the activation headroom
    assert capped == gib // (1024 * 16)  # one model's share when several share the GPU


async def test_work_for_a_model_not_held_is_handed_back_to_its_queue(redis_url):
    from llmserve.common import redis_keys as keys
    from llmserve.common.streams import ensure_group
    from llmserve.common.v1 import work_pb2

    client = aioredis.Redis.from_url(redis_url)
    item = work_pb2.WorkItem(request_id="r-ghost", model="ghost@v1", prompt_token_ids=[5, 6], attempt=2,
                             reply_to="127.0.0.1:1", sampling=work_pb2.SamplingParams(max_tokens=3))  # fmt: skip
    stream = keys.worker_stream("w0")
    await ensure_group(client, stream, keys.WORKER_GROUP)
    await client.xadd(stream, {keys.PAYLOAD_FIELD: item.SerializeToString()})  # placed from a stale beat
    engine = ScriptedEngine()
    async with model_worker(redis_url, "w0", {"other": engine}):
        for _ in range(100):
            if await client.xlen(keys.request_stream("ghost@v1")):
                break
            await asyncio.sleep(0.05)
    (_, fields), = await client.xrange(keys.request_stream("ghost@v1"))
    assert work_pb2.WorkItem.FromString(fields[keys.PAYLOAD_FIELD.encode()]) == item  # same attempt
    assert await client.xlen(stream) == 0 and engine.seen == []  # never taken, never dropped
    assert await client.hget(keys.request_key("r-ghost"), "state") == b"requeued"
    await client.aclose()


async def test_load_model_only_from_configured_directories(redis_url, tiny_dir, tmp_path):
    """A directory outside LLMSERVE_WORKER_MODEL_DIRS is refused, whether named directly, through
    `..`, or through a symlink inside an allowed directory; nothing is loaded."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to(tiny_dir, target_is_directory=True)
    async with model_worker(redis_url, "w0", {"other": ScriptedEngine()}, kv_cache_bytes=MIB, device="cpu",
                            model_dirs=[str(allowed)]) as app, \
            operator_channel(f"127.0.0.1:{app.port}") as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        for ref in (str(tiny_dir), str(allowed / ".." / ".." / tiny_dir.relative_to(tmp_path.parent)),
                    str(allowed / "link"), "/etc", "../../../../etc"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _load(stub, ref)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, ref
            assert "LLMSERVE_WORKER_MODEL_DIRS" in err.value.details()
        assert app.service.runtime.models.serving_ids() == ["other"]
