"""Each process's own /metrics and /health, and the request counts the gateway exports.

The in-process stack over real Redis (ScriptedEngine in the worker); the gateway serves
/metrics on its HTTP port, the scheduler and worker on their `metrics_port`. Regressions
guarded: a whole (non-streaming) completion counted `cancelled`; refused requests driving
`llmserve_requests_active` below 0; expositions `promtool check metrics` refuses.
"""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.prom import parse, process_telemetry, promtool_check_metrics, scrape, value
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

AUTH = (("authorization", f"Bearer {API_KEY}"),)
HEADERS = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def catalog():
    process_telemetry()
    return ModelCatalog.load([MODEL])


def urls(stack) -> dict[str, str]:
    """Every process's /metrics in the stack (all share this test process's instruments)."""
    found = {"gateway": f"http://127.0.0.1:{stack.gateway.service.http_port}/metrics",
             "scheduler": f"http://127.0.0.1:{stack.scheduler.metrics_http.port}/metrics"}
    for i, w in enumerate(stack.workers):
        found[f"worker{i}"] = f"http://127.0.0.1:{w.metrics_http.port}/metrics"
    return found


async def completions(stack, http: httpx.AsyncClient) -> None:
    """One whole completion over HTTP (stream:false) and one over gRPC Generate."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    response = await http.post(f"http://127.0.0.1:{stack.gateway.service.http_port}/v1/chat/completions",
                               json=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
        reply = await generation_pb2_grpc.GenerationServiceStub(channel).Generate(
            pb.GenerateRequest(model=MODEL, prompt="hello", max_tokens=3), metadata=AUTH, timeout=10)
    assert reply.usage.completion_tokens == 3


async def test_a_whole_completion_counts_as_ok(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog, metrics_port=0) as stack, \
            httpx.AsyncClient(timeout=10) as http:
        gateway = urls(stack)["gateway"]
        before = parse(await scrape(gateway))
        await completions(stack, http)
        after = parse(await scrape(gateway))
    ok, cancelled = ({"model": MODEL, "tenant": "t1", "status": s} for s in ("ok", "cancelled"))
    total = "llmserve_requests_total"
    assert value(after, total, **ok) - value(before, total, **ok) == 2
    assert value(after, total, **cancelled) == value(before, total, **cancelled)


async def test_active_gauge_never_negative_under_refused_and_served(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine(step_delay_s=0.01)], catalog) as stack, \
            httpx.AsyncClient(timeout=10) as http:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}"
        lowest: list[float] = []
        done = asyncio.Event()

        async def watch():
            while not done.is_set():
                samples = parse(await scrape(base + "/metrics"))
                lowest.extend(s.value for s in samples.get("llmserve_requests_active", []))
                await asyncio.sleep(0.01)

        async def refused(i: int):
            headers = HEADERS if i % 2 else {"authorization": "Bearer wrong"}
            body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "temperature": -1 if i % 2 else 1}
            response = await http.post(base + "/v1/completions", json=body, headers=headers)
            assert response.status_code in (400, 401)

        async def served():
            response = await http.post(base + "/v1/completions", headers=HEADERS,
                                       json={"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": True})
            assert response.status_code == 200

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(refused(i) for i in range(12)), *(served() for _ in range(6)))
        done.set()
        await watcher
        final = parse(await scrape(base + "/metrics"))
    assert lowest and min(lowest) >= 0
    assert all(s.value == 0 for s in final["llmserve_requests_active"])
    refused_total = value(final, "llmserve_requests_total", tenant="", status="unauthenticated")
    assert refused_total >= 6


async def test_every_process_metrics_pass_promtool_and_health_follows_grpc(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog, metrics_port=0) as stack, \
            httpx.AsyncClient(timeout=10) as http:
        await completions(stack, http)
        for name, url in urls(stack).items():
            text = await scrape(url)
            promtool_check_metrics(text)
            health = await http.get(url.replace("/metrics", "/health"))
            assert (health.status_code, health.text) == (200, "SERVING\n"), name
        samples = parse(await scrape(urls(stack)["worker0"]))
        # exported at 0 before anything happened, so a panel on them has data
        assert "llmserve_preemptions_total" in samples
        assert "llmserve_ratelimit_rejections_total" in samples


async def test_http_health_goes_not_serving_when_the_service_drains(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine(step_delay_s=0.05)], catalog, metrics_port=0) as stack, \
            httpx.AsyncClient(timeout=10) as http, grpc.aio.insecure_channel(stack.gateway_address) as channel:
        health_url = urls(stack)["worker0"].replace("/metrics", "/health")
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = stub.GenerateStream(pb.GenerateRequest(model=MODEL, prompt="hello", max_tokens=60),
                                   metadata=AUTH, timeout=20)
        await call.read()  # the worker holds it now, so its drain waits for it
        stopping = asyncio.create_task(stack.workers[0].stop())
        statuses = []
        while not stopping.done() and len(statuses) < 200:
            try:
                statuses.append((await http.get(health_url)).status_code)
            except httpx.TransportError:
                break
            await asyncio.sleep(0.01)
        await stopping
        call.cancel()
    assert 503 in statuses
