"""Issue 21's admission flood, measured: does one tenant's flood slow another tenant down?

One real gateway process, a scheduler process, real Redis and a scripted worker (this
process). Per run: the other tenant's TTFT unloaded (short streamed requests, HTTP and gRPC in
turn, one every 50 ms), then the flood (1,000 streaming HTTP requests from one tenant at 200/s,
each held unread) with the same probes running through it; then how fast the flood's leases
come back and the tenant's first request after it. Ratios are side by side in one run.

Writes bench/results/admission-flood.{json,md}. `python bench/flood_bench.py [--runs 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support is not installed

import grpc  # noqa: E402
import httpx  # noqa: E402

from llmserve.common.model_store import DEFAULT_MODEL  # noqa: E402
from llmserve.common.stats import quantile  # noqa: E402
from llmserve.gateway.v1 import generation_pb2 as pb  # noqa: E402
from llmserve.gateway.v1 import generation_pb2_grpc  # noqa: E402
from tests.support.flood import (  # noqa: E402
    FLOOD_KEY,
    OTHER_KEY,
    close_all,
    flood_stack,
    http_flood,
    probe_http,
    streams_held,
)

RESULTS = Path(__file__).parent / "results"


class Prober:
    """The other tenant: a short streamed request every `interval` s, HTTP and gRPC in turn,
    each timed to its first token; clients are kept open so a probe measures the gateway."""

    def __init__(self, gw, interval: float = 0.05):
        self.gw = gw
        self.interval = interval
        self.http = httpx.AsyncClient(timeout=30)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc_port}")
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)

    async def close(self) -> None:
        await self.http.aclose()
        await self.channel.close()

    async def one(self, i: int) -> float:
        started, first = time.perf_counter(), None
        if i % 2 == 0:
            body = {"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": 4, "stream": True}
            async with self.http.stream("POST", f"http://127.0.0.1:{self.gw.http_port}/v1/completions",
                                        json=body, headers={"authorization": f"Bearer {OTHER_KEY}"}) as r:  # fmt: skip
                assert r.status_code == 200, r.status_code
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and first is None:
                        first = time.perf_counter() - started
        else:
            request = pb.GenerateRequest(model=DEFAULT_MODEL, prompt="Hello", max_tokens=4)
            async for message in self.stub.GenerateStream(request, metadata=(("authorization", f"Bearer {OTHER_KEY}"),)):
                if message.token_ids and first is None:
                    first = time.perf_counter() - started
        assert first is not None
        return first

    async def run(self, until: asyncio.Future | None = None, count: int = 0) -> tuple[list[float], list[str]]:
        """TTFTs of the probes that succeeded, and the errors of those that did not."""
        tasks: list[asyncio.Task] = []
        while (until is not None and not until.done()) or (until is None and len(tasks) < count):
            tasks.append(asyncio.ensure_future(self.one(len(tasks))))
            await asyncio.sleep(self.interval)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
        return [r for r in results if not isinstance(r, BaseException)], errors


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": 1000 * quantile(values, 0.5), "p99_ms": 1000 * quantile(values, 0.99),
            "max_ms": 1000 * max(values)}  # fmt: skip


async def one_run(stack, count: int, rate: float) -> dict:
    gw = stack.gateways[0]
    prober = Prober(gw)
    await prober.run(count=10)  # warm
    unloaded, unloaded_errors = await prober.run(count=100)
    flood = asyncio.ensure_future(http_flood([gw.http_port], count, rate))
    loaded, loaded_errors = await prober.run(until=flood)
    await prober.close()
    answers = await flood
    refused = [a.seconds for a in answers if a.status != 200]
    statuses = sorted({a.status for a in answers})
    admitted = sum(a.status == 200 for a in answers)
    close_all(answers)
    started = time.perf_counter()
    while await streams_held(stack.redis_url, "acme"):
        await asyncio.sleep(0.02)
    released = time.perf_counter() - started
    started = time.perf_counter()
    await probe_http(gw.http_port, key=FLOOD_KEY)
    return {
        "admitted": admitted, "statuses": statuses, "refusal": summary(refused),
        "other_unloaded_ttft": summary(unloaded), "other_flood_ttft": summary(loaded),
        "ttft_p99_ratio": quantile(loaded, 0.99) / quantile(unloaded, 0.99),
        "other_errors_unloaded": unloaded_errors, "other_errors_flood": loaded_errors,
        "leases_released_s": released, "first_after_flood_s": time.perf_counter() - started,
    }  # fmt: skip


async def main(runs: int, count: int, rate: float, step_delay_s: float) -> dict:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="flood-bench-") as logs:
            async with flood_stack(Path(logs), step_delay_s=step_delay_s) as stack:
                results.append(await one_run(stack, count, rate))
        print(json.dumps(results[-1], indent=1))
    return {"machine": platform.processor() or platform.machine(), "count": count, "rate": rate,
            "step_delay_s": step_delay_s, "runs": results}  # fmt: skip


def markdown(report: dict) -> str:
    rows = ["| run | admitted | statuses | refusal p99 / max ms | other TTFT p99 unloaded / flood ms | ratio | "
            "other's errors | first after flood ms |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, r in enumerate(report["runs"]):
        rows.append(
            f"| {i + 1} | {r['admitted']} | {r['statuses']} | {r['refusal']['p99_ms']:.0f} / {r['refusal']['max_ms']:.0f} "
            f"| {r['other_unloaded_ttft']['p99_ms']:.1f} / {r['other_flood_ttft']['p99_ms']:.1f} "
            f"| {r['ttft_p99_ratio']:.2f} | {len(r['other_errors_unloaded']) + len(r['other_errors_flood'])} "
            f"| {1000 * r['first_after_flood_s']:.0f} |"
        )
    return (f"# Admission flood ({report['count']} held streaming requests at {report['rate']:.0f}/s, "
            f"scripted worker step {report['step_delay_s']} s)\n\n"
            + "\n".join(rows) + "\n")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0)
    # 0.1 s: each of the flood's 48 admitted streams makes 10 tokens/s, about what SmolLM2-135M
    # gives per sequence at batch 48 on CPU; lower it to load the gateway's token path harder.
    parser.add_argument("--step-delay", type=float, default=0.1, help="the scripted worker's step time (s)")
    args = parser.parse_args()
    report = asyncio.run(main(args.runs, args.count, args.rate, args.step_delay))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "admission-flood.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "admission-flood.md").write_text(markdown(report))
    print(markdown(report))
