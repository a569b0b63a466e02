"""The whole suite as real processes (own redis-server, real model): one real request end to end."""

from __future__ import annotations

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports, health_status
from llmserve.client import Client
from llmserve.common.model_store import DEFAULT_MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    with RedisServer() as redis:
        s = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path_factory.mktemp("logs"))
        try:
            s.start(timeout=240)
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def reference_text(model_path):
    """transformers' own greedy generate for the same chat prompt."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_all_four_services_are_serving(suite):
    names = {s.name for s in suite.services}
    assert names == {"gateway", "scheduler", "worker", "monitor"}
    for service in suite.services:
        assert health_status(service.port) == health_pb2.HealthCheckResponse.SERVING, service.name


def test_stream_matches_transformers_greedy(suite, reference_text):
    with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key) as client:
        pieces = list(client.stream(DEFAULT_MODEL, messages=QUESTION, temperature=0.0, max_tokens=40))
        indexes = [i for p in pieces for i in range(p.index, p.index + len(p.token_ids))]
        assert indexes == list(range(len(indexes))), "token indexes must arrive in order, once each"
        last = pieces[-1]
        assert last.finish_reason in ("stop", "length")
        assert last.completion_tokens == len(indexes)
        assert last.prompt_tokens > 0
        text = "".join(p.text for p in pieces)
        assert text == reference_text
        assert "Paris" in text

        whole = client.generate(DEFAULT_MODEL, messages=QUESTION, temperature=0.0, max_tokens=40)
        assert whole.text == text
        assert (whole.prompt_tokens, whole.completion_tokens) == (last.prompt_tokens, last.completion_tokens)


def test_bad_key_is_unauthenticated(suite):
    with Client(f"127.0.0.1:{suite.ports.gateway}", api_key="wrong") as client, \
            pytest.raises(grpc.RpcError) as caught:
        client.generate(DEFAULT_MODEL, "hello", max_tokens=4)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_sigterm_stops_every_process(tmp_path):
    with RedisServer() as redis:
        s = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path, with_monitor=False)
        s.start(timeout=240)
        processes = [svc.process for svc in s.services]
        s.stop()
        assert all(p.returncode == 0 for p in processes), [p.returncode for p in processes]


def test_monitor_sees_what_the_client_saw(suite):
    """Request count exact, TTFT p50 within 10%, one trace across gateway, scheduler and worker."""
    import json
    import statistics
    import time
    import urllib.request

    from llmserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc

    def ok_count(stub) -> int:
        reply = stub.GetSummary(monitor_pb2.GetSummaryRequest(window_seconds=600, model=DEFAULT_MODEL), timeout=5)
        summary = next((m for m in reply.models if m.model == DEFAULT_MODEL), None)
        return summary.requests_by_status.get("ok", 0) if summary else 0

    with suite.operator_auth().channel(f"127.0.0.1:{suite.ports.monitor}") as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        time.sleep(6)  # one export interval: earlier tests' requests have all arrived
        before = ok_count(stub)
    ttfts = []
    # A prompt of ~100 tokens: its prefill, not the client's own few ms of transport (which the
    # gateway cannot see), is what the TTFT is made of, as for a real chat turn.
    context = "The quick brown fox jumps over the lazy dog near the quiet river bank. " * 7
    with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key) as client:
        for i in range(12):
            started = time.perf_counter()
            for piece in client.stream(DEFAULT_MODEL, f"{context}Count to {i}:", temperature=0.0, max_tokens=4,
                                       request_id=f"monitored-{i}"):
                if piece.token_ids and len(ttfts) == i:
                    ttfts.append(time.perf_counter() - started)
    with suite.operator_auth().channel(f"127.0.0.1:{suite.ports.monitor}") as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        deadline = time.monotonic() + 30
        summary = None
        while time.monotonic() < deadline:
            reply = stub.GetSummary(monitor_pb2.GetSummaryRequest(window_seconds=600, model=DEFAULT_MODEL), timeout=5)
            summary = next((m for m in reply.models if m.model == DEFAULT_MODEL), None)
            if summary and summary.requests_by_status.get("ok", 0) >= before + 12:
                break
            time.sleep(1)
        assert summary is not None
        time.sleep(6)  # one more export: nothing beyond the 12 shows up
        assert ok_count(stub) - before == 12
        client_p50 = statistics.median(ttfts)
        assert abs(summary.ttft.p50 - client_p50) <= 0.10 * client_p50, (summary.ttft.p50, client_p50)

        with urllib.request.urlopen(f"http://127.0.0.1:{suite.ports.monitor_http}/api/traces", timeout=5) as r:
            trace_ids = json.load(r)["trace_ids"]
        services_by_trace = {}
        for trace_id in trace_ids:
            spans = stub.GetTrace(monitor_pb2.GetTraceRequest(trace_id=trace_id), timeout=5).spans
            if any(s.attributes.get("llmserve.request_id", "").startswith("monitored-") for s in spans):
                services_by_trace[trace_id] = {s.service for s in spans}
        assert services_by_trace, "no trace of the monitored requests reached the monitor"
        assert any({"llmserve-gateway", "llmserve-scheduler", "llmserve-worker"} <= names
                   for names in services_by_trace.values()), services_by_trace


def test_serving_goes_on_with_the_monitor_down(suite):
    """Runs last in this module: the monitor is killed, a load run sees no errors."""
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    monitor = next(s for s in suite.services if s.name == "monitor")
    os.kill(monitor.process.pid, signal.SIGKILL)
    monitor.process.wait()

    def one(i: int) -> str:
        with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key) as client:
            return client.generate(DEFAULT_MODEL, f"Say {i}.", temperature=0.0, max_tokens=8).finish_reason

    with ThreadPoolExecutor(4) as pool:
        reasons = list(pool.map(one, range(16)))
    assert all(r in ("stop", "length") for r in reasons), reasons
