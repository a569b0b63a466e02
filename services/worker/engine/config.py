"""Engine configuration: one typed object, validated once, passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class EngineConfig:
    """How to build and run one `LLMEngine` for one model."""

    model: str | Path
    """Local Hugging Face model directory (config, safetensors, tokenizer)."""

    device: str = "cpu"
    """`"cpu"` or `"cuda"` (or `"cuda:N"`)."""

    dtype: str | None = None
    """Weights and KV dtype name (`float32`, `bfloat16`, `float16`). None: float32 on CPU,
    bfloat16 on CUDA."""

    block_size: int = 16
    """Tokens per KV block."""

    num_kv_blocks: int | None = None
    """Exact number of KV blocks. None: derived from `kv_cache_bytes` (CPU) or
    `gpu_memory_fraction` (CUDA)."""

    kv_cache_bytes: int | None = None
    """KV cache budget in bytes when `num_kv_blocks` is None. None: 512 MiB on CPU. On CUDA it
    caps what `gpu_memory_fraction` leaves (a worker holding several models sets it so each
    gets a share rather than the first taking it all)."""

    gpu_memory_fraction: float = 0.85
    """On CUDA, the fraction of total device memory the engine may use (weights, activations
    and KV together); the KV cache gets what is left after a warm-up forward."""

    max_num_seqs: int = 64
    """Most sequences in the running batch at once."""

    max_num_batched_tokens: int = 512
    """Per-step token budget (decode tokens plus prefill chunk tokens). Long prompts are
    prefilled in chunks of at most this many tokens, so decodes keep flowing."""

    max_model_len: int | None = None
    """Longest sequence (prompt plus completion). None: the model's context length, capped by
    what the KV cache can hold."""

    num_threads: int | None = None
    """torch intra-op threads on CPU. None: leave torch's default."""

    tune_malloc: bool = True
    """On CPU (glibc), make the allocator keep and reuse freed memory (see
    `loader.tune_cpu_malloc`); process-wide. Off only to measure its effect."""

    enable_prefix_caching: bool = True
    """Reuse full KV blocks of identical prompt prefixes (hash of the tokens) across requests."""

    use_cuda_graphs: bool = True
    """On CUDA, replay captured graphs for pure-decode steps (ignored on CPU)."""

    cuda_graph_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    """Decode batch buckets captured as CUDA graphs; a decode batch is padded up to the next
    bucket. Batches above the largest bucket run eagerly."""

    cuda_graph_max_context: int = 4096
    """Longest context a captured decode graph covers; longer decode steps run eagerly.
    Graphs are captured per context bucket (powers of two in blocks) up to this."""

    quantization: str | None = None
    """`"w8a8"`: int8 weights and per-token int8 activations with SmoothQuant (`w8a8.py`), CPU
    only, Llama-family fast path, float32 activations. None: weights in `dtype`."""

    force_fallback: bool = False
    """Use the generic transformers path even for Llama-family models (tests, debugging)."""

    extra: dict = field(default_factory=dict)
    """Free-form options for experiments; nothing in the engine requires them."""

    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        if isinstance(self.dtype, torch.dtype):
            return self.dtype
        try:
            return _DTYPES[str(self.dtype).lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {self.dtype!r}; use one of {sorted(_DTYPES)}") from None

    def validate(self) -> None:
        """Reject impossible settings early, with a message that names the field."""
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")
        if self.max_num_seqs <= 0:
            raise ValueError("max_num_seqs must be positive")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be positive")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError("gpu_memory_fraction must be in (0, 1]")
        self.torch_dtype()
        if self.quantization not in (None, "w8a8"):
            raise ValueError(f"quantization must be None or 'w8a8', not {self.quantization!r}")
        if self.quantization and (self.torch_device().type != "cpu" or self.torch_dtype() != torch.float32):
            raise ValueError("quantization='w8a8' runs on the CPU with float32 activations (device cpu, dtype float32)")
