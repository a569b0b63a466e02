"""n > 1: choices forked from one prompt share its KV blocks, each with its own seed stream."""

from __future__ import annotations

from llmserve.worker.engine.types import EngineRequest, SamplingParams
from tests.unit.worker.engine.engine_helpers import run_engine, tokens_of

SEEDS = (11, 12, 13, 14)  # the gateway derives one per choice from the request's seed


def _choices(ids, fork: bool, max_tokens=6):
    return [EngineRequest(f"c{i}", ids, SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=s),
                          fork_of="c0" if fork and i else "")
            for i, s in enumerate(SEEDS)]


def _until_all_decoding(engine, requests):
    for r in requests:
        engine.add_request(r)
    seqs = []
    for _ in range(20):
        engine.step()
        seqs = [s for s in engine.batch_scheduler.running]
        if len(seqs) == len(requests) and all(s.num_completion_tokens >= 1 for s in seqs):
            return seqs
    raise AssertionError("the choices never all started decoding")


def test_forked_choices_allocate_the_prompt_blocks_once(make_engine, prompt_ids):
    ids = prompt_ids[0]
    engine = make_engine(enable_prefix_caching=False)
    bs = engine.block_manager.block_size
    full = (len(ids) - 1) // bs
    assert full >= 1, "the prompt must span a whole block"
    seqs = _until_all_decoding(engine, _choices(ids, fork=True))
    bm = engine.block_manager
    heads = {tuple(s.block_table[:full]) for s in seqs}
    assert len(heads) == 1  # one set of prompt blocks ...
    assert all(bm.blocks[b].ref_count == len(SEEDS) for b in next(iter(heads)))  # ... held by all four
    own = sum(len(s.block_table) - full for s in seqs)
    assert bm.num_used_blocks == full + own
    # Without forking every choice holds its own copy of the prompt.
    plain = make_engine(enable_prefix_caching=False)
    apart = _until_all_decoding(plain, _choices(ids, fork=False))
    assert plain.block_manager.num_used_blocks == sum(len(s.block_table) for s in apart)
    assert plain.block_manager.num_used_blocks - bm.num_used_blocks == (len(SEEDS) - 1) * full
    assert engine.step_totals.prefill_tokens < plain.step_totals.prefill_tokens


def test_forked_choices_differ_reproduce_and_free_everything(make_engine, prompt_ids):
    ids = prompt_ids[0]
    engine = make_engine(enable_prefix_caching=False)
    first = run_engine(engine, _choices(ids, fork=True))
    again = run_engine(engine, _choices(ids, fork=True))
    samples = [tuple(tokens_of(first[f"c{i}"])) for i in range(len(SEEDS))]
    assert len(set(samples)) == len(SEEDS)
    assert samples == [tuple(tokens_of(again[f"c{i}"])) for i in range(len(SEEDS))]
    # Each choice is the same draw it makes alone: forking changes the KV, not the text.
    alone = run_engine(engine, _choices(ids, fork=False)[2:3])
    assert tokens_of(alone["c2"]) == list(samples[2])
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_fork_of_a_finished_or_unknown_parent_runs_on_its_own(make_engine, prompt_ids):
    engine = make_engine(enable_prefix_caching=False)
    orphan = EngineRequest("o", prompt_ids[1], SamplingParams(max_tokens=3, temperature=0.0), fork_of="nobody")
    out = run_engine(engine, [orphan])["o"]
    assert len(tokens_of(out)) == 3 and out[-1].finished
