"""Failures with real processes: a stalled worker, and a Redis restart under load."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client import Client
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.support.chaos import (
    CHAOS_ENV,
    StreamResult,
    busiest_worker,
    check_stream,
    reference_texts,
    run_stream,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def start_streams(suite: LocalSuite, prompts: list[str]) -> tuple[list[StreamResult], list[threading.Thread]]:
    address = f"127.0.0.1:{suite.ports.gateway}"
    results = [StreamResult(p) for p in prompts]
    threads = [threading.Thread(target=run_stream, args=(address, suite.api_key, p, r))
               for p, r in zip(prompts, results, strict=True)]
    for t in threads:
        t.start()
    return results, threads


@pytest.mark.timeout(600)
def test_a_stalled_worker_that_wakes_up_cannot_deliver_stale_tokens(tmp_path):
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path, with_monitor=False,
                           workers=2, env=CHAOS_ENV)
        try:
            suite.start(timeout=240)
            references = reference_texts(suite)
            prompts = list(references)[:3]
            results, threads = start_streams(suite, prompts)
            while not any(len(r.indexes) >= 3 for r in results):
                time.sleep(0.01)
            victim = busiest_worker(suite)
            assert victim is not None
            os.kill(victim.process.pid, signal.SIGSTOP)
            time.sleep(3.0)  # well past the 1 s heartbeat TTL: its requests move on
            os.kill(victim.process.pid, signal.SIGCONT)
            for t in threads:
                t.join(120)
            for r in results:
                assert check_stream(r, references[r.prompt]) is None, check_stream(r, references[r.prompt])
            # The woken worker was told to stop: nothing is left running on it.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with suite.operator_auth().channel(f"127.0.0.1:{victim.port}") as channel:
                    status = worker_pb2_grpc.WorkerServiceStub(channel).GetStatus(worker_pb2.GetStatusRequest(),
                                                                                timeout=2)
                if status.running == 0:
                    break
                time.sleep(0.1)
            assert status.running == 0
        finally:
            suite.stop()


@pytest.mark.timeout(600)
def test_redis_restart_under_load(tmp_path):
    redis = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path, with_monitor=False)
    try:
        suite.start(timeout=240)
        references = reference_texts(suite)
        results, threads = start_streams(suite, list(references) * 2)
        time.sleep(0.3)
        redis.stop_process()
        # During the outage a new request fails fast with UNAVAILABLE, it does not hang.
        with grpc.insecure_channel(f"127.0.0.1:{suite.ports.gateway}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Generate(pb.GenerateRequest(model=DEFAULT_MODEL, prompt="hello", max_tokens=4),
                              metadata=(("authorization", f"Bearer {suite.api_key}"),), timeout=10)
            outage_answer_s = time.monotonic() - started
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert outage_answer_s < 2.0
        time.sleep(1.0)
        redis.start()
        for t in threads:
            t.join(120)
        completed = [r for r in results if check_stream(r, references[r.prompt]) is None]
        failed_explicitly = [r for r in results if r.error]
        print(f"accepted before the outage: {len(results)}, completed: {len(completed)}, "
              f"failed explicitly: {len(failed_explicitly)}")
        assert len(completed) + len(failed_explicitly) == len(results), "a request was silently lost"
        for r in failed_explicitly:
            assert r.error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")), r.error
        # Service resumes without restarting llmserve.
        with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key) as client:
            prompt = next(iter(references))
            text = client.generate(DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}],
                                   temperature=0.0, max_tokens=32).text
        assert text == references[prompt]
    finally:
        suite.stop()
        redis.stop()
