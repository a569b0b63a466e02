"""Priority and deadlines in the engine: the waiting queue and the choice of preemption victim."""

from __future__ import annotations

from llmserve.worker.engine.batch_scheduler import BatchScheduler
from llmserve.worker.engine.block_manager import BlockManager
from llmserve.worker.engine.sequence import Sequence
from llmserve.worker.engine.types import EngineRequest, SamplingParams
from tests.unit.worker.engine.engine_helpers import greedy, tokens_of
from tests.unit.worker.engine.test_tiny_models import _engine, _llama, _prompts, _refs

LOW, NORMAL, HIGH = 1, 2, 3


def _seq(n, rid, priority=NORMAL, deadline=None):
    return Sequence(EngineRequest(rid, list(range(1, n + 1)), SamplingParams(), priority=priority,
                                  deadline=deadline))


def _step(sched):
    out = sched.schedule()
    sched.update_after_step(out)
    for item in out.scheduled:
        if item.sample:
            item.seq.append_token(7)
    return out


def test_high_priority_waiting_starts_before_older_low_ones():
    sched = BatchScheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(4):
        sched.add(_seq(4, f"low{i}", LOW))
    _step(sched)  # low0, low1 run; low2, low3 wait
    sched.add(_seq(4, "high0", HIGH))
    sched.add(_seq(4, "high1", HIGH))
    assert [s.request_id for s in sched.waiting] == ["high0", "high1", "low2", "low3"]
    sched.finish(sched.running[0])
    out = _step(sched)
    assert "high0" in [i.seq.request_id for i in out.scheduled]


def test_within_a_class_the_earliest_deadline_waits_least():
    sched = BatchScheduler(BlockManager(64, 4), max_num_seqs=1, max_num_batched_tokens=100)
    sched.add(_seq(4, "none"))
    sched.add(_seq(4, "late", deadline=2000.0))
    sched.add(_seq(4, "soon", deadline=1000.0))
    assert [s.request_id for s in sched.waiting] == ["soon", "late", "none"]


def test_kv_pressure_preempts_the_lowest_priority_first_even_if_it_is_older():
    bm = BlockManager(4, 4)
    sched = BatchScheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    low, high = _seq(8, "low", LOW), _seq(8, "high", HIGH)
    sched.add(low)  # older: FCFS would preempt `high`, the newest
    sched.add(high)
    _step(sched)
    assert bm.num_free_blocks == 0
    out = sched.schedule()
    assert out.preempted == [low] and [i.seq for i in out.scheduled] == [high]


def test_kv_pressure_within_a_class_preempts_the_latest_deadline():
    bm = BlockManager(6, 4)
    sched = BatchScheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b, c = _seq(8, "a", deadline=3000.0), _seq(8, "b", deadline=1000.0), _seq(8, "c", deadline=2000.0)
    for s in (a, b, c):
        sched.add(s)
    _step(sched)
    out = sched.schedule()
    assert out.preempted[0] is a


def test_tiny_model_high_requests_overtake_queued_low_and_low_is_recomputed(tokenizer):
    """A real (tiny) engine, 2 sequence slots, KV for little more than two prompts."""
    model = _llama()
    prompts = _prompts(6)
    new = 12
    refs = _refs(model, prompts)
    engine = _engine(model, tokenizer, block_size=4, max_num_seqs=2,
                     num_kv_blocks=2 * (max(map(len, prompts)) + new) // 4 // 2 + 4)
    reqs = [EngineRequest(f"low{i}", prompts[i], greedy(new, ignore_eos=True), priority=LOW) for i in range(4)]
    reqs += [EngineRequest(f"high{i}", prompts[4 + i], greedy(new, ignore_eos=True), priority=HIGH)
             for i in range(2)]
    results: dict[str, list] = {r.request_id: [] for r in reqs}
    first_token_step: dict[str, int] = {}
    for r in reqs[:4]:
        engine.add_request(r)
    step = 0
    while step < 2000 and (step < 3 or engine.has_unfinished()):
        if step == 2:  # the worker is full of LOW ones, two more LOW wait
            for r in reqs[4:]:
                engine.add_request(r)
        for out in engine.step():
            results[out.request_id].append(out)
            if out.token_ids:
                first_token_step.setdefault(out.request_id, step)
        step += 1
    assert [tokens_of(results[r.request_id]) for r in reqs] == [refs[i] for i in range(6)]
    queued_low = [first_token_step["low2"], first_token_step["low3"]]
    assert max(first_token_step["high0"], first_token_step["high1"]) < min(queued_low), first_token_step
