"""Capacity metrics from the real engine (tiny Llama, tiny KV budget to force preemption),
read back from both places ops look: this process's /metrics and the monitor's.

One set of instruments (WorkerMetrics on an SDK meter) feeds both: a PrometheusReader (what
the worker's `metrics_port` serves) and OTLP into the monitor's store and exposition.
"""

from __future__ import annotations

import torch
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from llmserve.common.metrics import WorkerMetrics
from llmserve.common.prom_endpoint import PrometheusReader, ReaderCollector
from llmserve.monitor.alerts import AlertEngine
from llmserve.monitor.otlp import MetricsIngest
from llmserve.monitor.prometheus import StoreCollector, make_registry, render
from llmserve.monitor.store import MetricStore
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.types import EngineRequest
from llmserve.worker.step_metrics import record_step
from tests.support.prom import parse, promtool_check_metrics, value
from tests.support.tiny_models import tiny_llama
from tests.unit.worker.engine.engine_helpers import greedy

NEW = 10
MODEL = "tiny"


def _prompts(count: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [
        torch.randint(3, 4000, (int(n),), generator=g).tolist()
        for n in torch.randint(9, 40, (count,), generator=g)
    ]


def _both_expositions(metrics_reader: PrometheusReader, memory: InMemoryMetricReader) -> tuple[bytes, bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReaderCollector(metrics_reader))
    own = generate_latest(registry)
    store = MetricStore()
    MetricsIngest(store).ingest(encode_metrics(memory.get_metrics_data()))
    monitor = render(
        make_registry(StoreCollector(store, AlertEngine((), store, lambda n: None), lambda: None, 60))
    )
    return own, monitor


def test_preemption_prefill_and_batch_size_from_the_engine_reach_both_endpoints(tokenizer):
    own_reader, memory = PrometheusReader("worker"), InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"service.name": "llmserve-worker"}), metric_readers=[own_reader, memory]
    )
    metrics = WorkerMetrics("w1", provider.get_meter("llmserve"))
    metrics.model_started(MODEL)
    engine = LLMEngine.from_model(
        EngineConfig(model="unused", block_size=4, num_kv_blocks=24, max_num_batched_tokens=64),
        tiny_llama(0),
        tokenizer,
    )
    prompts = _prompts(8)
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(f"r{i}", p, greedy(NEW, ignore_eos=True)))
    batches, steps = [], 0
    while engine.has_unfinished() and steps < 2000:
        outputs = engine.step()
        record_step(metrics, MODEL, engine, 0.001, outputs)
        if engine.last_step.scheduled_seqs:
            batches.append(engine.last_step.scheduled_seqs)
        steps += 1
    assert not engine.has_unfinished()
    totals = engine.step_totals
    assert totals.preempted == engine.batch_scheduler.num_preemptions > 0
    assert totals.recompute_tokens > 0
    assert totals.prefill_tokens == sum(len(p) for p in prompts)
    # every generated token but the last of each request has its KV computed once, as decode
    assert totals.decode_tokens == len(prompts) * (NEW - 1)
    assert max(batches) > 1  # continuous batching did batch

    own, monitor = _both_expositions(own_reader, memory)
    promtool_check_metrics(own)
    for text in (own, monitor):
        s = parse(text)
        w = {"model": MODEL, "worker": "w1"}
        assert value(s, "llmserve_preemptions_total", **w) == totals.preempted
        assert value(s, "llmserve_engine_tokens_total", phase="prefill", **w) == sum(len(p) for p in prompts)
        assert value(s, "llmserve_engine_tokens_total", phase="decode", **w) == totals.decode_tokens
        assert value(s, "llmserve_engine_tokens_total", phase="recompute", **w) == totals.recompute_tokens
        assert value(s, "llmserve_batch_size_count", **w) == len(batches)
        assert value(s, "llmserve_batch_size_sum", **w) == sum(batches) == totals.scheduled_seqs
        assert value(s, "llmserve_batch_tokens_sum", **w) == totals.num_tokens
        assert value(s, "llmserve_kv_blocks_free", **w) == 24  # all freed at the end
        assert value(s, "llmserve_engine_sequences", state="running", **w) == 0


