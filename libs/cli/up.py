"""`llmserve up`: the whole suite on this machine until Ctrl-C."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from llmserve.common.model_store import DEFAULT_MODEL, resolve_model

from .suite import LocalSuite, Ports


def run_up(args) -> int:
    started = time.monotonic()
    print(f"preparing {DEFAULT_MODEL} ...", flush=True)
    resolve_model(DEFAULT_MODEL)
    suite = LocalSuite(ports=Ports(), redis_url=os.environ.get("REDIS_URL") or None,
                       log_dir=Path(".run/logs"), with_monitor=not args.no_monitor,
                       workers=args.workers)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        redis_url = suite.start_redis()
        print(f"redis: {redis_url}", flush=True)
        suite.start()
        _banner(suite, time.monotonic() - started)
        while not stop:
            dead = [s.name for s in suite.services if not s.alive()]
            if dead:
                print(f"service(s) exited: {', '.join(dead)}; see .run/logs/", flush=True)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print("\nstopping ...", flush=True)
        suite.stop()
        print("stopped.", flush=True)


def _banner(suite: LocalSuite, seconds: float) -> None:
    p = suite.ports
    key = suite.api_key
    print(f"""
llmserve is up ({seconds:.1f}s) - all services SERVING
  gateway gRPC   127.0.0.1:{p.gateway}   (llmserve.gateway.v1.GenerationService)
  OpenAI API     http://127.0.0.1:{p.http}/v1   (chat/completions, completions, models; WebSocket /v1/ws)
  scheduler      127.0.0.1:{p.scheduler}
  worker         127.0.0.1:{p.worker}
  monitor        127.0.0.1:{p.monitor}   dashboard http://127.0.0.1:{p.monitor_http}/
  logs           .run/logs/
  API key (dev)  {key}
  internal calls authenticated with a secret made for this run; admin commands
  (llmserve status, llmserve models worker ...) read .run/operator.token

try:
  .venv/bin/llmserve chat "What is the capital of France?"
  grpcurl -plaintext -H 'authorization: Bearer {key}' \\
    -d '{{"model": "{DEFAULT_MODEL}", "prompt": "The capital of France is", "max_tokens": 16}}' \\
    127.0.0.1:{p.gateway} llmserve.gateway.v1.GenerationService/Generate
  curl http://127.0.0.1:{p.http}/v1/chat/completions -H 'authorization: Bearer {key}' \
    -H 'content-type: application/json' \
    -d '{{"model": "{DEFAULT_MODEL}", "messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 32}}'

Ctrl-C stops everything.
""", flush=True)
