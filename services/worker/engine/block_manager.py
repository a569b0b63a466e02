"""Fixed-size KV blocks: allocation, freeing, and prefix reuse by content hash.

A block holds `block_size` consecutive tokens of one sequence's KV. A full block whose
tokens (and every token before them) are known gets a chained hash; a later sequence with
the same prefix takes the block instead of recomputing it (ref counted). Freed blocks keep
their hash and stay reusable until the allocator hands them out again (LRU order), so
"free" counts include cached-but-unreferenced blocks.
"""

from __future__ import annotations

from collections import OrderedDict

from .sequence import Sequence


class Block:
    """One KV block's bookkeeping (the KV itself lives in the model runner's cache tensor)."""

    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


def _chain_hash(prev: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((prev, token_ids))


class BlockManager:
    """Owns the free list and the prefix-cache index of the KV blocks."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Insertion order is eviction order: the least recently freed block goes first.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._hash_to_block: dict[int, int] = {}
        self.prefix_hits = 0  # tokens served from the prefix cache (for stats)

    # Accounting --------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # Allocation --------------------------------------------------------------------------
    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self._hash_to_block.get(block.hash) == block_id:
            del self._hash_to_block[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Give `seq` blocks for its next `num_new_tokens` tokens; False (nothing taken) if short."""
        need = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if need > len(self._free):
            return False
        for _ in range(need):
            seq.block_table.append(self._take_free_block())
        return True

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references; blocks nobody else holds go back to the free list."""
        seq.num_cached_blocks = 0
        # Free in reverse so a sequence's tail blocks are evicted before its shared head.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []

    # Forking -----------------------------------------------------------------------------
    def fork_prompt(self, parent: Sequence, child: Sequence) -> int:
        """Let `child` (no blocks yet, the same prompt) reference `parent`'s computed full prompt
        blocks instead of computing them again; return the tokens it now has KV for.

        Only whole blocks are shared (a partial block would be written by both), and at least
        one prompt token is left to compute so the child's first step has logits of its own.
        """
        if child.block_table or child.num_computed_tokens:
            return 0
        n = child.num_prompt_tokens
        if parent.token_ids[:n] != child.token_ids[:n]:
            return 0
        full = min((n - 1) // self.block_size, parent.num_computed_tokens // self.block_size,
                   len(parent.block_table))
        for block_id in parent.block_table[:full]:
            self.blocks[block_id].ref_count += 1
            child.block_table.append(block_id)
        child.num_computed_tokens = full * self.block_size
        return child.num_computed_tokens

    # Prefix caching ----------------------------------------------------------------------
    def _extend_hashes(self, seq: Sequence, num_full_blocks: int) -> None:
        """Grow `seq.block_hashes` (chained, token-derived, kept across preemption)."""
        bs, hashes = self.block_size, seq.block_hashes
        prev = hashes[-1] if hashes else None
        for i in range(len(hashes), num_full_blocks):
            prev = _chain_hash(prev, tuple(seq.token_ids[i * bs : (i + 1) * bs]))
            hashes.append(prev)

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks for `seq`'s longest cached prefix; return tokens covered.

        Only for a sequence with no blocks. At least one token is left to compute so the
        step still produces logits for it.
        """
        if not self.enable_prefix_caching or seq.block_table or seq.num_computed_tokens:
            return 0
        if seq.sampling.prompt_logprobs is not None:
            return 0  # echo needs the logits of every prompt position: compute them
        max_blocks = (seq.num_tokens - 1) // self.block_size
        self._extend_hashes(seq, max_blocks)
        bs = self.block_size
        for i in range(max_blocks):
            block_id = self._hash_to_block.get(seq.block_hashes[i])
            chunk = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        cached = len(seq.block_table) * bs
        seq.num_computed_tokens = cached
        self.prefix_hits += cached
        return cached

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Index `seq`'s blocks whose tokens are all computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        if num_full <= seq.num_cached_blocks:
            return
        self._extend_hashes(seq, num_full)
        bs = self.block_size
        for i in range(seq.num_cached_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash = seq.block_hashes[i]
                block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self._hash_to_block.setdefault(block.hash, block.block_id)
        seq.num_cached_blocks = num_full

    def reset_prefix_cache(self) -> None:
        self._hash_to_block.clear()
        for block in self.blocks:
            block.hash, block.token_ids = None, ()
