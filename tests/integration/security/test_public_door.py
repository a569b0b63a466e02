"""The public door refuses ambiguous or oversized credentials before any Redis lookup, and
listing models needs a credential like every other public call (gRPC and HTTP)."""

from __future__ import annotations

import threading

import grpc
import httpx
import pytest
import redis

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

GOOD = f"Bearer {API_KEY}"
STORED = "Bearer llmsk_abcdef_" + "s" * 32  # the shape the gateway looks up in Redis


class RedisWatch:
    """Every command Redis runs while the watch is on (MONITOR), to prove none was an API-key
    lookup."""

    def __init__(self, url: str):
        self.url = url
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as m:
            self._ready.set()
            while not self._stop.is_set():
                self.commands.append(m.next_command()["command"])

    def __enter__(self) -> RedisWatch:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        redis.Redis.from_url(self.url).ping()  # wakes the monitor up to see the flag
        self._thread.join(5)


def request() -> pb.GenerateRequest:
    return pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=2)


@pytest.fixture
async def gateway(redis_url):
    async with running_stack(redis_url, [ScriptedEngine()], catalog=ModelCatalog.load([MODEL])) as s:
        yield s


@pytest.mark.parametrize("metadata", [
    (("authorization", GOOD), ("authorization", "Bearer junk")),
    (("authorization", STORED), ("authorization", STORED)),
    (("authorization", "Bearer llmsk_abcdef_" + "x" * 5000),),
], ids=["valid then junk", "two stored-key shapes", "over 4 KB"])
async def test_ambiguous_or_oversized_authorization_is_unauthenticated_without_redis(
        gateway, redis_url, metadata):
    async with grpc.aio.insecure_channel(gateway.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with RedisWatch(redis_url) as watch:
            for call in (stub.Generate, stub.ListModels):
                arg = request() if call is stub.Generate else pb.ListModelsRequest()
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(arg, metadata=metadata, timeout=5)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not [c for c in watch.commands if "apikey" in c], watch.commands
        # The good key alone still works.
        reply = await stub.Generate(request(), metadata=(("authorization", GOOD),), timeout=10)
        assert reply.text


async def test_list_models_needs_a_credential(gateway):
    async with grpc.aio.insecure_channel(gateway.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.ListModels(pb.ListModelsRequest(), metadata=(("authorization", GOOD),), timeout=5)
        assert [m.name for m in reply.models] == [MODEL]


async def test_http_refuses_two_authorization_headers_and_models_without_key(gateway):
    base = f"http://127.0.0.1:{gateway.gateway.service.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        two = httpx.Headers([("authorization", GOOD), ("authorization", "Bearer junk")])
        r = await http.get("/v1/models", headers=two)
        assert r.status_code == 401 and "more than one" in r.text
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        r = await http.post("/v1/completions", json=body, headers=two)
        assert r.status_code == 401
        r = await http.post("/v1/completions", json=body, headers={"authorization": "Bearer " + "x" * 5000})
        assert r.status_code == 401 and "4096" in r.text
        assert (await http.get("/v1/models")).status_code == 401
        r = await http.get("/v1/models", headers={"authorization": GOOD})
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [MODEL]
