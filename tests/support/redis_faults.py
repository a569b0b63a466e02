"""Redis faults under load (issue 18): real gateway and scheduler processes on one Redis (plain or
Sentinel), a scripted worker in this process, and a load that records how every request ended.

Each request ends one of three ways: `completed` (every token index once, then a finish),
`failed` (an explicit gRPC error from the stack, well before the client's own deadline) or `lost`
(nothing final before the client gave up). "Nothing accepted is ever lost" means lost == 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from llmserve.cli.redis_server import free_port
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import running_worker

API_KEY = "faults-key"
CLIENT_TIMEOUT_S = 45.0  # a request with no final answer by then counts as lost


@dataclass
class FaultStack:
    grpc_ports: list[int]
    engine: ScriptedEngine
    suite: LocalSuite

    def requeued(self) -> int:
        """Requests the worker was handed more than once (a fence and requeue each)."""
        return sum(n - 1 for n in Counter(self.engine.seen).values() if n > 1)


@contextlib.asynccontextmanager
async def fault_stack(redis_url: str, log_dir: Path, *, gateways: int = 2, schedulers: int = 2,
                      env: dict[str, str] | None = None) -> AsyncIterator[FaultStack]:
    base = {"LLMSERVE_GATEWAY_API_KEYS": f"acme={API_KEY}"} | (env or {})
    suite = LocalSuite(ports=Ports.free(), redis_url=redis_url, log_dir=log_dir, with_monitor=False, env=base)
    try:
        for i in range(schedulers):
            port = free_port()
            suite.spawn(f"scheduler{i}", "llmserve.scheduler", port,
                        {"LLMSERVE_SCHEDULER_PORT": str(port), "LLMSERVE_SCHEDULER_SCHEDULER_ID": f"s{i}",
                         "LLMSERVE_SCHEDULER_METRICS_PORT": str(free_port()),
                         "LLMSERVE_SCHEDULER_REGISTRY_REFRESH_MS": "50"})  # fmt: skip
        ports = [free_port() for _ in range(gateways)]
        for i, port in enumerate(ports):
            suite.spawn(f"gateway{i}", "llmserve.gateway", port,
                        {"LLMSERVE_GATEWAY_PORT": str(port), "LLMSERVE_GATEWAY_HTTP_PORT": str(free_port()),
                         "LLMSERVE_GATEWAY_INTERNAL_PORT": str(free_port())})  # fmt: skip
        await asyncio.to_thread(suite.wait_serving, 120)
        engine = ScriptedEngine(total_blocks=1000, step_delay_s=0.05)
        async with running_worker(redis_url, engine, "w0", DEFAULT_MODEL, internal_secret=suite.internal_secret):
            yield FaultStack(ports, engine, suite)
    finally:
        await asyncio.to_thread(suite.stop)


@dataclass
class LoadReport:
    completed: int = 0
    failed: Counter = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # a gap or a repeat in a completed stream
    errors: Counter = field(default_factory=Counter)  # the explicit failures' messages

    @property
    def total(self) -> int:
        return self.completed + sum(self.failed.values()) + len(self.lost)

    def summary(self) -> str:
        return (f"{self.total} requests: {self.completed} completed, {sum(self.failed.values())} failed "
                f"explicitly {dict(self.failed)}, {len(self.lost)} lost, {len(self.broken)} broken; "
                f"errors {dict(self.errors.most_common(5))}")


async def one_request(port: int, report: LoadReport, max_tokens: int) -> bool:
    """One streamed generation on gateway `port`; True when it completed."""
    request_id = uuid.uuid4().hex
    indexes, finish = [], 0
    started = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = generation_pb2_grpc.GenerationServiceStub(channel).GenerateStream(
            pb.GenerateRequest(model=DEFAULT_MODEL, prompt="hello", max_tokens=max_tokens, request_id=request_id),
            metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=CLIENT_TIMEOUT_S)
        try:
            async for message in call:
                indexes.extend(range(message.index, message.index + len(message.token_ids)))
                finish = message.finish_reason or finish
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started > CLIENT_TIMEOUT_S - 1:
                report.lost.append(request_id)
            else:
                report.failed[e.code().name] += 1
                report.errors[f"{e.code().name}: {e.details()}"[:160]] += 1
            return False
    if finish and indexes == list(range(max_tokens)):
        report.completed += 1
        return True
    report.broken.append(f"{request_id}: finish {finish}, indexes {indexes[:5]}…{indexes[-5:]}")
    report.completed += 1
    return False


async def run_load(stack: FaultStack, stop: asyncio.Event, report: LoadReport, *, streams: int = 8,
                   new_per_s: float = 2.0, max_tokens: int = 40) -> None:
    """`streams` clients streaming back to back, and `new_per_s` extra requests a second, spread
    over the gateways, until `stop` is set; returns once every request has ended."""
    ports = itertools.cycle(stack.grpc_ports)

    async def streamer(port: int) -> None:
        while not stop.is_set():
            if not await one_request(port, report, max_tokens):
                await asyncio.sleep(0.2)  # a client backs off after an error, as ours does

    async def arrivals() -> None:
        extra = []
        while not stop.is_set():
            extra.append(asyncio.create_task(one_request(next(ports), report, max_tokens // 4)))
            await asyncio.sleep(1 / new_per_s)
        await asyncio.gather(*extra)

    await asyncio.gather(arrivals(), *(streamer(next(ports)) for _ in range(streams)))
