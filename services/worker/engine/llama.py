"""A lean Llama-family forward (Llama, SmolLM2, Mistral, Qwen2) over a paged KV cache.

Weights are taken from the loaded transformers model and re-laid out once: Q, K and V
projections fused into one matrix (one matmul per layer instead of three), gate and up
fused likewise. The forward works on a flat batch of tokens (all sequences of the step
together), so every projection is one matmul per layer whatever the batch mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import packed
from .attention import AttentionMetadata, paged_attention
from .threads import StepThreads
from .w8a8 import Int8Weight, int8_linear
from .weight_source import ModuleWeights

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
    qkv: Any  # q, k and v projections together (a tensor or a packed weight)
    qkv_bias: torch.Tensor | None
    o_proj: Any
    post_norm: torch.Tensor
    gate_up: Any  # gate and up projections together
    down: Any


class LlamaFastModel:
    """The fast-path model: weights plus a `forward` over a ragged, paged batch."""

    def __init__(self, hf_model, device: torch.device, dtype: torch.dtype, max_positions: int,
                 quantization: str | None = None, weights=None):
        """`weights`: where tensors come from (`weight_source`); None: `hf_model`'s own
        parameters. A GGUF source lets `int4` serve the file's Q4_1 blocks as they are."""
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
        self.transposed = device.type == "cpu" and dtype == torch.float32 and quantization is None
        # W8A8 (w8a8.py): projections and lm_head as int8; the caller smoothed hf_model first.
        # int4 / int8 (packed.py): weight-only packed projections, bf16 activations.
        self.quantization = quantization
        self.int8 = quantization == "w8a8"
        # The packed modes multiply in bf16 (their kernels' only fast input) but keep the
        # residual stream and the norms in fp32: a bf16 residual alone turned greedy answers to
        # short chat prompts into different text (e.g. "What is the capital of France?").
        self.residual = torch.float32 if quantization in ("int4", "int8") else dtype
        self.threads: StepThreads | None = None  # CPU thread counts by step size (loader sets it)
        self._load_weights(weights if weights is not None else ModuleWeights(hf_model))
        self._build_rope(hf_model, max_positions)

    def _t(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(device=self.device, dtype=self.dtype).contiguous()

    def _r(self, tensor: torch.Tensor) -> torch.Tensor:
        """A norm weight, in the residual stream's dtype."""
        return tensor.detach().to(device=self.device, dtype=self.residual).contiguous()

    def _w(self, src, names: list[str]):
        """Fuse [out, in] weights along `out`; store as `_mm` wants them."""
        if self.quantization == "int4":
            blocks = [src.q4_1(n) for n in names]
            if all(b is not None for b in blocks):  # the file's own codes, fused row-wise
                codes, d, m = (torch.cat(parts) for parts in zip(*blocks, strict=True))
                return packed.Int4Weight.from_codes(codes, d, m, self.dtype)
            return packed.Int4Weight.quantize(torch.cat([src.float(n) for n in names]), self.dtype)
        fused = torch.cat([src.float(n) for n in names])
        if self.quantization == "int8":
            return packed.Int8Weight.quantize(fused, self.dtype)
        if self.int8:
            return Int8Weight.quantize(fused)
        return self._t(fused.t() if self.transposed else fused)

    def _mm(self, x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(w, packed.Int4Weight | packed.Int8Weight):
            out = w.matmul(x)
            return out if bias is None else out.add_(bias)
        if isinstance(w, Int8Weight):
            return int8_linear(x, w, bias)
        if not self.transposed:
            return F.linear(x, w, bias)
        return x @ w if bias is None else torch.addmm(bias, x, w)

    def _load_weights(self, src) -> None:
        self.embed = self._load_embedding(src)
        self.final_norm = self._r(src.float("model.norm.weight"))
        self.lm_head: Any
        if self.quantization in ("int4", "int8", "w8a8"):
            # The vocabulary projection as int8 per channel (weight-only for int4/int8): a GGUF
            # stores it as Q8_0 (a scale per 32); the kernels take one scale per row.
            lm = src.float("lm_head.weight")
            self.lm_head = Int8Weight.quantize(lm) if self.int8 else packed.Int8Weight.quantize(lm, self.dtype)
        elif src.tied and isinstance(self.embed, torch.Tensor):
            self.lm_head = self.embed  # tied embeddings: keep one copy
        else:
            self.lm_head = self._t(src.float("lm_head.weight"))
        self.layers = []
        for i in range(self.num_layers):
            pre = f"model.layers.{i}."
            at, mlp = pre + "self_attn.", pre + "mlp."
            bias = None
            if src.has(at + "q_proj.bias"):
                bias = self._t(torch.cat([src.float(at + f"{p}_proj.bias") for p in "qkv"]))
            self.layers.append(
                LayerWeights(
                    input_norm=self._r(src.float(pre + "input_layernorm.weight")),
                    qkv=self._w(src, [at + "q_proj.weight", at + "k_proj.weight", at + "v_proj.weight"]),
                    qkv_bias=bias,
                    o_proj=self._w(src, [at + "o_proj.weight"]),
                    post_norm=self._r(src.float(pre + "post_attention_layernorm.weight")),
                    gate_up=self._w(src, [mlp + "gate_proj.weight", mlp + "up_proj.weight"]),
                    down=self._w(src, [mlp + "down_proj.weight"]),
                )
            )

    def _load_embedding(self, src):
        if self.quantization in ("int4", "int8"):
            blocks = src.q8_0("model.embed_tokens.weight")
            if blocks is not None:  # Q8_0 rows, dequantized exactly on lookup
                return packed.Q8Embedding(*blocks)
        return self._t(src.float("model.embed_tokens.weight"))

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
        if self.threads is not None:
            self.threads.use(self.threads.for_tokens(num_tokens))
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        rope = self.rope_table.index_select(0, positions).unsqueeze(1)  # [T, 1, 2 * hd]
        cos, sin = rope[..., :hd], rope[..., hd:]
        if isinstance(self.embed, packed.Q8Embedding):
            hidden = self.embed.lookup(input_ids, self.residual)
        else:
            hidden = F.embedding(input_ids, self.embed).to(self.residual)
        norm_shape, act = (self.hidden_size,), self.dtype
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            x = F.rms_norm(hidden, norm_shape, layer.input_norm, self.eps).to(act)
            qkv = self._mm(x, layer.qkv, layer.qkv_bias).view(num_tokens, nh + 2 * nkv, hd)
            # RoPE on q and k together (they are adjacent in the fused projection).
            qk = self._rope(qkv[:, : nh + nkv], cos, sin)
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, nh + nkv :]
            attn = paged_attention(q, k, v, k_cache, v_cache, meta, block_size, self.scale)
            hidden = hidden + self._mm(attn, layer.o_proj)
            x = F.rms_norm(hidden, norm_shape, layer.post_norm, self.eps).to(act)
            gate, up = self._mm(x, layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + self._mm(F.silu(gate) * up, layer.down)
        hidden = hidden.index_select(0, logits_indices)
        hidden = F.rms_norm(hidden, norm_shape, self.final_norm, self.eps).to(act)
        if self.threads is not None:  # the vocabulary projection is one big op at any batch size
            self.threads.use(self.threads.large)
        if isinstance(self.lm_head, torch.Tensor):
            return F.linear(hidden, self.lm_head).float()
        return self._mm(hidden, self.lm_head).float()
