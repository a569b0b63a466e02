"""BlockManager: allocation, freeing, ref-counted prefix reuse (no model needed)."""

from __future__ import annotations

from llmserve.worker.engine.block_manager import BlockManager
from llmserve.worker.engine.sequence import Sequence
from llmserve.worker.engine.types import EngineRequest, SamplingParams


def _seq(tokens, rid="r"):
    return Sequence(EngineRequest(rid, list(tokens), SamplingParams()))


def test_allocate_grows_by_blocks_and_free_returns_them():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = _seq(range(10))
    assert bm.allocate(seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    seq.num_computed_tokens = 10
    assert bm.allocate(seq, 2) and len(seq.block_table) == 3  # slot 11 and 12 still fit
    seq.num_computed_tokens = 12
    assert bm.allocate(seq, 1) and len(seq.block_table) == 4
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == []


def test_allocate_fails_without_taking_anything():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = _seq(range(12))
    assert not bm.can_allocate(seq, 12)
    assert not bm.allocate(seq, 12)
    assert bm.num_free_blocks == 2 and seq.block_table == []


def test_prefix_blocks_are_shared_and_ref_counted():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    a = _seq(range(10), "a")
    bm.allocate(a, 10)
    a.num_computed_tokens = 10
    bm.cache_full_blocks(a)
    b = _seq([*range(8), 99, 98, 97], "b")
    assert bm.match_prefix(b) == 8  # two full blocks shared
    assert b.block_table == a.block_table[:2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    bm.allocate(b, b.num_uncomputed_tokens)
    bm.free(a)
    assert bm.blocks[b.block_table[0]].ref_count == 1
    bm.free(b)
    assert bm.num_free_blocks == 8


def test_freed_cached_blocks_are_revived_then_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    a = _seq(range(9), "a")
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.cache_full_blocks(a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    again = _seq(range(9), "again")
    assert bm.match_prefix(again) == 8 and bm.num_free_blocks == 2
    bm.free(again)
    # Allocating every block evicts the cached ones: no stale hit afterwards.
    hog = _seq(range(100, 116), "hog")
    assert bm.allocate(hog, 16)
    bm.free(hog)
    assert bm.match_prefix(_seq(range(9), "late")) == 0


def test_full_prompt_hit_still_leaves_one_token_to_compute():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    a = _seq(range(8), "a")
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.cache_full_blocks(a)
    b = _seq(range(8), "b")
    assert bm.match_prefix(b) == 4 and b.num_uncomputed_tokens == 4
