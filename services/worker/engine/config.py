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

PACKED_MODES = ("int4", "int8")  # weight-only packed formats (packed.py), bf16 activations
QUANTIZATIONS = (None, "w8a8", *PACKED_MODES, "auto")
# What `quantization="auto"` serves on a CPU when dtype is unset: the fastest mode within 2%
# perplexity of the fp32-dequantized weights, measured by bench/quant_bench.py
# (bench/results/quantization.md).
AUTO_CPU_MODE = "int4"


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

    num_threads: int | str | None = None
    """torch intra-op threads on CPU. None: leave torch's default. `"auto"`: time a decode-sized
    pass of the model at each thread count up to one less than the usable cores once loaded and
    keep the fastest for small steps; big steps and the vocabulary projection use every core
    (`threads.py`; the worker's default)."""

    tune_malloc: bool = True
    """On CPU (glibc), make the allocator keep and reuse freed memory (see
    `loader.tune_cpu_malloc`); process-wide. Off only to measure its effect."""

    decode_replay: bool = True
    """Recompute completion tokens (a resume from another worker, a preemption) one per step,
    as decode computed them the first time, instead of as one prefill. With batch-invariant
    kernels (the packed int4/int8 ones: each row's result does not depend on the batch) the
    recomputed KV is bit-identical, so a resumed greedy request picks the same next tokens it
    would have; a prefill's different reduction order can flip a near-tie in bf16. Costs one
    step per replayed token, only on resume and preemption."""

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
    """CPU weight formats of the Llama-family fast path. `"int4"`: 4-bit groups of 32
    (`packed.py`; a GGUF's Q4_1 blocks served as they are), bfloat16 activations. `"int8"`:
    int8 weight-only per channel, bfloat16 activations. `"w8a8"`: int8 weights and per-token
    int8 activations with SmoothQuant (`w8a8.py`), float32 activations. None: weights in
    `dtype`. `"auto"`: `AUTO_CPU_MODE` on a CPU with dtype unset for a Llama-family model on
    the fast path, else None (`resolve_quantization`; the worker's default)."""

    force_fallback: bool = False
    """Use the generic transformers path even for Llama-family models (tests, debugging)."""

    extra: dict = field(default_factory=dict)
    """Free-form options for experiments; nothing in the engine requires them."""

    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype is None and self.quantization in PACKED_MODES:
            return torch.bfloat16  # the packed kernels are vectorized for bf16 only
        if self.dtype is None:
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        if isinstance(self.dtype, torch.dtype):
            return self.dtype
        try:
            return _DTYPES[str(self.dtype).lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {self.dtype!r}; use one of {sorted(_DTYPES)}") from None

    def resolve_quantization(self, fast_path: bool) -> None:
        """Replace `"auto"` with the concrete mode, once the model's family is known."""
        if self.quantization != "auto":
            return
        cpu = self.torch_device().type == "cpu"
        self.quantization = AUTO_CPU_MODE if cpu and self.dtype is None and fast_path and not self.force_fallback else None

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
        if not (self.num_threads is None or self.num_threads == "auto"
                or (isinstance(self.num_threads, int) and self.num_threads >= 1)):
            raise ValueError(f"num_threads must be a positive int, 'auto' or None, not {self.num_threads!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {self.quantization!r}")
        if self.quantization and self.torch_device().type != "cpu":
            raise ValueError(f"quantization={self.quantization!r} runs on the CPU only (device {self.device!r})")
        if self.quantization == "w8a8" and self.torch_dtype() != torch.float32:
            raise ValueError("quantization='w8a8' runs with float32 activations (dtype float32)")
        if self.quantization in PACKED_MODES and self.torch_dtype() != torch.bfloat16:
            raise ValueError(f"quantization={self.quantization!r} runs with bfloat16 activations (dtype "
                             f"bfloat16 or unset), not dtype {self.dtype!r}")
