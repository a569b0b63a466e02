"""Quantization: int8 dynamic on CPU, fp16/bf16 casts (the GPU path), and int8 artifacts.

Why `torch.ao.quantization.quantize_dynamic` although torch 2.13 marks it deprecated in favour
of torchao's `quantize_(model, Int8DynamicActivationInt8WeightConfig())`: on our CPUs torchao's
int8 path decoded SmolLM2-135M at about half the fp32 speed (0.85 vs 1.65 tok/s, measured side
by side), while `quantize_dynamic` (fbgemm/onednn kernels) ran about 2x faster than fp32.
torchao also adds a second heavy import to every worker. Revisit when torch removes the API.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from .formats import INT8_MARKER

INT8_WEIGHTS = "model.int8.pt"
MODES = ("int8", "bf16", "fp16")
_CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def quantize_int8_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """Quantize every Linear layer to int8 dynamic, in place, and return the model: weights
    int8 per tensor, activations quantized per batch at run time. CPU only."""
    from torch.ao.quantization import quantize_dynamic

    if next(model.parameters()).dtype != torch.float32:
        model = model.float()  # the int8 kernels take fp32 activations
    with warnings.catch_warnings():
        # The deprecation notice is known and chosen (module docstring); keep logs readable.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model.cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def cast(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """fp16/bf16 weights (and activations). fp16 is for GPUs; bf16 also runs on CPU."""
    return model.to(_CASTS[mode])


def apply(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Quantize `model` in place by mode name (`int8`, `bf16`, `fp16`)."""
    if mode == "int8":
        return quantize_int8_dynamic(model)
    if mode in _CASTS:
        return cast(model, mode)
    raise ValueError(f"unknown quantization mode {mode!r}; use one of {MODES}")


def save_int8(model, tokenizer, out_dir: str | Path) -> Path:
    """Write an int8-dynamic model: config, tokenizer, packed weights and a marker that
    `formats.load_model` recognises. safetensors cannot hold packed quantized weights, so the
    weights go to a torch file loaded with weights_only=True."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(model.state_dict(), tmp / INT8_WEIGHTS)
    marker = {"mode": "int8", "scheme": "dynamic", "modules": ["Linear"], "weights": INT8_WEIGHTS}
    (tmp / INT8_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_int8(path: str | Path):
    """Rebuild the architecture, quantize it the same way, then load the packed weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    config = AutoConfig.from_pretrained(str(path))
    # The fp32 skeleton's random init is thrown away; quantizing it gives the right modules.
    model = quantize_int8_dynamic(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    state = torch.load(path / INT8_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(path))
