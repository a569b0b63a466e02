"""Priority end to end: HIGH requests reaching a worker full of LOW ones start before any LOW
one still waiting there. Real Redis, scheduler and worker; the engine is the real LLMEngine
on a tiny random model (two sequence slots), so its waiting queue is the one under test.

Before: the scheduler placed up to its own backlog bound (64) on the worker, whose stream is
read first come, first served, and the engine's queue was FCFS too: the HIGH ones waited
behind every LOW one dispatched earlier.
"""

from __future__ import annotations

import threading
import time

import redis.asyncio as aioredis
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from llmserve.common.model_store import resolve_model
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.integration.scheduler.test_scheduling import schedulers, wait_for, workers
from tests.support.workload import enqueue, work_item

LOW, HIGH = 1, 3


class RecordingEngine(LLMEngine):
    """The real engine, noting when each request's first token comes out."""

    first_token_at: dict[str, float]
    def step(self):
        outputs = super().step()
        now = time.monotonic()
        with self._record_lock:
            for out in outputs:
                if out.token_ids:
                    self.first_token_at.setdefault(out.request_id, now)
        return outputs


def _engine() -> RecordingEngine:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, vocab_size=512,
                         eos_token_id=None, bos_token_id=None, pad_token_id=None)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("SmolLM2-135M-Instruct", log=lambda *a, **k: None)))
    engine = RecordingEngine.from_model(EngineConfig(model="unused", block_size=4, max_num_seqs=2), model, tokenizer)
    engine.first_token_at, engine._record_lock = {}, threading.Lock()
    return engine


def _item(rid: str, priority: int):
    return work_item(rid, priority=priority, max_tokens=30)


async def test_high_requests_start_before_low_ones_waiting_on_a_full_worker(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    engine = _engine()
    async with workers(redis_url, [engine], max_backlog=4), schedulers(redis_url) as apps:
        await wait_for(lambda: len(apps[0].service.core.placement.workers) == 1)
        await enqueue(r, [_item(f"low{i}", LOW) for i in range(16)])
        await wait_for(lambda: len(engine.first_token_at) >= 2)  # both slots busy with LOW
        high_at = time.monotonic()
        await enqueue(r, [_item(f"high{i}", HIGH) for i in range(3)])
        await wait_for(lambda: all(f"high{i}" in engine.first_token_at for i in range(3)), timeout=60)
        started = dict(engine.first_token_at)
    last_high = max(started[f"high{i}"] for i in range(3))
    # LOW ones that started between the HIGH ones being queued and the last HIGH starting: at
    # most the slots freed while the HIGH ones were on their way (a few ms) or in a step under way.
    overtaking = [rid for rid, t in started.items() if rid.startswith("low") and high_at < t < last_high]
    print(f"LOW starts between the HIGH enqueue and the last HIGH start: {overtaking}")
    assert len(overtaking) <= 3, overtaking
    assert sum(rid.startswith("low") for rid in started) < 16  # LOW ones were still waiting
    await r.aclose()
