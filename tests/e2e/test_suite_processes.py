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
