"""Prefix keys: which prompts a worker has recently run, so placement can follow its KV cache.

A prompt's key is a digest of its first `PREFIX_TOKENS` token ids (a few KV blocks: a shared
system prompt, a long few-shot header). Workers report the keys of the prompts they ran most
recently (bounded, newest last) in each model's heartbeat; the engine's prefix cache evicts in
LRU order too, so a recent key is a good sign its blocks are still held. The scheduler computes
the same key from the work item's token ids. The digest is stable across processes (Python's
own `hash` of a tuple holding None is not, before 3.12).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

PREFIX_TOKENS = 64  # four blocks of 16: long enough to tell system prompts apart
MAX_REPORTED = 32  # keys per model in a heartbeat


def prefix_key(token_ids: Sequence[int]) -> str:
    """The key of a prompt's prefix; "" for a prompt shorter than PREFIX_TOKENS."""
    if len(token_ids) < PREFIX_TOKENS:
        return ""
    raw = array("q", token_ids[:PREFIX_TOKENS]).tobytes()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class RecentPrefixes:
    """The keys of the last MAX_REPORTED distinct prefixes run, least recent first."""

    def __init__(self, limit: int = MAX_REPORTED):
        self.limit = limit
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> None:
        if not key:
            return
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)

    def keys(self) -> list[str]:
        return list(self._keys)
