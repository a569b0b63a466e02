"""`llmserve bench`: load the suite (gRPC or the OpenAI HTTP API), report, plot, optimize.

    llmserve bench -c 1,4,16 -n 32                 # closed loop at three concurrencies
    llmserve bench --rate 2,4 -n 64                # open loop (Poisson) at 2 and 4 req/s
    llmserve bench --optimize --ttft-p99-ms 500    # largest concurrency meeting the target
    llmserve bench --http http://127.0.0.1:8000 -c 4

Writes results.json, throughput.png and latency.png to --out.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from .bench_load import Target, closed_loop, open_loop, summarize
from .bench_optimize import LatencyTarget, find_max_concurrency
from .bench_report import render_table, write_json, write_plots

_TOPICS = [
    "the capital of France",
    "why the sky is blue",
    "how a hash map works",
    "the water cycle",
    "what a prime number is",
    "how vaccines work",
    "the rules of chess",
    "what gRPC is",
    "how to boil an egg",
    "the causes of tides",
    "what inflation is",
    "how bridges carry loads",
    "what photosynthesis does",
    "how a compiler works",
    "the history of paper",
    "what a black hole is",
]
DEFAULT_PROMPTS = [
    {"messages": [{"role": "user", "content": f"Explain {t} in a few sentences."}], "temperature": 0.0}
    for t in _TOPICS
]


def load_prompts(path: str | None) -> list[dict]:
    if not path:
        return DEFAULT_PROMPTS
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _levels(text: str | None, kind=int) -> list:
    return [kind(x) for x in text.split(",") if x.strip()] if text else []


def make_target(args) -> Target:
    from .bench_targets import GrpcTarget, HttpTarget

    if args.http:
        return HttpTarget(args.http, args.api_key, args.model)
    return GrpcTarget(args.address, args.api_key, args.model)


async def _run_level(target, prompts, args, mode: str, level, progress: bool) -> dict:
    from tqdm import tqdm

    bar = tqdm(
        total=args.requests,
        desc=f"{mode} {level}",
        unit="req",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    done = bar.update
    if mode == "closed":
        run = await closed_loop(target, prompts, level, args.requests, args.max_tokens, lambda s: done(1))
    else:
        run = await open_loop(target, prompts, level, args.requests, args.max_tokens, lambda s: done(1))
    bar.close()
    return summarize(run)


async def run_bench(args) -> tuple[list[dict], dict]:
    prompts = load_prompts(args.prompts)
    target = make_target(args)
    progress = not args.no_progress
    try:
        if args.warmup:
            await closed_loop(target, prompts, 1, args.warmup, args.max_tokens)
        summaries = []
        for c in _levels(args.concurrency):
            summaries.append(await _run_level(target, prompts, args, "closed", c, progress))
        for rate in _levels(args.rate, float):
            summaries.append(await _run_level(target, prompts, args, "open", rate, progress))
        extra = {}
        if args.optimize:
            goal = LatencyTarget(args.ttft_p99_ms, args.itl_p99_ms, args.e2e_p99_ms)

            async def measure(c: int) -> dict:
                return await _run_level(target, prompts, args, "closed", c, progress)

            optimum = await find_max_concurrency(measure, goal, args.max_concurrency)
            summaries += [s for c, s in sorted(optimum.measured.items()) if s not in summaries]
            extra = {
                "optimum": {
                    "concurrency": optimum.concurrency,
                    "target": vars(goal),
                    "recommendation": optimum.recommendation(args.workers),
                }
            }
    finally:
        await target.close()
    return summaries, extra


def run_bench_command(args) -> int:
    if not (args.concurrency or args.rate or args.optimize):
        args.concurrency = "1,4,16"
    args.max_tokens = args.max_tokens or 64
    started = time.time()
    summaries, extra = asyncio.run(run_bench(args))
    print(render_table(summaries))
    if "optimum" in extra:
        print(f"\noptimum: {extra['optimum']['recommendation']}")
    out = Path(args.out)
    meta = {
        "target": args.http or args.address,
        "api": "http" if args.http else "grpc",
        "model": args.model,
        "max_tokens": args.max_tokens,
        "requests_per_level": args.requests,
        "started_unix": int(started),
        **extra,
    }
    write_json(out / "results.json", summaries, meta)
    written = [] if args.no_plots else write_plots(out, summaries, args.model)
    print(f"\nwrote {out / 'results.json'}" + "".join(f", {p}" for p in written), file=sys.stderr)
    return 1 if any(s["errors"] for s in summaries) else 0


def add_bench_args(p) -> None:
    """The bench subcommand's options; --address, --api-key, --model and --max-tokens (default
    64 here) come from main.py's client options."""
    p.add_argument("-c", "--concurrency", help="closed loop at these concurrencies, e.g. 1,4,16 (default)")
    p.add_argument("--rate", help="open loop at these request rates per second, e.g. 2,4")
    p.add_argument("-n", "--requests", type=int, default=32, help="requests per level")
    p.add_argument("--warmup", type=int, default=2, help="requests sent first and not measured")
    p.add_argument(
        "--prompts", help="JSONL of prompts (batch input format); default: 16 built-in chat prompts"
    )
    p.add_argument("--http", metavar="URL", help="load the OpenAI HTTP API at URL instead of gRPC")
    p.add_argument("--out", default="bench/results/latest", help="directory for results.json and plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--optimize", action="store_true", help="find the largest concurrency meeting the targets")
    p.add_argument("--ttft-p99-ms", type=float, default=None)
    p.add_argument("--itl-p99-ms", type=float, default=None)
    p.add_argument("--e2e-p99-ms", type=float, default=None)
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument(
        "--workers", type=int, default=1, help="workers serving, for the per-worker recommendation"
    )
