"""From a model reference to a running engine: served id, weights, memory estimate, engine.

A reference is a built-in name, a model directory, or a registry ref (`name`, `name@vN`,
`name@alias`). Registry refs resolve to the concrete `name@vN`, which is the served id the
worker advertises and its requests are keyed by; built-in names and directories keep their
display name (the directory's last part), as a one-model worker always advertised.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llmserve.common.errors import InvalidArgument
from llmserve.common.model_store import BUILTIN_MODELS, resolve_model
from llmserve.common.models import formats
from llmserve.common.models.registry import ModelRegistry

from .engine.config import EngineConfig
from .engine.fallback import HFModelRunner
from .engine.llm_engine import LLMEngine
from .engine.loader import DEFAULT_CPU_KV_BYTES
from .settings import WorkerSettings

_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class ModelSpec:
    """Where one model's weights are and what it is served as."""

    served_id: str
    path: Path
    format: str
    ref: str  # as the operator asked for it


def is_local(ref: str) -> bool:
    return ref in BUILTIN_MODELS or Path(ref).expanduser().is_dir()


def local_spec(ref: str, log=lambda _msg: None) -> ModelSpec:
    """A built-in name or a directory (the built-in is converted to safetensors once)."""
    path = resolve_model(ref, log=log)
    served_id = Path(ref).name if Path(ref).expanduser().is_dir() else ref
    return ModelSpec(served_id, path, formats.detect_format(path), ref)


async def resolve_spec(ref: str, redis) -> ModelSpec:
    """The spec of `ref`: local when it names a built-in or a directory, else the registry's."""
    if not ref:
        raise InvalidArgument("a model reference is required")
    if is_local(ref):
        return await asyncio.to_thread(local_spec, ref)  # a built-in converts once: seconds
    if "/" in ref:
        raise InvalidArgument(f"{ref!r} is neither a model directory nor a registry reference")
    version = await ModelRegistry(redis).resolve(ref)
    return ModelSpec(version.ref, Path(version.path), version.format, ref)


def estimate_bytes(spec: ModelSpec, settings: WorkerSettings) -> int:
    """Memory the model will take once loaded (weights plus KV cache), before loading it.

    Weights: their files' size, scaled from the stored dtype to the one they load as (GGUF
    dequantizes to float: its estimate is low, and the measurement after loading decides).
    """
    weights = sum(f.stat().st_size for f in formats.weight_files(spec.path))
    stored = _stored_dtype(spec)
    if spec.format in (formats.HF, formats.STATE_DICT) and stored in _SIZES:
        weights = weights * _SIZES[_load_dtype(settings)] // _SIZES[stored]
    # Unset on CUDA, the KV cache takes what is left of the GPU: only the measurement knows.
    kv = settings.kv_cache_bytes or (DEFAULT_CPU_KV_BYTES if _device(settings) == "cpu" else 0)
    return weights + kv


def build_engine(spec: ModelSpec, settings: WorkerSettings) -> LLMEngine:
    """Load `spec`'s weights and build its engine (blocking: run it off the event loop)."""
    config = EngineConfig(
        model=spec.path, device=_device(settings), dtype=settings.dtype,
        kv_cache_bytes=settings.kv_cache_bytes, num_kv_blocks=settings.num_kv_blocks,
        gpu_memory_fraction=settings.gpu_memory_fraction, max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens, num_threads=settings.num_threads or "auto",
        quantization=None if settings.quantization == "none" else settings.quantization,
    )  # fmt: skip
    if spec.format == formats.HF:
        return LLMEngine.from_config(config)
    if config.quantization == "auto":  # registry formats below load as transformers models: dense
        config.quantization = None
    # Other formats go through the registry's loader; int8 modules have no dense weights for
    # the fast path to fuse, so they run on the transformers fallback runner.
    loaded = formats.load_model(spec.path, format=spec.format, dtype=config.torch_dtype())
    if spec.format == formats.INT8:
        config.force_fallback = True
        config.device = "cpu"  # torch's dynamic int8 kernels are CPU only
    return LLMEngine.from_model(config, loaded.model, loaded.tokenizer)


def engine_memory_bytes(engine) -> int:
    """Bytes an engine holds: its weights and KV cache (the reserved KV for the fallback
    runner, whose per-sequence caches grow up to it). 0 for engines without a runner."""
    runner = getattr(engine, "runner", None)
    if runner is None:
        return int(getattr(engine, "memory_bytes", 0))
    seen: set[int] = set()
    total = _tensor_bytes(runner, seen, depth=5)  # runner.model.layers[i].qkv.qweight (int8)
    if isinstance(runner, HFModelRunner):
        cfg = runner.model.config
        elem = next(iter(runner.model.parameters()), torch.empty(0)).element_size()
        total += 2 * cfg.num_hidden_layers * cfg.hidden_size * elem * runner.block_size * runner.num_kv_blocks
    return total


def _tensor_bytes(obj, seen: set[int], depth: int) -> int:
    """Sum of distinct tensor storages reachable from `obj` (attributes, containers, modules)."""
    if isinstance(obj, torch.Tensor):
        try:
            storage = obj.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # quantized tensors have no plain storage
            key, size = id(obj), obj.element_size() * obj.nelement()
        if key in seen:
            return 0
        seen.add(key)
        return size
    if isinstance(obj, torch.nn.Module):
        return sum(_tensor_bytes(t, seen, 0) for t in obj.state_dict(keep_vars=True).values())
    if depth <= 0:
        return 0
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        return 0
    return sum(_tensor_bytes(c, seen, depth - 1) for c in children)


def default_budget(settings: WorkerSettings) -> int:
    """85% of the GPU on CUDA (the engine's own fraction), 80% of physical RAM on CPU."""
    if _device(settings) == "cuda":
        return int(torch.cuda.get_device_properties(0).total_memory * settings.gpu_memory_fraction)
    import psutil

    return int(psutil.virtual_memory().total * 0.8)


def _device(settings: WorkerSettings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def _load_dtype(settings: WorkerSettings) -> str:
    if settings.dtype:
        return str(settings.dtype).lower()
    return "bfloat16" if _device(settings) == "cuda" else "float32"


def _stored_dtype(spec: ModelSpec) -> str | None:
    folder = spec.path if spec.path.is_dir() else spec.path.parent
    config = folder / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    return str(data.get("dtype") or data.get("torch_dtype") or "float32")

