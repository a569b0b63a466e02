"""A lean Llama-family forward (Llama, SmolLM2, Mistral, Qwen2) over a paged KV cache.

Weights are taken from the loaded transformers model and re-laid out once: Q, K and V
projections fused into one matrix (one matmul per layer instead of three), gate and up
fused likewise. The forward works on a flat batch of tokens (all sequences of the step
together), so every projection is one matmul per layer whatever the batch mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import AttentionMetadata, paged_attention
from .w8a8 import Int8Weight, int8_linear

SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2"}


def is_supported(hf_config) -> bool:
    """True when the fast path computes exactly what transformers would for this config."""
    if getattr(hf_config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        return False
    if getattr(hf_config, "mlp_bias", False):
        return False
    # Sliding-window attention (some Mistral/Qwen2 configs) is not implemented here.
    window = getattr(hf_config, "sliding_window", None)
    use_window = getattr(hf_config, "use_sliding_window", window is not None)
    if window is not None and use_window and window < getattr(hf_config, "max_position_embeddings", 0):
        return False
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    # Dynamic scaling changes the frequencies with the sequence length: not a fixed table.
    return rope.get("rope_type", rope.get("type", "default")) != "dynamic"


@dataclass
class LayerWeights:
    """One decoder layer's weights; projections fused and laid out for `LlamaFastModel._mm`."""

    input_norm: torch.Tensor
    qkv: torch.Tensor  # q, k and v projections together
    qkv_bias: torch.Tensor | None
    o_proj: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # gate and up projections together
    down: torch.Tensor


class LlamaFastModel:
    """The fast-path model: weights plus a `forward` over a ragged, paged batch."""

    def __init__(self, hf_model, device: torch.device, dtype: torch.dtype, max_positions: int,
                 quantization: str | None = None):
        cfg = hf_model.config
        self.config = cfg
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.hidden_size = cfg.hidden_size
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.device, self.dtype = device, dtype
        # Measured on a 2-core AVX-512 CPU: fp32 GEMMs with small M run ~1.5x faster on a
        # row-major [in, out] right operand (`x @ w`); bf16 (oneDNN) prefers [out, in].
        self.transposed = device.type == "cpu" and dtype == torch.float32
        # W8A8 (w8a8.py): projections and lm_head as int8; the caller smoothed hf_model first.
        self.int8 = quantization == "w8a8"
        self._load_weights(hf_model)
        self._build_rope(hf_model, max_positions)

    def _t(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(device=self.device, dtype=self.dtype).contiguous()

    def _w(self, *weights: torch.Tensor) -> torch.Tensor | Int8Weight:
        """Fuse [out, in] weights along `out`; store as `_mm` wants them."""
        fused = torch.cat(weights)
        if self.int8:
            return Int8Weight.quantize(fused)
        return self._t(fused.t() if self.transposed else fused)

    def _mm(self, x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(w, Int8Weight):
            return int8_linear(x, w, bias)
        if not self.transposed:
            return F.linear(x, w, bias)
        return x @ w if bias is None else torch.addmm(bias, x, w)

    def _load_weights(self, hf_model) -> None:
        base = hf_model.model
        self.embed = self._t(base.embed_tokens.weight)
        self.final_norm = self._t(base.norm.weight)
        self.lm_head = self._t(hf_model.lm_head.weight)
        if hf_model.lm_head.weight.data_ptr() == base.embed_tokens.weight.data_ptr():
            self.lm_head = self.embed  # tied embeddings: keep one copy
        if self.int8:
            self.lm_head = Int8Weight.quantize(hf_model.lm_head.weight)
        self.layers = []
        for layer in base.layers:
            at, mlp = layer.self_attn, layer.mlp
            bias = None
            if at.q_proj.bias is not None:
                bias = self._t(torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias]))
            self.layers.append(
                LayerWeights(
                    input_norm=self._t(layer.input_layernorm.weight),
                    qkv=self._w(at.q_proj.weight, at.k_proj.weight, at.v_proj.weight),
                    qkv_bias=bias,
                    o_proj=self._w(at.o_proj.weight),
                    post_norm=self._t(layer.post_attention_layernorm.weight),
                    gate_up=self._w(mlp.gate_proj.weight, mlp.up_proj.weight),
                    down=self._w(mlp.down_proj.weight),
                )
            )

    def _build_rope(self, hf_model, max_positions: int) -> None:
        # Take inv_freq and scaling from transformers' own rotary module, so every rope
        # variant it knows (default, linear, llama3, yarn, ...) matches exactly.
        rotary = hf_model.model.rotary_emb
        inv_freq = rotary.inv_freq.detach().float().cpu()
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        pos = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)  # [P, d/2]
        cos, sin = freqs.cos() * scaling, freqs.sin() * scaling
        # Rotate-half RoPE at full width, one row per position: [cos, cos | -sin, sin]. A step
        # takes its positions with one index_select; a layer rotates with a flip, two
        # multiplies and an add (the same products and sums as the half-width form, bit for bit).
        self.rope_table = torch.cat([cos, cos, -sin, sin], dim=-1).to(self.device, self.dtype)

    def allocate_kv_cache(self, num_slots: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (num_slots, self.num_kv_heads, self.head_dim)
        return [
            (
                torch.zeros(shape, device=self.device, dtype=self.dtype),
                torch.zeros(shape, device=self.device, dtype=self.dtype),
            )
            for _ in range(self.num_layers)
        ]

    def kv_bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate-half RoPE on [T, heads, d] with cos [T, 1, d] = [cos, cos] and sin = [-sin, sin]:
        [x1, x2] * cos + [x2, x1] * sin."""
        num_tokens, heads, d = x.shape
        swapped = x.view(num_tokens, heads, 2, d // 2).flip(2).view(num_tokens, heads, d)
        return x * cos + swapped * sin

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        logits_indices: torch.Tensor,
        block_size: int,
    ) -> torch.Tensor:
        """Run the step's tokens; return logits [len(logits_indices), vocab] (float32)."""
        num_tokens = input_ids.shape[0]
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        rope = self.rope_table.index_select(0, positions).unsqueeze(1)  # [T, 1, 2 * hd]
        cos, sin = rope[..., :hd], rope[..., hd:]
        hidden = F.embedding(input_ids, self.embed)
        norm_shape = (self.hidden_size,)
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            x = F.rms_norm(hidden, norm_shape, layer.input_norm, self.eps)
            qkv = self._mm(x, layer.qkv, layer.qkv_bias).view(num_tokens, nh + 2 * nkv, hd)
            # RoPE on q and k together (they are adjacent in the fused projection).
            qk = self._rope(qkv[:, : nh + nkv], cos, sin)
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, nh + nkv :]
            attn = paged_attention(q, k, v, k_cache, v_cache, meta, block_size, self.scale)
            hidden = hidden + self._mm(attn, layer.o_proj)
            x = F.rms_norm(hidden, norm_shape, layer.post_norm, self.eps)
            gate, up = self._mm(x, layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + self._mm(F.silu(gate) * up, layer.down)
        hidden = hidden.index_select(0, logits_indices)
        hidden = F.rms_norm(hidden, norm_shape, self.final_norm, self.eps)
        if self.int8:
            return int8_linear(hidden, self.lm_head)
        return F.linear(hidden, self.lm_head).float()
