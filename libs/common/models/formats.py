"""Load a causal LM from any format we accept, and save it as a Hugging Face directory.

Formats (`detect_format` tells them apart by the path alone):

| format   | what the path is                                      | config and tokenizer from |
|----------|-------------------------------------------------------|---------------------------|
| `hf`     | a Hugging Face directory (config.json, *.safetensors) | the directory             |
| `gguf`   | a `.gguf` file                                        | the GGUF metadata         |
| `pt`     | a `.pt`/`.pth` state dict                             | `config_dir`, else the file's folder |
| `int8`   | a directory written by `quantize.save_int8`           | the directory             |

GGUF files are dequantized by transformers and cached as safetensors (keyed by the file's
sha256), so only the first load pays for the conversion.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from llmserve.common.model_store import ModelUnavailableError, cache_root

HF, GGUF, STATE_DICT, INT8 = "hf", "gguf", "pt", "int8"
FORMATS = (HF, GGUF, STATE_DICT, INT8)
_STATE_DICT_SUFFIXES = (".pt", ".pth")
INT8_MARKER = "llmserve-quantization.json"  # written by quantize.save_int8


@dataclass
class LoadedModel:
    """A model ready for inference plus where it came from."""

    model: torch.nn.Module
    tokenizer: object
    format: str
    path: Path


def detect_format(path: str | Path) -> str:
    """The format of a model path, from its suffix or directory contents."""
    path = Path(path)
    if path.is_dir():
        if (path / INT8_MARKER).is_file():
            return INT8
        if (path / "config.json").is_file():
            return HF
        raise ModelUnavailableError(f"{path} has no config.json: not a Hugging Face model directory")
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return GGUF
    if suffix in _STATE_DICT_SUFFIXES:
        return STATE_DICT
    raise ModelUnavailableError(f"cannot tell the model format of {path} (want a dir, .gguf, .pt or .pth)")


def load_model(
    path: str | Path,
    *,
    format: str | None = None,
    config_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load `path` as an eval-mode causal LM on CPU, with its tokenizer."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelUnavailableError(f"{path} does not exist")
    fmt = format or detect_format(path)
    if fmt == HF:
        model, tok = _load_hf_dir(path, dtype)
    elif fmt == GGUF:
        model, tok = _load_hf_dir(gguf_to_hf_dir(path), dtype)
    elif fmt == STATE_DICT:
        model, tok = _load_state_dict(path, Path(config_dir) if config_dir else path.parent, dtype)
    elif fmt == INT8:
        from .quantize import load_int8

        model, tok = load_int8(path)
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, format=fmt, path=path)


def _load_hf_dir(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model, AutoTokenizer.from_pretrained(str(path))


def _load_state_dict(path: Path, config_dir: Path, dtype: torch.dtype):
    """Build the architecture from `config_dir/config.json`, then fill it from the file."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if not (config_dir / "config.json").is_file():
        raise ModelUnavailableError(
            f"a state dict needs a config.json: none in {config_dir} (use --config-dir)"
        )
    config = AutoConfig.from_pretrained(str(config_dir))
    # weights_only: a state dict is tensors only; refusing pickled code keeps .pt files safe to load.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # training checkpoints often wrap it
    # transformers' own loader (with state_dict=) re-ties shared weights and builds the
    # non-persistent buffers (rotary inv_freq) that state dicts never carry.
    model_cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    model, info = model_cls.from_pretrained(  # type: ignore[attr-defined]  # the mapping's value is a class
        None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
    )
    missing = [k for k in info["missing_keys"] if not _is_tied(model, k)]
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ModelUnavailableError(
            f"{path} does not match {config_dir}/config.json: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:5]}, mismatched {list(info['mismatched_keys'])[:5]}"
        )
    return model, AutoTokenizer.from_pretrained(str(config_dir))


def _is_tied(model, key: str) -> bool:
    # With tied embeddings the output head shares the input embedding; a state dict may omit it.
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def gguf_to_hf_dir(gguf_path: Path, *, cache_dir: Path | None = None) -> Path:
    """Convert a GGUF file once to a safetensors directory; later calls return the cache."""
    from filelock import FileLock

    from llmserve.common import model_store

    digest = file_sha256(gguf_path)[:16]
    target = (cache_dir or cache_root()) / "gguf" / f"{gguf_path.stem}-{digest}"
    marker = target / model_store._COMPLETE_MARKER
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not marker.exists():
            # Reuse the suite's converter so both caches hold byte-identical results.
            model_store._convert_gguf(gguf_path, target, log=lambda _msg: None)
    return target


def save_hf_dir(model, tokenizer, out_dir: str | Path) -> Path:
    """Write `model` and `tokenizer` as a safetensors Hugging Face directory, atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def save_state_dict(model, out_path: str | Path) -> Path:
    """Write the model's weights as a plain `.pt` state dict (contiguous, de-duplicated)."""
    out_path = Path(out_path)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # re-tied on load; saving it twice doubles the file
    torch.save(state, out_path)
    return out_path


def weight_files(path: str | Path) -> list[Path]:
    """The files that hold a model's weights (what the registry checksums)."""
    path = Path(path)
    if path.is_file():
        return [path]
    patterns = ("*.safetensors", "*.pt", "*.pth", "*.bin", "*.gguf", "*.onnx", "*.onnx.data")
    files = sorted({f for p in patterns for f in path.glob(p) if f.is_file()})
    if not files:
        raise ModelUnavailableError(f"no weight files in {path}")
    return files


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_checksum(path: str | Path) -> str:
    """sha256 of the weights: the file's own digest when there is one file (so it matches
    `sha256sum`), else a digest over each file's name and digest."""
    files = weight_files(path)
    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()
