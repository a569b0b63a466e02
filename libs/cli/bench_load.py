"""The load generator behind `llmserve bench`: closed loop and open loop, per-request timings.

A `Target` streams one request and yields the number of new tokens in each message, so the
gRPC client and the OpenAI HTTP API are measured by the same code. Timings per request:
TTFT (send -> first token), inter-token latency (gap between token-carrying messages,
spread over the tokens of the later one), end-to-end, and tokens out.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llmserve.common.stats import quantile


class Target(Protocol):
    """Something to load: streams one prompt, yielding token counts as they arrive."""

    def stream(self, prompt: dict, max_tokens: int) -> AsyncIterator[int]:
        """Yield the number of new tokens in each streamed message."""


@dataclass
class Sample:
    """One request's timings (seconds); `error` set when it failed."""

    start: float
    ttft: float | None = None
    e2e: float = 0.0
    tokens: int = 0
    itl: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunResult:
    """All samples of one load level (a concurrency, or a rate)."""

    mode: str  # "closed" or "open"
    level: float  # concurrency, or requests per second
    duration_s: float
    samples: list[Sample]


async def measure(target: Target, prompt: dict, max_tokens: int) -> Sample:
    sample = Sample(start=time.perf_counter())
    last = sample.start
    try:
        async for n in target.stream(prompt, max_tokens):
            if n <= 0:
                continue
            now = time.perf_counter()
            if sample.ttft is None:
                sample.ttft = now - sample.start
            else:
                sample.itl.extend([(now - last) / n] * n)
            last = now
            sample.tokens += n
    except Exception as e:  # a failed request is a data point, not the end of the run
        sample.error = f"{type(e).__name__}: {getattr(e, 'code', lambda: '')() or e}"
    sample.e2e = time.perf_counter() - sample.start
    return sample


async def closed_loop(
    target: Target,
    prompts: Sequence[dict],
    concurrency: int,
    requests: int,
    max_tokens: int,
    on_done: Callable[[Sample], None] = lambda s: None,
) -> RunResult:
    """`concurrency` users, each sending its next request when the last one finished."""
    counter = iter(range(requests))
    samples: list[Sample] = []

    async def user() -> None:
        for i in counter:
            sample = await measure(target, prompts[i % len(prompts)], max_tokens)
            samples.append(sample)
            on_done(sample)

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return RunResult("closed", concurrency, time.perf_counter() - started, samples)


async def open_loop(
    target: Target,
    prompts: Sequence[dict],
    rate: float,
    requests: int,
    max_tokens: int,
    on_done: Callable[[Sample], None] = lambda s: None,
    seed: int = 0,
) -> RunResult:
    """Poisson arrivals at `rate` per second, whatever the server's pace (queues show up as TTFT)."""
    rng = random.Random(seed)
    samples: list[Sample] = []

    async def one(i: int) -> None:
        sample = await measure(target, prompts[i % len(prompts)], max_tokens)
        samples.append(sample)
        on_done(sample)

    started = time.perf_counter()
    tasks = []
    for i in range(requests):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    return RunResult("open", rate, time.perf_counter() - started, samples)


def summarize(run: RunResult) -> dict:
    """Throughput and latency percentiles of one run (latencies in milliseconds)."""
    ok = [s for s in run.samples if s.error is None]
    tokens = sum(s.tokens for s in ok)
    out = {
        "mode": run.mode,
        "level": run.level,
        "requests": len(run.samples),
        "errors": len(run.samples) - len(ok),
        "duration_s": round(run.duration_s, 3),
        "output_tok_s": round(tokens / run.duration_s, 2) if run.duration_s else 0,
        "req_s": round(len(ok) / run.duration_s, 3) if run.duration_s else 0,
    }
    series = {
        "ttft": [s.ttft for s in ok if s.ttft is not None],
        "itl": [x for s in ok for x in s.itl],
        "e2e": [s.e2e for s in ok],
    }
    for name, values in series.items():
        for q in (50, 90, 99):
            v = quantile(values, q / 100)
            out[f"{name}_p{q}_ms"] = None if v is None else round(v * 1000, 2)
    return out
