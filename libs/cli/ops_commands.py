"""The operations subcommands of `llmserve`: status, batch, bench (registered by main.py)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from llmserve.common.settings import DEFAULT_REDIS_URL


def cmd_status(args) -> int:
    from .status import run_status

    return run_status(args)


def cmd_batch(args) -> int:
    from .batch import run_batch_command

    return run_batch_command(args)


def cmd_bench(args) -> int:
    from .bench import run_bench_command

    return run_bench_command(args)


def register(sub, add_client_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add status, batch and bench to the `llmserve` subparsers."""
    status = sub.add_parser("status", help="workers, models, queue depth, KV use and alerts")
    status.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    status.add_argument(
        "--scheduler", default=os.environ.get("LLMSERVE_SCHEDULER_ADDRESS", "127.0.0.1:50052")
    )
    status.add_argument("--monitor", default=os.environ.get("LLMSERVE_MONITOR_ADDRESS", "127.0.0.1:50054"))
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each source")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.set_defaults(func=cmd_status)

    batch = sub.add_parser("batch", help="run a JSONL file of prompts through the suite (resumable)")
    batch.add_argument("input", help="JSONL: {id?, prompt | messages, max_tokens?, temperature?, ...} a line")
    batch.add_argument(
        "-o", "--output", required=True, help="JSONL results; re-run with the same file to resume"
    )
    batch.add_argument("--concurrency", type=int, default=8)
    batch.add_argument("--timeout", type=float, default=600.0, help="deadline per request, retries included")
    batch.add_argument("--no-progress", action="store_true")
    add_client_args(batch)
    batch.set_defaults(func=cmd_batch)

    from .bench import add_bench_args

    bench = sub.add_parser("bench", help="load test: closed/open loop, table, JSON, plots, --optimize")
    add_client_args(bench)
    add_bench_args(bench)
    bench.set_defaults(func=cmd_bench)
