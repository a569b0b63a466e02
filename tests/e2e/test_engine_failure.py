"""Real processes, two workers, real model: an injected failure in one worker's engine step
(the `fail_step_after` test hook). Its health is NOT_SERVING within one heartbeat, its model
leaves the registry, it exits 1, and the batch it held resumes on the other worker with exactly
the uninterrupted greedy text; nothing waits for its deadline."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports, health_status
from llmserve.common import redis_keys as keys
from tests.support.chaos import CHAOS_ENV, PROMPTS, StreamResult, check_stream, reference_texts, run_stream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HEARTBEAT_MS = 500


def watch(port: int, r: redis.Redis, worker_id: str, seen: list, stop: threading.Event) -> None:
    """(time, health, heartbeat present) until the worker is gone or `stop`."""
    while not stop.is_set():
        try:
            status = health_status(port, timeout=0.5)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                continue  # a slow answer on a loaded box says nothing about its health
            status = None  # stopped serving altogether
        seen.append((time.monotonic(), status, r.exists(keys.heartbeat_key(worker_id)) == 1))
        time.sleep(0.02)


@pytest.mark.timeout(600)
def test_a_failed_engine_step_hands_the_batch_to_another_worker(tmp_path):
    # Placement by free KV is what sends the streams to the failing worker; prefix affinity would
    # send these prompts back to the healthy worker that computed the references, and a short
    # answer there ends before the failing worker ever reaches its failing step.
    env = CHAOS_ENV | {"LLMSERVE_WORKER_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
                       "LLMSERVE_WORKER_HEARTBEAT_TTL_MS": "3000", "LLMSERVE_SCHEDULER_PREFIX_AFFINITY": "false"}
    with RedisServer() as server:
        suite = LocalSuite(ports=Ports.free(), redis_url=server.url, log_dir=tmp_path, with_monitor=False, env=env)
        r = redis.Redis.from_url(server.url)
        try:
            suite.start(timeout=240)
            references = reference_texts(suite)  # on the healthy worker alone
            # More KV than the healthy worker: placement puts every new request on this one.
            failing = suite.spawn_worker(1, extra_env={"LLMSERVE_WORKER_FAIL_STEP_AFTER": "12",
                                                       "LLMSERVE_WORKER_KV_CACHE_BYTES": str(1 << 30)})
            suite.wait_serving(240)
            failing_id = f"worker-{failing.port}"
            seen: list = []
            stop = threading.Event()
            watcher = threading.Thread(target=watch, args=(failing.port, r, failing_id, seen, stop))
            watcher.start()
            prompts = PROMPTS[:3]
            results = [StreamResult(p) for p in prompts]
            started = time.monotonic()
            threads = [threading.Thread(target=run_stream,
                                        args=(f"127.0.0.1:{suite.ports.gateway}", suite.api_key, p, res))
                       for p, res in zip(prompts, results, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            elapsed = time.monotonic() - started
            assert failing.process.wait(30) == 1  # exits non-zero: the orchestrator restarts it
            stop.set()
            watcher.join(10)
            for res in results:
                assert check_stream(res, references[res.prompt]) is None, check_stream(res, references[res.prompt])
            assert elapsed < 60, f"streams took {elapsed:.1f}s: something waited for a deadline"
            serving_until = max(t for t, status, _ in seen if status == health_pb2.HealthCheckResponse.SERVING)
            first_down = min(t for t, status, _ in seen if status != health_pb2.HealthCheckResponse.SERVING)
            assert first_down > serving_until
            beat_gone = min(t for t, _, beat in seen if not beat)
            # The engine died after the last SERVING reading; health and registry followed within a beat.
            assert first_down - serving_until < HEARTBEAT_MS / 1000
            assert beat_gone - serving_until < HEARTBEAT_MS / 1000
            assert not r.exists(keys.heartbeat_key(failing_id))
            suite.services.remove(failing)
            assert all(s.alive() for s in suite.services)
        finally:
            r.close()
            suite.stop()
