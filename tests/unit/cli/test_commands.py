"""The ops subcommands are wired into `llmserve` next to the existing ones."""

from __future__ import annotations

from llmserve.cli.main import build_parser


def test_new_and_existing_subcommands_parse():
    parser = build_parser()
    status = parser.parse_args(["status", "--json", "--redis-url", "redis://r:1/0"])
    assert status.json and status.redis_url == "redis://r:1/0" and status.func.__name__ == "cmd_status"
    batch = parser.parse_args(["batch", "in.jsonl", "-o", "out.jsonl", "--concurrency", "3"])
    assert (batch.input, batch.output, batch.concurrency) == ("in.jsonl", "out.jsonl", 3)
    bench = parser.parse_args(["bench", "-c", "1,4", "--optimize", "--ttft-p99-ms", "300"])
    assert bench.concurrency == "1,4" and bench.optimize and bench.ttft_p99_ms == 300
    assert parser.parse_args(["chat", "hi"]).func.__name__ == "cmd_chat"
    assert parser.parse_args(["up", "--no-monitor"]).no_monitor
