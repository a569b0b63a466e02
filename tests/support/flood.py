"""The admission flood of issue 21, for the e2e tests and bench/flood_bench.py.

`flood_stack` runs real gateway processes (and a scheduler process) on a private
redis-server, with a ScriptedEngine worker in this process. `http_flood` opens one TCP
connection per request at a fixed pace, sends a streaming completion, reads only the status
line and headers (plus a refusal's short body) and then holds the connection without reading,
as the hostile client did. `probe_http` / `probe_grpc` are a well-behaved tenant's short
requests, timed to the first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import redis.asyncio as aioredis

from llmserve.cli.redis_server import RedisServer, free_port
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.gateway.admission.ratelimit_scripts import tenant_keys
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import running_worker

FLOOD_KEY, OTHER_KEY = "flood-key", "other-key"


@dataclass
class Gateway:
    grpc_port: int
    http_port: int


@dataclass
class FloodStack:
    redis_url: str
    gateways: list[Gateway]
    suite: LocalSuite


@contextlib.asynccontextmanager
async def flood_stack(log_dir: Path, gateways: int = 1, env: dict[str, str] | None = None,
                      step_delay_s: float = 0.05) -> AsyncIterator[FloodStack]:
    """`gateways` gateway processes and a scheduler process on one private Redis, and a scripted
    worker (here) with room for far more sequences than one tenant may run."""
    with RedisServer() as redis:
        base = {"LLMSERVE_GATEWAY_API_KEYS": f"acme={FLOOD_KEY},other={OTHER_KEY}"} | (env or {})
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=log_dir, with_monitor=False, env=base)
        try:
            suite.spawn("scheduler", "llmserve.scheduler", suite.ports.scheduler,
                        {"LLMSERVE_SCHEDULER_REGISTRY_REFRESH_MS": "50"})  # fmt: skip
            ports = [Gateway(free_port(), free_port()) for _ in range(gateways)]
            for i, g in enumerate(ports):
                suite.spawn(f"gateway{i}", "llmserve.gateway", g.grpc_port,
                            {"LLMSERVE_GATEWAY_PORT": str(g.grpc_port), "LLMSERVE_GATEWAY_HTTP_PORT": str(g.http_port),
                             "LLMSERVE_GATEWAY_INTERNAL_PORT": str(free_port())})  # fmt: skip
            await asyncio.to_thread(suite.wait_serving, 120)
            engine = ScriptedEngine(total_blocks=1000, step_delay_s=step_delay_s)
            async with running_worker(redis.url, engine, "w0", DEFAULT_MODEL, internal_secret=suite.internal_secret):
                yield FloodStack(redis.url, ports, suite)
        finally:
            await asyncio.to_thread(suite.stop)


@dataclass
class Answer:
    """How one flood request was answered: HTTP status, seconds to the headers, headers, body."""

    status: int
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    writer: asyncio.StreamWriter | None = None  # an admitted request's connection, held open


def completion_request(key: str, max_tokens: int) -> bytes:
    body = json.dumps({"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": max_tokens, "stream": True})
    return (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()  # fmt: skip


async def hold_one(port: int, request: bytes, timeout: float) -> Answer:
    """Send `request`, read the status and headers; an admitted (200) stream is left unread."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return Answer(0, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if status == 200:
        return Answer(status, seconds, headers, writer=writer)
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    writer.close()
    return Answer(status, seconds, headers, body.decode())


async def http_flood(ports: list[int], count: int, rate: float, *, key: str = FLOOD_KEY,
                     max_tokens: int = 4000, timeout: float = 10.0) -> list[Answer]:
    """`count` requests at `rate` per second, the i-th to ports[i % len(ports)]."""
    request = completion_request(key, max_tokens)
    start = time.perf_counter()

    async def paced(i: int) -> Answer:
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        return await hold_one(ports[i % len(ports)], request, timeout)

    return list(await asyncio.gather(*(paced(i) for i in range(count))))


def close_all(answers: list[Answer]) -> None:
    for answer in answers:
        if answer.writer is not None:
            answer.writer.close()


async def probe_http(port: int, key: str = OTHER_KEY, max_tokens: int = 4, timeout: float = 10.0) -> float:
    """One short streamed completion, read to its end; returns its TTFT (raises on failure)."""
    body = {"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": max_tokens, "stream": True}
    started, first = time.perf_counter(), None
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body,
                      headers={"authorization": f"Bearer {key}"}) as response,  # fmt: skip
    ):
        if response.status_code != 200:
            raise AssertionError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        done = False
        async for line in response.aiter_lines():
            if line.startswith("data: {") and first is None:
                first = time.perf_counter() - started
            done = done or line == "data: [DONE]"
    assert first is not None and done, "the stream ended early"
    return first


async def probe_grpc(port: int, key: str = OTHER_KEY, max_tokens: int = 4, timeout: float = 10.0) -> float:
    """One short GenerateStream, read to its end; returns its TTFT (raises on failure)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        started, first = time.perf_counter(), None
        call = stub.GenerateStream(pb.GenerateRequest(model=DEFAULT_MODEL, prompt="Hello", max_tokens=max_tokens),
                                   metadata=(("authorization", f"Bearer {key}"),), timeout=timeout)  # fmt: skip
        async for message in call:
            if message.token_ids and first is None:
                first = time.perf_counter() - started
    assert first is not None
    return first


async def streams_held(redis_url: str, tenant: str) -> int:
    """The tenant's live concurrency leases, as Redis holds them."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await client.zcard(tenant_keys(tenant)[2])
    finally:
        await client.aclose()