def test_prefix_cache_hits_are_counted_and_not_prefilled(tokenizer):
    reader = PrometheusReader("worker")
    provider = MeterProvider(metric_readers=[reader])
    metrics = WorkerMetrics("w1", provider.get_meter("llmserve"))
    engine = LLMEngine.from_model(
        EngineConfig(model="unused", block_size=4, num_kv_blocks=64, enable_prefix_caching=True),
        tiny_llama(0),
        tokenizer,
    )
    shared = list(range(100, 116))  # four full blocks
    prompts = [shared + [11, 12, 13], shared + [21, 22]]
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(f"r{i}", p, greedy(4, ignore_eos=True)))
        while engine.has_unfinished():  # one after the other: the second finds the first's blocks
            record_step(metrics, MODEL, engine, 0.001, engine.step())
    totals = engine.step_totals
    assert totals.prefix_hit_tokens == 16
    assert totals.prefill_tokens == sum(len(p) for p in prompts) - 16
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReaderCollector(reader))
    s = parse(generate_latest(registry))
    assert value(s, "llmserve_kv_prefix_hits_total", model=MODEL) == 16
    # The hit rate's denominator: every prompt token admitted, once.
    assert totals.prompt_tokens == sum(len(p) for p in prompts)
    assert value(s, "llmserve_kv_prompt_tokens_total", model=MODEL) == sum(len(p) for p in prompts)


def test_prompt_tokens_count_once_with_prefix_hits_and_preemption(tokenizer):
    """Identical prompts under a tiny KV budget: every prompt token is either prefilled or a
    first-time prefix hit, never both and never twice, however often sequences are preempted."""
    engine = LLMEngine.from_model(
        EngineConfig(model="unused", block_size=4, num_kv_blocks=20, max_num_batched_tokens=64,
                     enable_prefix_caching=True), tiny_llama(0), tokenizer)
    prompt = list(range(200, 222))  # five full blocks and a bit
    for i in range(6):
        engine.add_request(EngineRequest(f"r{i}", prompt, greedy(NEW, ignore_eos=True)))
    while engine.has_unfinished():
        engine.step()
    totals = engine.step_totals
    assert totals.preempted > 0 and totals.prefix_hit_tokens > 0
    assert totals.prefill_tokens + totals.prefix_hit_tokens == 6 * len(prompt)
    assert totals.prompt_tokens == 6 * len(prompt)  # preempted ones are not admitted again as new


def test_running_and_waiting_by_priority_after_a_step(tokenizer):
    reader = PrometheusReader("worker")
    metrics = WorkerMetrics("w1", MeterProvider(metric_readers=[reader]).get_meter("llmserve"))
    engine = LLMEngine.from_model(EngineConfig(model="unused", block_size=4, num_kv_blocks=64, max_num_seqs=3),
                                  tiny_llama(0), tokenizer)
    priorities = [3, 3, 1, 2, 2, 2]
    for i, priority in enumerate(priorities):
        engine.add_request(EngineRequest(f"r{i}", list(range(300, 310)), greedy(NEW, ignore_eos=True),
                                         priority=priority))
    record_step(metrics, MODEL, engine, 0.001, engine.step())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReaderCollector(reader))
    s = parse(generate_latest(registry))
    seqs = "llmserve_engine_sequences"
    assert value(s, seqs, state="running") == 3 and value(s, seqs, state="waiting") == 3  # max_num_seqs=3
    for priority in (1, 2, 3):
        both = value(s, seqs, state="running", priority=str(priority)) + value(
            s, seqs, state="waiting", priority=str(priority))
        assert both == priorities.count(priority)
