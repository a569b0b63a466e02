"""`llmserve up`: the whole suite on this machine until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from llmserve.common.model_store import DEFAULT_MODEL, resolve_model

from .redis_server import free_port
from .suite import LocalSuite, Ports


def run_up(args) -> int:
    started = time.monotonic()
    _say(f"preparing {DEFAULT_MODEL} ...")
    resolve_model(DEFAULT_MODEL)
    free = getattr(args, "free_ports", False)
    suite = LocalSuite(ports=Ports.free() if free else Ports(), redis_url=os.environ.get("REDIS_URL") or None,
                       redis_port=free_port() if free else 6380, log_dir=Path(".run/logs"),
                       with_monitor=not args.no_monitor, workers=args.workers)
    stop = False
    serving = False

    def on_signal(*_):
        nonlocal stop
        stop = True
        if not serving:  # still starting: stop waiting for it
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        redis_url = suite.start_redis()
        _say(f"redis: {redis_url}")
        suite.start()
        serving = True
        _banner(suite, time.monotonic() - started)
        while not stop:
            dead = [s.name for s in suite.services if not s.alive()]
            if dead:
                _say(f"service(s) exited: {', '.join(dead)}; see .run/logs/")
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        serving = True  # a second Ctrl-C must not interrupt the shutdown
        _say("\nstopping ...")
        suite.stop()
        _say("stopped.")


def _say(text: str) -> None:
    """Print, unless nobody reads any more (`| head` exited, a closed terminal): the shutdown
    that follows must never depend on stdout."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, OSError):
        # Point stdout at /dev/null so the interpreter's own flush at exit does not fail too.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _banner(suite: LocalSuite, seconds: float) -> None:
    p = suite.ports
    key = suite.api_key
    _say(f"""
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
""")
