"""Serving overhead of the stack, and how fast a full queue says no.

1. TTFT through gateway + scheduler + worker (real processes, real model, gRPC streaming,
   concurrency 1) against TTFT of the worker engine alone (same prompts, in-process), in one
   run; the difference is what the stack adds.
2. A gateway whose model queue is full answers UNAVAILABLE: time per rejection.

Writes bench/results/stack-overhead.{json,md}. `python bench/stack_bench.py [--requests N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import grpc

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client import Client
from llmserve.common.model_store import DEFAULT_MODEL, resolve_model

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["What is the capital of France?", "Name a primary color.", "What is 7 times 6?",
           "Say hello in Spanish.", "What is the largest ocean?", "Who wrote Hamlet?"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def stack_ttft(n: int) -> list[float]:
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=Path("/tmp/llmserve-bench-logs"),
                           with_monitor=False, env={"LLMSERVE_WORKER_NUM_THREADS": "2"})
        suite.start(timeout=240)
        try:
            out = []
            with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key) as client:
                for i in range(n + 3):
                    messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
                    started, first = time.perf_counter(), None
                    # Read the whole (short) stream: breaking off early would cancel the request
                    # and leave its tail running into the next one's prefill.
                    for piece in client.stream(DEFAULT_MODEL, messages=messages, temperature=0.0, max_tokens=4):
                        if piece.token_ids and first is None:
                            first = time.perf_counter() - started
                    if i >= 3:  # warm-up
                        out.append(first)
            return out
        finally:
            suite.stop()


def engine_ttft(n: int) -> list[float]:
    import torch
    from transformers import AutoTokenizer

    from llmserve.worker.engine.config import EngineConfig
    from llmserve.worker.engine.llm_engine import LLMEngine
    from llmserve.worker.engine.types import EngineRequest, SamplingParams

    torch.set_num_threads(2)
    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = LLMEngine.from_config(EngineConfig(model=path, num_threads=2))
    out = []
    for i in range(n + 3):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                            add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        started = time.perf_counter()
        engine.add_request(EngineRequest(f"r{i}", ids, SamplingParams(max_tokens=4, temperature=0.0)))
        first = None
        while engine.has_unfinished():
            for o in engine.step():
                if first is None and o.token_ids:
                    first = time.perf_counter() - started
        if i >= 3:
            out.append(first)
    return out


async def full_queue_rejections(n: int) -> list[float]:
    import asyncio

    from llmserve.common.server import GrpcApp
    from llmserve.gateway.app import GatewayService
    from llmserve.gateway.settings import GatewaySettings
    from llmserve.gateway.v1 import generation_pb2 as pb
    from llmserve.gateway.v1 import generation_pb2_grpc

    with RedisServer() as redis:
        settings = GatewaySettings(redis_url=redis.url, port=0, api_keys=["k"], max_queue_len=4)
        async with GrpcApp(GatewayService(settings), settings) as app, \
                grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            auth = (("authorization", "Bearer k"),)
            request = pb.GenerateRequest(model=DEFAULT_MODEL, prompt="hi", max_tokens=1)
            fillers = [asyncio.ensure_future(stub.Generate(request, metadata=auth, timeout=60)) for _ in range(4)]
            import redis as sync_redis

            client = sync_redis.Redis.from_url(redis.url)
            while client.xlen(f"llmserve:requests:{DEFAULT_MODEL}") < 4:  # no scheduler: they stay queued
                await asyncio.sleep(0.05)
            times = []
            for _ in range(n):
                started = time.perf_counter()
                try:
                    await stub.Generate(request, metadata=auth, timeout=5)
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e.code()
                times.append(time.perf_counter() - started)
            for call in fillers:
                call.cancel()
            return times


def main() -> None:
    import asyncio

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    rejections = asyncio.run(full_queue_rejections(200))
    engine = engine_ttft(args.requests)
    stack = stack_ttft(args.requests)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "model": DEFAULT_MODEL,
        "requests": args.requests,
        "engine_ttft_ms": {"p50": pct(engine, .5) * 1e3, "p99": pct(engine, .99) * 1e3},
        "stack_ttft_ms": {"p50": pct(stack, .5) * 1e3, "p99": pct(stack, .99) * 1e3},
        "overhead_ms": {"p50": (pct(stack, .5) - pct(engine, .5)) * 1e3,
                        "p99": (pct(stack, .99) - pct(engine, .99)) * 1e3,
                        "mean": (statistics.fmean(stack) - statistics.fmean(engine)) * 1e3},
        "full_queue_unavailable_ms": {"p50": pct(rejections, .5) * 1e3, "p99": pct(rejections, .99) * 1e3,
                                      "max": max(rejections) * 1e3},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stack-overhead.json").write_text(json.dumps(result, indent=2))
    md = ["| measure | p50 (ms) | p99 (ms) |", "|---|---|---|"]
    for key in ("engine_ttft_ms", "stack_ttft_ms", "overhead_ms", "full_queue_unavailable_ms"):
        md.append(f"| {key.removesuffix('_ms')} | {result[key]['p50']:.2f} | {result[key]['p99']:.2f} |")
    (RESULTS / "stack-overhead.md").write_text(
        f"# Stack overhead ({result['machine']}, {DEFAULT_MODEL}, concurrency 1)\n\n" + "\n".join(md) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
