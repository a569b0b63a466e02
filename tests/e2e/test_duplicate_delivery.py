"""Real processes: a running request's entry copied inside its own worker's stream (what a
Redis restart can do) leaves the worker serving; the original stream completes exactly."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client import Client
from llmserve.common import redis_keys as keys
from llmserve.common.model_store import DEFAULT_MODEL
from tests.support.chaos import CHAOS_ENV, PROMPTS, StreamResult, check_stream, run_stream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def greedy(suite: LocalSuite, prompt: str) -> str:
    with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key, timeout=60) as client:
        return client.generate(DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}],
                               temperature=0.0, max_tokens=32).text


@pytest.mark.timeout(400)
def test_a_duplicate_delivery_does_not_deafen_the_worker(tmp_path):
    with RedisServer() as server:
        suite = LocalSuite(ports=Ports.free(), redis_url=server.url, log_dir=tmp_path, with_monitor=False,
                           env=CHAOS_ENV)
        r = redis.Redis.from_url(server.url)
        try:
            suite.start(timeout=240)
            reference = greedy(suite, PROMPTS[0])
            result = StreamResult(PROMPTS[0])
            thread = threading.Thread(target=run_stream,
                                      args=(f"127.0.0.1:{suite.ports.gateway}", suite.api_key, PROMPTS[0], result))
            thread.start()
            deadline = time.monotonic() + 60
            while len(result.indexes) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            stream = keys.worker_stream(f"worker-{suite.ports.worker}")
            (_, fields), = r.xrange(stream)
            r.xadd(stream, {keys.PAYLOAD_FIELD: fields[keys.PAYLOAD_FIELD.encode()]})
            thread.join(120)
            assert check_stream(result, reference) is None, check_stream(result, reference)
            started = time.monotonic()
            assert greedy(suite, PROMPTS[1]) == greedy(suite, PROMPTS[1])  # the worker still takes work
            assert time.monotonic() - started < 60
            assert all(s.alive() for s in suite.services)
        finally:
            r.close()
            suite.stop()
