"""Prefix-affinity placement through real Redis, a real scheduler and two real workers, each
with a real engine (a tiny Llama with the real tokenizer, prefix caching on, as by default).

Requests sharing a 500-token system prompt follow the worker that ran it (its heartbeat lists
the prefix); prompts without a shared prefix still go by free KV (mostly to the other one). Without
affinity the reservations of each dispatch alternate the shared prompt between the workers. The
holder's engine serves the shared prompt's blocks from its prefix cache, and its heartbeat (and
`llmserve status`) reports that hit rate.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from llmserve.cli.status import StatusReport, render
from llmserve.common.prefix_affinity import prefix_key
from llmserve.common.workers import registry_snapshot
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.integration.scheduler.test_scheduling import schedulers, wait_for, workers
from tests.support.tiny_models import tiny_llama
from tests.support.workload import MODEL, enqueue, work_item

SYSTEM = [random.Random(1).randrange(3, 30000) for _ in range(500)]
WARM_UP, N = 5, 60
BLOCK = 16
CACHED = (len(SYSTEM) + 5 - 1) // BLOCK * BLOCK  # full blocks a later shared prompt can reuse: 496


class Recording:
    """A real engine that notes the ids it admits (where each request landed)."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.seen: list[str] = []

    def add_request(self, request) -> None:
        self.seen.append(request.request_id)
        self.engine.add_request(request)

    def __getattr__(self, name):  # step, stats, last_step, ... are the engine's
        return getattr(self.engine, name)


@pytest.fixture(scope="module")
def served():
    return ModelCatalog.load([MODEL]).get(MODEL)


def real_engine(served, seed: int) -> Recording:
    config = EngineConfig(model=served.path, device="cpu", block_size=BLOCK, num_kv_blocks=2000,
                          max_num_seqs=32, max_num_batched_tokens=1024)
    engine = LLMEngine.from_model(config, tiny_llama(seed, max_position_embeddings=1024), served.tokenizer)
    engine.eos_token_ids = frozenset()  # every request runs its 4 tokens
    return Recording(engine)


def _item(rid: str, prompt: list[int]):
    item = work_item(rid, max_tokens=4)
    item.prompt_token_ids[:] = prompt
    return item


async def test_a_shared_system_prompt_lands_on_the_worker_that_holds_it(redis_url, served):
    r = aioredis.Redis.from_url(redis_url)
    # KV for ~60 such prompts each: the holder's load allows them all
    engines = [real_engine(served, seed) for seed in range(2)]
    rng = random.Random(2)
    async with workers(redis_url, engines), schedulers(redis_url) as apps:
        await wait_for(lambda: len(apps[0].service.core.placement.workers) == 2)
        for i in range(N):
            own = [rng.randrange(3, 30000) for _ in range(100)]
            await enqueue(r, [_item(f"shared{i}", SYSTEM + own[:5]), _item(f"other{i}", own)])
            await asyncio.sleep(0.02)
        await wait_for(lambda: sum(len(e.seen) for e in engines) == 2 * N, timeout=120)
        await wait_for(lambda: not any(e.has_unfinished() for e in engines), timeout=120)
        key = prefix_key(SYSTEM)
        reported = [key in w.model_load(w.models[0]).prefix_keys for w in apps[0].service.core.placement.workers.values()]
        totals = [e.step_totals for e in engines]
        # The next heartbeats carry every step's counts.
        await wait_for(lambda: _reported_prompts(apps) == sum(t.prompt_tokens for t in totals), timeout=10)
        live, _ = await registry_snapshot(r)
    on = [[rid for rid in e.seen if rid.startswith("shared") and int(rid[6:]) >= WARM_UP] for e in engines]
    holder = max(range(2), key=lambda k: len(on[k]))
    share = len(on[holder]) / (N - WARM_UP)
    others = [sum(rid.startswith("other") for rid in e.seen) for e in engines]
    beat = {w.worker_id: w.model_load(MODEL) for w in live}[f"w{holder}"]
    shared_on_holder = sum(rid.startswith("shared") for rid in engines[holder].seen)
    print(f"shared prefix on its holder: {share:.0%}; other prompts per worker: {others}; holder's prefix-cache "
          f"hit rate {beat.prefix_hit_rate:.0%} ({beat.prefix_hit_tokens}/{beat.prompt_tokens} prompt tokens)")
    assert share >= 0.9, on
    assert reported[holder], reported  # the holder's heartbeat lists the prefix
    assert others[1 - holder] >= others[holder], others  # the rest go by free KV: mostly the other worker
    # Its heartbeat says what its engine counted, prompts once each: 505 per shared one, 100 per other.
    assert (beat.prefix_hit_tokens, beat.prompt_tokens) == (totals[holder].prefix_hit_tokens, totals[holder].prompt_tokens)
    assert beat.prompt_tokens == 505 * shared_on_holder + 100 * others[holder]
    # Every shared prompt after the first (bar the few that came while the first was in prefill)
    # took its 496 cached tokens from the cache.
    assert beat.prefix_hit_tokens >= 0.9 * CACHED * (shared_on_holder - 1), (beat, shared_on_holder)
    models_table = render(StatusReport(workers=live)).split("MODELS")[1]
    assert f"{beat.prefix_hit_tokens * 100 / beat.prompt_tokens:.0f}%" in render(StatusReport(workers=live))
    assert "prefix hits" in models_table
    await r.aclose()


def _reported_prompts(apps) -> int:
    loads = [w.model_load(MODEL) for w in apps[0].service.core.placement.workers.values()]
    return sum(x.prompt_tokens for x in loads)
