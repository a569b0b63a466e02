"""Worker settings (environment prefix LLMSERVE_WORKER_)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.settings import ServiceSettings, StrList


class WorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSERVE_WORKER_", extra="ignore")

    port: int = Field(50053, ge=0, le=65535)
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Unique id; names this worker's stream and heartbeat.",
    )
    advertise_host: str = Field("", description="Host others reach this worker at; empty: the bind host.")
    model: str = Field(DEFAULT_MODEL, description="Model name (built-in) or Hugging Face directory.")
    models: StrList = Field(
        default_factory=list,
        description="Models to load at start (each a built-in name, a directory, or a registry ref "
        "`name`, `name@vN`, `name@alias`); empty: just `model`. More load and unload at run time "
        "through the LoadModel/UnloadModel admin RPCs.",
    )
    model_memory_bytes: int | None = Field(
        None, ge=1,
        description="Budget for all loaded models (weights plus KV cache); a load that would exceed it "
        "is refused. Unset: 85% of the GPU's memory on CUDA, 80% of RAM on CPU.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    dtype: str | None = Field(None, description="float32, bfloat16 or float16; unset: fp32 on CPU, bf16 on GPU.")
    quantization: Literal["auto", "none", "int4", "int8", "w8a8"] = Field(
        "auto", description="CPU weight format of the Llama-family fast path. auto (default): int4 on a "
        "CPU when dtype is unset (the fastest mode at one sequence within 2% perplexity of fp32, "
        "bench/results/quantization.md), else none. int4: the GGUF's Q4_1 blocks served packed, bf16 "
        "activations; its kernels are batch-invariant and recomputed tokens are replayed as decode, so a "
        "resumed greedy request continues exactly. int8: int8 weight-only, bf16 activations. w8a8: int8 "
        "weights x int8 activations (SmoothQuant), fp32 activations. none: weights in dtype (fp32 on "
        "CPU; docs/engine.md).")
    kv_cache_bytes: int | None = Field(
        None, ge=1,
        description="KV cache budget per model; unset: 512 MiB on CPU, on CUDA what gpu_memory_fraction "
        "leaves (set it when a GPU worker holds several models).",
    )
    num_kv_blocks: int | None = Field(None, ge=1, description="Exact KV block count (overrides the budget).")
    gpu_memory_fraction: float = Field(0.85, gt=0, le=1)
    max_num_seqs: int = Field(64, ge=1, description="Most sequences in the running batch.")
    max_num_batched_tokens: int = Field(512, ge=1, description="Token budget per engine step.")
    num_threads: int | None = Field(
        None, ge=1, description="torch threads on CPU; unset: measured at start for small steps (each count "
        "from 1 to one less than the usable cores runs a decode-sized pass, the fastest wins), every usable core "
        "for big steps and the vocabulary projection (engine/threads.py).")
    max_backlog: int = Field(
        16, ge=1, description="Requests read from the stream but not yet running, at most."
    )
    heartbeat_interval_ms: int = Field(500, ge=50)
    heartbeat_ttl_ms: int = Field(3000, ge=200, description="A worker silent this long counts as dead.")
    orphan_grace_s: float = Field(
        10.0, ge=0,
        description="A request whose gateway's registration has been gone this long (and that no client "
        "re-attached to through another gateway) is cancelled and its KV freed (docs/reattach.md).",
    )
    result_ttl_s: float = Field(
        300.0, ge=0,
        description="A finished request's output stays in Redis this long, so a client whose gateway died "
        "can still fetch it by re-attaching (resume_from_index). 0: not stored.",
    )
    profile_dir: str = Field("bench/traces", description="Where StartProfile writes traces (the request names "
                             "no path: files are `<worker id>-<time>.json` here).")
    model_dirs: StrList = Field(
        default_factory=list,
        description="Directories a LoadModel request may name a model in (resolved, symlinks followed); "
        "empty: only built-in names and registry references. The models of `models`/`model` at start are "
        "not limited.",
    )
    fail_step_after: int | None = Field(
        None, ge=0, description="Test hook, off when unset: every engine's step raises once it has run this "
        "many steps, to exercise the engine-failure path (NOT_SERVING, hand-over, exit 1).")
