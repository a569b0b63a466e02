"""Attempts count real deaths: the same streams survive two successive worker SIGKILLs (three
workers, the request budget is three attempts). A peer's stale registry view used to
re-dispatch a requeued request to the worker just declared dead, and its second recovery cost
an attempt: `ABORTED: the request failed on 3 workers` after two deaths."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from tests.support import chaos
from tests.support.chaos import (
    CHAOS_ENV,
    StreamResult,
    busiest_worker,
    check_stream,
    reference_texts,
    run_stream,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def kill(suite: LocalSuite, victim) -> None:
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    suite.services.remove(victim)


def wait_tokens(results: list[StreamResult], more_than: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(len(r.indexes) > n for r, n in zip(results, more_than, strict=True)):
            return
        time.sleep(0.01)
    raise AssertionError("the streams made no progress")


@pytest.mark.timeout(600)
def test_streams_survive_two_successive_worker_deaths(tmp_path, monkeypatch):
    monkeypatch.setattr(chaos, "MAX_TOKENS", 64)  # long enough to outlive two kills
    with RedisServer() as redis:
        # Two schedulers: the second one's registry view is the stale one.
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path, with_monitor=False,
                           workers=3, env=CHAOS_ENV)
        try:
            suite.start(timeout=300)
            suite.spawn("scheduler2", "llmserve.scheduler", 0, {"LLMSERVE_SCHEDULER_PORT": "0"})
            references = reference_texts(suite)
            prompts = list(references)[:3]
            results = [StreamResult(p) for p in prompts]
            threads = [threading.Thread(target=run_stream,
                                        args=(f"127.0.0.1:{suite.ports.gateway}", suite.api_key, p, r))
                       for p, r in zip(prompts, results, strict=True)]
            for t in threads:
                t.start()
            progress = [3] * len(results)  # the first kill once a stream has four tokens
            for _ in range(2):
                wait_tokens(results, progress)
                victim = busiest_worker(suite)
                assert victim is not None
                assert any(r.finish is None for r in results), "the streams ended before the kill"
                kill(suite, victim)
                progress = [len(r.indexes) for r in results]
            for t in threads:
                t.join(180)
            for r in results:
                assert check_stream(r, references[r.prompt]) is None, check_stream(r, references[r.prompt])
        finally:
            suite.stop()
