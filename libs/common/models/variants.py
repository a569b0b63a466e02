"""Derive a new model version from a loaded one: quantized or pruned, saved, measured.

Each function transforms the model in place, writes it to `out_dir` in a format
`formats.load_model` reads back, and returns what the registry should record, including the
perplexity before and after on a fixed text when one is given (the quality delta).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import evaluate, prune, quantize
from .formats import HF, INT8, LoadedModel, save_hf_dir

# The fixed evaluation text shipped with the repository (bench/data/), found from this file
# in a source checkout; installed elsewhere, pass --eval-text.
DEFAULT_EVAL_TEXT = Path(__file__).resolve().parents[3] / "bench" / "data" / "perplexity.txt"


@dataclass
class Variant:
    """A derived model written to disk, with the facts to register about it."""

    path: Path
    format: str
    dtype: str
    quantization: str
    metrics: dict = field(default_factory=dict)


def quantize_variant(
    loaded: LoadedModel,
    mode: str,
    out_dir: Path,
    eval_text: str | None = None,
    *,
    int8_skip: tuple[str, ...] = quantize.DEFAULT_SKIP,
) -> Variant:
    """int8 (dynamic, CPU), bf16 or fp16 copy of `loaded`, written to `out_dir`. `int8_skip`:
    name suffixes of Linear layers int8 leaves in fp32."""
    metrics = _baseline(loaded, eval_text)
    before = evaluate.weight_bytes(loaded.model)
    options = {"skip": int8_skip} if mode == "int8" else {}
    model = quantize.apply(loaded.model, mode, **options)
    metrics.update(weight_bytes_before=before, weight_bytes=evaluate.weight_bytes(model))
    _after(model, loaded.tokenizer, eval_text, metrics)
    if mode == "int8":
        path = quantize.save_int8(model, loaded.tokenizer, out_dir, skip=int8_skip)
        return Variant(path, INT8, "qint8", "int8-dynamic", metrics)
    path = save_hf_dir(model, loaded.tokenizer, out_dir)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[mode]
    return Variant(path, HF, dtype, "none", metrics)


def prune_variant(
    loaded: LoadedModel, amount: float, structured: bool, out_dir: Path, eval_text: str | None = None
) -> Variant:
    """Magnitude-pruned copy of `loaded` (made permanent), written as safetensors."""
    metrics = _baseline(loaded, eval_text)
    report = prune.prune_model(loaded.model, amount, structured=structured)
    metrics.update(
        prune_amount=amount, prune_structured=structured, sparsity=round(report.sparsity, 6),
        pruned_layers=report.layers,
    )  # fmt: skip
    _after(loaded.model, loaded.tokenizer, eval_text, metrics)
    path = save_hf_dir(loaded.model, loaded.tokenizer, out_dir)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    kind = "structured" if structured else "unstructured"
    return Variant(path, HF, dtype, f"pruned-{kind}-{amount:g}", metrics)


def default_out_dir(root: Path, name: str, source_version: str | None, suffix: str) -> Path:
    """`<root>/<name>/<source>-<suffix>-<timestamp>`: unique, and says where it came from."""
    stem = f"{source_version or 'local'}-{suffix}-{time.strftime('%Y%m%d-%H%M%S')}"
    return root / name / stem


def read_eval_text(path: str | Path | None) -> str | None:
    """The evaluation text, or None when no path is given and the default is absent."""
    if path is None:
        return DEFAULT_EVAL_TEXT.read_text() if DEFAULT_EVAL_TEXT.is_file() else None
    return Path(path).read_text()


def _baseline(loaded: LoadedModel, eval_text: str | None) -> dict:
    if not eval_text:
        return {}
    return {
        "perplexity_before": round(evaluate.text_perplexity(loaded.model, loaded.tokenizer, eval_text), 4)
    }


def _after(model, tokenizer, eval_text: str | None, metrics: dict) -> None:
    if not eval_text:
        return
    ppl = evaluate.text_perplexity(model, tokenizer, eval_text)
    metrics["perplexity"] = round(ppl, 4)
    metrics["perplexity_delta"] = round(ppl - metrics["perplexity_before"], 4)
