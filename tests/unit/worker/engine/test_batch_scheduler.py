"""BatchScheduler: token budget, chunked prefill, admission limits, preemption (no model needed)."""

from __future__ import annotations

from llmserve.worker.engine.batch_scheduler import BatchScheduler
from llmserve.worker.engine.block_manager import BlockManager
from llmserve.worker.engine.sequence import Sequence, SequenceStatus
from llmserve.worker.engine.types import EngineRequest, SamplingParams


def _seq(n, rid):
    return Sequence(EngineRequest(rid, list(range(1, n + 1)), SamplingParams()))


def _finish_step(sched, out, new_token=7):
    """What the engine does after a forward: record KV, append sampled tokens."""
    sched.update_after_step(out)
    for item in out.scheduled:
        if item.sample:
            item.seq.append_token(new_token)


def test_long_prompt_is_chunked_and_decodes_keep_running():
    sched = BatchScheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    short, long = _seq(3, "s"), _seq(25, "l")
    sched.add(short)
    sched.add(long)
    out = sched.schedule()
    assert [(i.seq.request_id, i.num_new_tokens, i.sample) for i in out.scheduled] == [
        ("s", 3, True),
        ("l", 7, False),
    ]
    _finish_step(sched, out)
    chunks = []
    while long.num_uncomputed_tokens > 1 or not chunks:
        out = sched.schedule()
        assert out.num_tokens <= 10
        assert out.scheduled[0].seq is short and out.scheduled[0].num_new_tokens == 1
        chunks.append(out.scheduled[1].num_new_tokens)
        _finish_step(sched, out)
    assert sum(chunks) + 7 == 25 and chunks == [9, 9]


def test_max_num_seqs_limits_admission():
    sched = BatchScheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        sched.add(_seq(4, f"r{i}"))
    out = sched.schedule()
    assert len(out.scheduled) == 2 and len(sched.waiting) == 1


def test_preemption_when_blocks_run_out_recomputes_newest():
    bm = BlockManager(4, 4)
    sched = BatchScheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b = _seq(8, "a"), _seq(8, "b")
    sched.add(a)
    sched.add(b)
    _finish_step(sched, sched.schedule())  # both prefilled: 4 blocks used, 9 tokens each now
    assert bm.num_free_blocks == 0
    out = sched.schedule()  # a needs a third block: b is preempted
    assert out.preempted == [b] and b.status is SequenceStatus.WAITING
    assert b.num_computed_tokens == 0 and b.block_table == [] and b.num_tokens == 9
    assert [i.seq for i in out.scheduled] == [a]
    sched.finish(a)
    assert bm.num_free_blocks == 4
    out = sched.schedule()
    assert out.scheduled[0].seq is b and out.scheduled[0].num_new_tokens == 9


def test_lone_sequence_larger_than_budget_gets_partial_chunk():
    bm = BlockManager(3, 4)
    sched = BatchScheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    seq = _seq(10, "x")
    sched.add(seq)
    out = sched.schedule()
    assert out.scheduled[0].num_new_tokens == 10 and bm.num_free_blocks == 0


def test_finish_frees_blocks_of_running_and_waiting():
    bm = BlockManager(8, 4)
    sched = BatchScheduler(bm, max_num_seqs=1, max_num_batched_tokens=100)
    a, b = _seq(5, "a"), _seq(5, "b")
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(a)
    sched.finish(b)
    assert bm.num_free_blocks == 8 and not sched.has_unfinished()


def _resumed(prompt_len, resumed, rid):
    ids = list(range(1, prompt_len + 1))
    return Sequence(EngineRequest(rid, ids, SamplingParams(), resume_token_ids=[100 + i for i in range(resumed)]))


def test_decode_replay_recomputes_completion_tokens_one_per_step_as_decode_did():
    """A resumed sequence: the prompt in one chunk that samples nothing, then each resumed token
    alone (a decode-shaped step); only the last one samples."""
    sched = BatchScheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=100, decode_replay=True)
    seq = _resumed(6, 3, "r")
    sched.add(seq)
    plan = []
    while True:
        out = sched.schedule()
        plan.append([(i.num_new_tokens, i.sample) for i in out.scheduled])
        _finish_step(sched, out)
        if any(i.sample for i in out.scheduled):
            break
    assert plan == [[(6, False)], [(1, False)], [(1, False)], [(1, True)]]
    assert seq.num_tokens == 10 and seq.num_computed_tokens == 9


def test_without_decode_replay_a_resumed_sequence_is_one_prefill():
    sched = BatchScheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=100)
    sched.add(_resumed(6, 3, "r"))
    out = sched.schedule()
    assert [(i.num_new_tokens, i.sample) for i in out.scheduled] == [(9, True)]


def test_decode_replay_also_paces_recompute_after_preemption():
    bm = BlockManager(4, 4)
    sched = BatchScheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, decode_replay=True)
    a, b = _seq(8, "a"), _seq(8, "b")
    sched.add(a)
    sched.add(b)
    _finish_step(sched, sched.schedule())
    out = sched.schedule()  # b is preempted: its 9 tokens (8 prompt + 1 generated) must be recomputed
    assert b in out.preempted
    sched.finish(a)  # b comes back
    out = sched.schedule()
    assert [(i.seq.request_id, i.num_new_tokens, i.sample) for i in out.scheduled] == [("b", 8, False)]
    _finish_step(sched, out)
    out = sched.schedule()
    assert [(i.seq.request_id, i.num_new_tokens, i.sample) for i in out.scheduled] == [("b", 1, True)]
