"""`llmserve bench` against in-process services (ScriptedEngine), and the optimizer's search."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from llmserve.cli.bench import DEFAULT_PROMPTS, add_bench_args, run_bench_command
from llmserve.cli.bench_load import closed_loop, open_loop, summarize
from llmserve.cli.bench_optimize import LatencyTarget, find_max_concurrency
from llmserve.cli.bench_report import render_table
from llmserve.cli.bench_targets import GrpcTarget
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack


async def test_closed_and_open_loops_measure_every_request(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine(step_delay_s=0.002)], catalog) as stack:
        target = GrpcTarget(stack.gateway_address, API_KEY, MODEL)
        closed = summarize(await closed_loop(target, DEFAULT_PROMPTS, 2, 6, max_tokens=5))
        opened = summarize(await open_loop(target, DEFAULT_PROMPTS, 50.0, 4, max_tokens=5))
        await target.close()
    assert closed["requests"] == 6 and closed["errors"] == 0 and closed["level"] == 2
    assert closed["output_tok_s"] > 0 and 0 < closed["ttft_p50_ms"] <= closed["e2e_p50_ms"]
    assert closed["itl_p50_ms"] is not None
    assert opened["mode"] == "open" and opened["requests"] == 4 and opened["errors"] == 0
    table = render_table([closed, opened]).splitlines()
    assert table[0].split()[:4] == ["mode", "level", "reqs", "err"] and table[2].split()[:4] == [
        "closed",
        "2",
        "6",
        "0",
    ]


async def test_bench_command_writes_json_and_plots(redis_url, tmp_path, catalog):
    pytest.importorskip("matplotlib")
    parser = argparse.ArgumentParser()
    for flag in ("--address", "--api-key", "--model"):
        parser.add_argument(flag)
    parser.add_argument("--max-tokens", type=int)
    add_bench_args(parser)
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        args = parser.parse_args(
            [
                "--address",
                stack.gateway_address,
                "--api-key",
                API_KEY,
                "--model",
                MODEL,
                "-c",
                "1,2",
                "-n",
                "4",
                "--max-tokens",
                "4",
                "--warmup",
                "1",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        assert await asyncio.to_thread(run_bench_command, args) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["level"] for r in data["results"]] == [1, 2] and data["meta"]["api"] == "grpc"
    for name in ("throughput.png", "latency.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_optimizer_finds_the_largest_concurrency_under_the_target():
    calls = []

    async def measure(c: int) -> dict:  # latency grows 10 ms per stream
        calls.append(c)
        return {"errors": 0, "ttft_p99_ms": 10.0 * c, "itl_p99_ms": 1.0, "output_tok_s": 100.0 * c}

    optimum = await find_max_concurrency(measure, LatencyTarget(ttft_p99_ms=75), max_concurrency=64)
    assert optimum.concurrency == 7 and optimum.best["ttft_p99_ms"] == 70
    assert calls == [1, 2, 4, 8, 6, 7], "doubling, then bisection"
    assert "LLMSERVE_WORKER_MAX_NUM_SEQS=4" in optimum.recommendation(workers=2)

    unreachable = await find_max_concurrency(measure, LatencyTarget(ttft_p99_ms=5))
    assert unreachable.concurrency == 0 and "no concurrency" in unreachable.recommendation()

    always = await find_max_concurrency(measure, LatencyTarget(), max_concurrency=12)
    assert always.concurrency == 12


def test_errors_break_any_target():
    assert not LatencyTarget().met_by({"errors": 1})
    assert not LatencyTarget(itl_p99_ms=5).met_by({"errors": 0, "itl_p99_ms": None})
