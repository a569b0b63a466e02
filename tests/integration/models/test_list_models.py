"""ListModels (gRPC) and /v1/models (HTTP) show the registry: each model's aliases with their
splits, and per served id `name@vN` the live workers that have it loaded, next to the static
catalog. A Redis outage degrades the listing (no workers, registry as last read), never fails it.

Full in-process stack over real Redis; the workers run ScriptedEngines serving `smol@v1` and
`smol@v2`; the catalog holds the tiny model's directory (`hf`).
"""

from __future__ import annotations

import asyncio

import grpc
import httpx

from llmserve.cli.redis_server import RedisServer
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.integration.models.routing_support import NAME, two_versions
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, running_stack, running_worker

AUTH = (("authorization", f"Bearer {API_KEY}"),)
SERVED = [f"{NAME}@v1", f"{NAME}@v2"]


async def _grpc_models(address: str) -> dict[str, pb.ModelInfo]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await generation_pb2_grpc.GenerationServiceStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=AUTH, timeout=5
        )
    assert [m.name for m in reply.models] == sorted(m.name for m in reply.models)
    return {m.name: m for m in reply.models}


async def _http_models(stack) -> dict[str, dict]:
    base = f"http://127.0.0.1:{stack.gateway.service.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        reply = await http.get("/v1/models", headers={"authorization": f"Bearer {API_KEY}"})
    assert reply.status_code == 200, reply.text
    return {m["id"]: m for m in reply.json()["data"]}


def _versions(info: pb.ModelInfo) -> dict[str, list[str]]:
    return {v.served_id: list(v.worker_ids) for v in info.versions}


def _aliases(info: pb.ModelInfo) -> dict[str, tuple[str, dict[str, float]]]:
    return {a.alias: (a.version, dict(a.split)) for a in info.aliases}


async def test_list_models_shows_registry_aliases_and_workers_per_version(redis_url, tiny_dir):
    registry = await two_versions(redis_url, tiny_dir)
    await registry.register(NAME, tiny_dir)  # v3: registered, no alias, no worker: not listed
    await registry.set_split(NAME, {"v2": 20})
    await registry.activate(NAME, "v2", alias="canary")
    catalog = ModelCatalog.load([str(tiny_dir)])
    async with running_stack(redis_url, [ScriptedEngine(), ScriptedEngine()], catalog, models=SERVED) as stack:
        models = await _grpc_models(stack.gateway_address)
        assert sorted(models) == ["hf", NAME]
        hf, smol = models["hf"], models[NAME]
        assert (hf.registry, hf.context_length, list(hf.worker_ids), list(hf.versions)) == (False, 256, [], [])
        assert smol.registry and smol.context_length == 256  # from the active version's config
        assert _aliases(smol) == {"active": ("v1", {"v2": 20.0}), "canary": ("v2", {})}
        assert _versions(smol) == {SERVED[0]: ["w0"], SERVED[1]: ["w1"]}
        assert (smol.ready_workers, list(smol.worker_ids)) == (2, ["w0", "w1"])

        # A third worker loads v1; v3 gets one too: both show up with their workers.
        async with running_worker(redis_url, ScriptedEngine(), "w2", SERVED[0]), \
                running_worker(redis_url, ScriptedEngine(), "w3", f"{NAME}@v3"):  # fmt: skip
            smol = await _with_workers(stack.gateway_address, 4)
            assert _versions(smol) == {SERVED[0]: ["w0", "w2"], SERVED[1]: ["w1"], f"{NAME}@v3": ["w3"]}
            assert [v.ready_workers for v in smol.versions] == [2, 1, 1]

            http = await _http_models(stack)
            assert http["hf"]["workers"] == [] and "registry" not in http["hf"]
            assert http[NAME]["registry"] is True and http[NAME]["context_length"] == 256
            assert http[NAME]["aliases"] == {"active": {"version": "v1", "split": {"v2": 20.0}},
                                             "canary": {"version": "v2", "split": {}}}  # fmt: skip
            assert [(v["id"], v["workers"]) for v in http[NAME]["versions"]] == [
                (SERVED[0], ["w0", "w2"]), (SERVED[1], ["w1"]), (f"{NAME}@v3", ["w3"])]  # fmt: skip
    await registry.redis.aclose()


async def _with_workers(address: str, n: int) -> pb.ModelInfo:
    """The registry model once `n` workers have it loaded (their first heartbeat is async)."""
    async with asyncio.timeout(10):
        while len((smol := (await _grpc_models(address))[NAME]).worker_ids) != n:
            await asyncio.sleep(0.05)
    return smol


async def test_list_models_survives_a_redis_outage(tiny_dir):
    """Redis stops: ListModels still answers, catalog and registry (as last read), no workers."""
    with RedisServer() as server:
        registry = await two_versions(server.url, tiny_dir)
        catalog = ModelCatalog.load([str(tiny_dir)])
        async with running_stack(server.url, [ScriptedEngine()], catalog, models=SERVED[:1]) as stack:
            before = await _grpc_models(stack.gateway_address)
            assert _versions(before[NAME]) == {SERVED[0]: ["w0"]}
            server.stop_process()
            try:
                during = await _grpc_models(stack.gateway_address)
                assert sorted(during) == ["hf", NAME]
                assert list(during["hf"].worker_ids) == [] and during["hf"].context_length == 256
                assert _aliases(during[NAME]) == _aliases(before[NAME]) == {"active": ("v1", {})}
                assert _versions(during[NAME]) == {SERVED[0]: []} and during[NAME].ready_workers == 0
                assert during[NAME].context_length == 256
                http = await _http_models(stack)
                assert http[NAME]["versions"] == [{"id": SERVED[0], "ready_workers": 0, "workers": []}]
            finally:
                server.start()  # the services reconnect; teardown runs against a live Redis
        await registry.redis.aclose()
