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
import subprocess
import sys
import time
from pathlib import Path

import grpc

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client import Client
from llmserve.common.chat_template import chat_token_ids
from llmserve.common.model_store import DEFAULT_MODEL, resolve_model
from llmserve.common.stats import quantile

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["What is the capital of France?", "Name a primary color.", "What is 7 times 6?",
           "Say hello in Spanish.", "What is the largest ocean?", "Who wrote Hamlet?"]


def pct(values: list[float], q: float) -> float:
    return quantile(values, q, method="floor")


WARMUP = 3


def stream_ttft(client: Client, i: int) -> float:
    messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    started, first = time.perf_counter(), None
    # Read the whole (short) stream: breaking off early would cancel the request and leave its
    # tail running into the next one's prefill.
    for piece in client.stream(DEFAULT_MODEL, messages=messages, temperature=0.0, max_tokens=4):
        if piece.token_ids and first is None:
            first = time.perf_counter() - started
    return first


class EngineChild:
    """The engine alone in its own process (OpenMP reads OMP_WAIT_POLICY once, at load),
    answering one request per line on stdin with its TTFT on stdout."""

    def __init__(self, wait_policy: str):
        env = {**os.environ, "OMP_WAIT_POLICY": wait_policy}
        self.proc = subprocess.Popen([sys.executable, __file__, "--engine-child"], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "ready"

    def ttft(self, i: int) -> float:
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def engine_child_main() -> None:
    import torch
    from transformers import AutoTokenizer

    from llmserve.worker.engine.config import EngineConfig
    from llmserve.worker.engine.llm_engine import LLMEngine
    from llmserve.worker.engine.types import EngineRequest, SamplingParams

    torch.set_num_threads(2)
    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = LLMEngine.from_config(EngineConfig(model=path, num_threads=2))
    print("ready", flush=True)
    for line in sys.stdin:
        i = int(line)
        ids = chat_token_ids(tokenizer, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
        started, first = time.perf_counter(), None
        engine.add_request(EngineRequest(f"r{i}", ids, SamplingParams(max_tokens=4, temperature=0.0)))
        while engine.has_unfinished():
            for o in engine.step():
                if first is None and o.token_ids:
                    first = time.perf_counter() - started
        print(first, flush=True)


def interleaved_ttft(n: int) -> tuple[list[float], list[float]]:
    """TTFT of the engine alone (configured as the worker runs it) and through the stack, one
    request of each in turn, so both see the same machine state."""
    engine, stack = [], []
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=Path("/tmp/llmserve-bench-logs"),
                           with_monitor=False, env={"LLMSERVE_WORKER_NUM_THREADS": "2"})
        suite.start(timeout=240)
        child = EngineChild("PASSIVE")
        try:
            with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key) as client:
                for i in range(n + WARMUP):
                    e, s_ = child.ttft(i), stream_ttft(client, i)
                    if i >= WARMUP:
                        engine.append(e)
                        stack.append(s_)
        finally:
            child.close()
            suite.stop()
    return engine, stack


def engine_alone_ttft(n: int, wait_policy: str) -> list[float]:
    child = EngineChild(wait_policy)
    try:
        return [child.ttft(i) for i in range(n + WARMUP)][WARMUP:]
    finally:
        child.close()


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


def summary(values: list[float]) -> dict:
    return {"p50": pct(values, .5) * 1e3, "p99": pct(values, .99) * 1e3, "mean": statistics.fmean(values) * 1e3}


def main() -> None:
    import asyncio

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--engine-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_child_main()
        return
    rejections = asyncio.run(full_queue_rejections(200))
    # The worker process runs its engine with OMP_WAIT_POLICY=PASSIVE (services/worker/__main__.py):
    # on cores it shares with the gateway, scheduler and Redis, spinning OpenMP threads starve
    # them. The overhead compares like with like (the engine as the worker runs it); the engine
    # with spinning threads, as on a dedicated box, is reported beside it.
    # Spinning threads would steal the stack's cores: that engine runs after, on its own.
    engine, stack = interleaved_ttft(args.requests)
    dedicated = engine_alone_ttft(args.requests, "ACTIVE")
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "model": DEFAULT_MODEL,
        "requests": args.requests, "load_average": os.getloadavg(),
        "engine_ttft_ms": summary(engine),
        "engine_ttft_spinning_threads_ms": summary(dedicated),
        "stack_ttft_ms": summary(stack),
        "overhead_ms": {"p50": (pct(stack, .5) - pct(engine, .5)) * 1e3,
                        "p99": (pct(stack, .99) - pct(engine, .99)) * 1e3,
                        "mean": (statistics.fmean(stack) - statistics.fmean(engine)) * 1e3},
        # Request i of each went in turn with the same prompt: the difference of each pair
        # cancels most machine noise that the difference of two percentiles keeps.
        "paired_overhead_ms": summary([s_ - e for s_, e in zip(stack, engine, strict=True)]),
        "full_queue_unavailable_ms": {"p50": pct(rejections, .5) * 1e3, "p99": pct(rejections, .99) * 1e3,
                                      "max": max(rejections) * 1e3},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stack-overhead.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "stack-overhead.md").write_text(to_markdown(result))
    print(json.dumps(result, indent=2))


def to_markdown(result: dict) -> str:
    rows = [("engine_ttft_ms", "engine alone, as the worker runs it (OMP_WAIT_POLICY=PASSIVE)"),
            ("stack_ttft_ms", "gateway + scheduler + worker (processes, gRPC stream)"),
            ("overhead_ms", "**overhead: stack minus engine alone** (difference of the percentiles)"),
            ("paired_overhead_ms", "overhead per request pair (percentiles of stack_i - engine_i)"),
            ("engine_ttft_spinning_threads_ms", "engine alone, spinning OpenMP threads (dedicated cores)"),
            ("full_queue_unavailable_ms", "full queue answers UNAVAILABLE")]
    md = ["| measure | p50 (ms) | p99 (ms) |", "|---|---|---|"]
    md += [f"| {label} | {result[key]['p50']:.2f} | {result[key]['p99']:.2f} |" for key, label in rows]
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    return (f"# Stack overhead ({result['machine']}, {DEFAULT_MODEL}, concurrency 1, "
            f"{result['requests']} requests each)\n\nLoad average at the end: {load}.\n\n" + "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
