"""Paged attention over a ragged batch, on top of `scaled_dot_product_attention`.

The KV cache of one layer is a tensor `[num_slots, num_kv_heads, head_dim]` (a flat view of
`[num_blocks, block_size, ...]`); token `p` of a sequence lives at slot
`block_table[p // block_size] * block_size + p % block_size`.

A step's tokens are flattened: first the decode tokens (one per sequence), then each prefill
chunk. Decodes are attended together: the query heads that share a KV head are laid out as
rows of one query matrix (grouped-query decode), keys are gathered block-wise and padding is
masked. Prefill chunks are attended one sequence at a time, causally, against the KV cache
when earlier tokens of the sequence are already cached (chunked prefill, prefix cache).
The same code runs on CPU and CUDA (and inside a CUDA graph for decode: static shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class PrefillChunk:
    """One sequence's prefill chunk: tokens [start, end) of the flat batch, at positions
    [num_cached, num_cached + end - start) of its sequence."""

    start: int
    end: int
    num_cached: int
    context_slots: torch.Tensor | None  # slots of all its tokens (None when num_cached == 0)
    mask: torch.Tensor | None  # [1, 1, n, ctx] bool, True = attend (None when num_cached == 0)


@dataclass
class AttentionMetadata:
    """Where each new token's KV goes and what each query attends to; shared by all layers."""

    slot_mapping: torch.Tensor  # [num_tokens] long
    num_decode_tokens: int = 0
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] long
    # [num_decodes, 1, 1, max_blocks * block_size], additive (0 / -inf) in the model dtype:
    # SDPA would convert a bool mask to this in every layer.
    decode_mask: torch.Tensor | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k, v, slot_mapping: torch.Tensor) -> None:
    """Store the new tokens' K and V in their slots (flat views of the block caches)."""
    k_cache.index_copy_(0, slot_mapping, k)
    v_cache.index_copy_(0, slot_mapping, v)


def decode_attention(q, k_cache, v_cache, block_tables, mask, block_size: int, scale: float):
    """q: [D, H, d] (one token per sequence) -> [D, H * d]."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    kb = k_cache.view(-1, block_size, num_kv_heads, head_dim)
    vb = v_cache.view(-1, block_size, num_kv_heads, head_dim)
    ctx = block_tables.shape[1] * block_size
    # Whole blocks, gathered with index_select (a row memcpy; advanced indexing was ~5x
    # slower on CPU): [D * blocks, bs, kvh, d] -> [D, kvh, ctx, d] (a strided view).
    flat = block_tables.reshape(-1)
    keys = kb.index_select(0, flat).view(num_seqs, ctx, num_kv_heads, head_dim).transpose(1, 2)
    values = vb.index_select(0, flat).view(num_seqs, ctx, num_kv_heads, head_dim).transpose(1, 2)
    # Query heads sharing a KV head become `group` query rows: no KV expansion needed.
    qg = q.view(num_seqs, num_kv_heads, group, head_dim)
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(num_seqs, num_heads * head_dim)


def prefill_attention(q, k, v, k_cache, v_cache, chunk: PrefillChunk, scale: float):
    """q: [n, H, d], k/v: [n, KVH, d] of one chunk -> [n, H * d]."""
    n, num_heads, head_dim = q.shape
    qh = q.transpose(0, 1).unsqueeze(0)  # [1, H, n, d]
    if chunk.num_cached == 0:
        kh, vh, mask, causal = k.transpose(0, 1), v.transpose(0, 1), None, True
    else:
        kh = k_cache.index_select(0, chunk.context_slots).transpose(0, 1)
        vh = v_cache.index_select(0, chunk.context_slots).transpose(0, 1)
        mask, causal = chunk.mask, False
    out = F.scaled_dot_product_attention(
        qh, kh.unsqueeze(0), vh.unsqueeze(0), attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1).reshape(n, num_heads * head_dim)


def paged_attention(q, k, v, k_cache, v_cache, meta: AttentionMetadata, block_size: int, scale: float):
    """Attention for every token of a step. q: [T, H, d]; k, v: [T, KVH, d] -> [T, H * d].

    Writes the step's K/V into the cache first, so decodes and cached-prefix chunks read
    their own new token from the cache like any other.
    """
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    num_decode = meta.num_decode_tokens
    if not meta.prefills:
        return decode_attention(
            q, k_cache, v_cache, meta.decode_block_tables, meta.decode_mask, block_size, scale
        )
    parts = []
    if num_decode:
        parts.append(
            decode_attention(
                q[:num_decode],
                k_cache,
                v_cache,
                meta.decode_block_tables,
                meta.decode_mask,
                block_size,
                scale,
            )
        )
    for chunk in meta.prefills:
        s, e = chunk.start, chunk.end
        parts.append(prefill_attention(q[s:e], k[s:e], v[s:e], k_cache, v_cache, chunk, scale))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
