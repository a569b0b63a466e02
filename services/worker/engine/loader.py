"""Build the engine's parts from an `EngineConfig`: tokenizer, model runner, KV blocks."""

from __future__ import annotations

import copy
import ctypes
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llmserve.common.model_store import source_gguf

from . import llama, threads, w8a8
from .block_manager import BlockManager
from .config import PACKED_MODES, EngineConfig
from .fallback import HFModelRunner
from .model_runner import ModelRunner, PagedModelRunner

log = logging.getLogger(__name__)

DEFAULT_CPU_KV_BYTES = 512 << 20  # KV budget on CPU when kv_cache_bytes is unset


@dataclass(frozen=True)
class EngineParts:
    """What `LLMEngine` is built from (`load_engine_parts` makes them from a config)."""

    tokenizer: Any  # a transformers tokenizer
    runner: ModelRunner  # the fast paged path or the transformers fallback
    block_manager: BlockManager  # KV blocks, sized to what the runner allocated
    eos_token_ids: frozenset[int]  # any of them ends a sequence (unless ignore_eos)


def tune_cpu_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel.

    Every step allocates the same few MB of activations. By default glibc serves large
    blocks with fresh mmap()s and unmaps them on free, so each step page-faults all its
    temporaries in again; in a VM that made a 1.5 MB gather 100x slower and a decode
    matmul 10x slower. A high mmap threshold and no trimming make the heap reuse them.
    Process-wide, idempotent; a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
    return libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok


def load_engine_parts(config: EngineConfig, hf_model=None, tokenizer=None) -> EngineParts:
    """Everything `LLMEngine.__init__` needs. `hf_model`/`tokenizer` may be passed in
    (tests build tiny models from a config)."""
    if config.quantization == "auto":
        hf_config = hf_model.config if hf_model is not None else AutoConfig.from_pretrained(str(config.model))
        config.resolve_quantization(llama.is_supported(hf_config))
        log.info("quantization=auto: serving %s", config.quantization or config.torch_dtype())
    device, dtype = config.torch_device(), config.torch_dtype()
    if device.type == "cpu":
        if isinstance(config.num_threads, int):
            torch.set_num_threads(config.num_threads)
        if config.tune_malloc:
            tune_cpu_malloc()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(config.model))
    weights = None
    if hf_model is None and config.quantization in PACKED_MODES and not config.force_fallback:
        hf_model, weights = _gguf_skeleton(config)
    if hf_model is None:
        hf_model = AutoModelForCausalLM.from_pretrained(str(config.model), dtype=dtype)
    elif config.quantization and weights is None:
        hf_model = copy.deepcopy(hf_model)  # quantizing rewrites weights: not the caller's model
    hf_model.eval()
    context_len = _context_length(hf_model.config)
    if config.quantization and (config.force_fallback or not llama.is_supported(hf_model.config)):
        raise ValueError(f"quantization={config.quantization!r} needs the Llama-family fast path; "
                         f"{hf_model.config.model_type!r} runs on the transformers fallback")
    if not config.force_fallback and llama.is_supported(hf_model.config):
        runner = _build_paged_runner(config, hf_model, device, dtype, context_len, tokenizer, weights)
        del hf_model  # the fast path copied what it needs
        if device.type == "cpu" and config.num_threads == "auto":
            small = threads.calibrate(runner.model, threads.small_step_candidates())
            runner.model.threads = threads.StepThreads(small, threads.usable_cores())
        prefix = config.enable_prefix_caching
    else:
        log.info("model type %s: using the transformers fallback path", hf_model.config.model_type)
        runner = _build_fallback_runner(config, hf_model.to(device), context_len)
        prefix = False  # per-sequence caches cannot share blocks
    block_manager = BlockManager(runner.num_kv_blocks, config.block_size, prefix)
    return EngineParts(tokenizer, runner, block_manager, frozenset(_eos_ids(runner.eos_token_id, tokenizer)))


def _context_length(hf_config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(hf_config, name, None)
        if value:
            return int(value)
    return 2048


def _eos_ids(config_eos, tokenizer) -> set[int]:
    ids: set[int] = set()
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(int(i) for i in config_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _num_blocks(config: EngineConfig, bytes_per_token: int, device: torch.device) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    per_block = bytes_per_token * config.block_size
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        budget = int(total * config.gpu_memory_fraction) - used
        # Leave room for activations and CUDA graph pools.
        budget -= 1 << 30
        if config.kv_cache_bytes:  # several models on one GPU: each gets its own share
            budget = min(budget, config.kv_cache_bytes)
    else:
        budget = config.kv_cache_bytes or DEFAULT_CPU_KV_BYTES
    if budget < per_block:
        raise RuntimeError(f"KV budget of {budget} bytes is less than one block ({per_block} bytes)")
    return budget // per_block


def _gguf_skeleton(config: EngineConfig):
    """(a weightless model for config and rope, the GGUF weights) when `config.model` was
    converted from a GGUF file that is still installed; (None, None) otherwise. The packed
    modes then read Q4_1/Q8_0 blocks from the (memory-mapped) file: no float copy of the
    model is ever resident."""
    path = source_gguf(config.model)
    if path is None:
        return None, None
    from .weight_source import GGUFWeights

    hf_config = AutoConfig.from_pretrained(str(config.model))
    if not llama.is_supported(hf_config):
        return None, None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_config)  # real buffers, on CPU
    if (Path(config.model) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(config.model))
    heads = hf_config.num_attention_heads
    weights = GGUFWeights(path, heads, getattr(hf_config, "num_key_value_heads", None) or heads)
    log.info("%s: serving %s weights from %s", config.model, config.quantization, path)
    return model, weights


def _build_paged_runner(config, hf_model, device, dtype, context_len, tokenizer, weights=None) -> PagedModelRunner:
    max_len = config.max_model_len or context_len
    if config.quantization == "w8a8":
        w8a8.calibrate_and_smooth_(hf_model, tokenizer)
    model = llama.LlamaFastModel(hf_model, device, dtype, max_positions=max_len, quantization=config.quantization,
                                 weights=weights)
    num_blocks = _num_blocks(config, model.kv_bytes_per_token(), device)
    max_len = min(max_len, num_blocks * config.block_size)
    runner = PagedModelRunner(model, num_blocks, config.block_size, max_len)
    if device.type == "cuda" and config.use_cuda_graphs:
        from .cuda_graphs import DecodeGraphs

        runner.graphs = DecodeGraphs(runner, config.cuda_graph_batch_sizes, config.cuda_graph_max_context)
    gen = hf_model.generation_config
    runner.eos_token_id = gen.eos_token_id if gen is not None else None
    return runner


def _build_fallback_runner(config, hf_model, context_len) -> HFModelRunner:
    max_len = min(config.max_model_len or context_len, context_len)
    param = next(hf_model.parameters())
    hidden, layers = hf_model.config.hidden_size, hf_model.config.num_hidden_layers
    # Accounting only: blocks bound how many tokens the per-sequence caches may hold.
    bytes_per_token = 2 * layers * hidden * param.element_size()
    num_blocks = _num_blocks(config, bytes_per_token, param.device)
    max_len = min(max_len, num_blocks * config.block_size)
    runner = HFModelRunner(hf_model, num_blocks, config.block_size, max_len)
    gen = hf_model.generation_config
    runner.eos_token_id = gen.eos_token_id if gen is not None else None
    return runner
