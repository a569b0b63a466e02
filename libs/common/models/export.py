"""Export a causal LM's logits graph to ONNX or TorchScript, and check it against torch.

Both exports take a fixed-length `input_ids` of shape (1, seq_len) and return logits of shape
(1, seq_len, vocab): no KV cache, no attention mask (all tokens attend causally). That is the
graph a runtime needs to score or prefill a prompt; serving with a cache would need the cache
tensors as graph inputs too, which each runtime (ORT GenAI, TensorRT-LLM) does its own way.

Every export is verified: the exported graph runs on a *different* random input than the one
used to trace it, and its logits must match eager torch within `atol`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

EXPORT_FORMATS = ("onnx", "torchscript")


class LogitsOnly(torch.nn.Module):
    """Wrap a transformers causal LM so that forward(input_ids) returns only the logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@dataclass
class ExportReport:
    """Where the export went and how closely it reproduces torch."""

    format: str
    path: Path
    seq_len: int
    max_abs_diff: float
    argmax_agreement: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def sample_ids(model, seq_len: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (1, seq_len), generator=generator)


def export(model, out_path: str | Path, fmt: str, *, seq_len: int = 16, atol: float = 1e-3) -> ExportReport:
    """Export by format name (`onnx`, `torchscript`)."""
    if fmt == "onnx":
        return export_onnx(model, out_path, seq_len=seq_len, atol=atol)
    if fmt == "torchscript":
        return export_torchscript(model, out_path, seq_len=seq_len, atol=atol)
    raise ValueError(f"unknown export format {fmt!r}; use one of {EXPORT_FORMATS}")


def export_onnx(model, out_path: str | Path, *, seq_len: int = 16, atol: float = 1e-3) -> ExportReport:
    """torch.onnx.export (the dynamo exporter, opset 18) of the logits graph, then a check
    with onnxruntime. Weights land next to the graph in `<out>.data` (external data)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model.float().eval()).eval()
    example = sample_ids(model, seq_len, seed=0)
    # The dynamo exporter logs every pass at INFO; an export is one CLI line, not pages.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with torch.inference_mode():
        torch.onnx.export(
            wrapper, (example,), str(out_path), input_names=["input_ids"], output_names=["logits"],
            dynamo=True, opset_version=18, external_data=True, verbose=False,
        )  # fmt: skip
    return verify_onnx(wrapper, out_path, seq_len=seq_len, atol=atol)


def verify_onnx(wrapper: LogitsOnly, onnx_path: Path, *, seq_len: int, atol: float) -> ExportReport:
    """Run the ONNX graph with onnxruntime (CPU) and compare with the torch logits."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(onnx_path))  # path form: handles external data
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ids = sample_ids(wrapper.model, seq_len, seed=1)
    got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
    return _compare("onnx", onnx_path, wrapper, ids, got, atol)


def export_torchscript(model, out_path: str | Path, *, seq_len: int = 16, atol: float = 1e-3) -> ExportReport:
    """torch.jit.trace of the logits graph (Llama-family models trace cleanly; models with
    data-dependent Python control flow in forward would not, and trace checking reports it)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model.float().eval()).eval()
    with torch.inference_mode():
        traced = torch.jit.trace(wrapper, (sample_ids(model, seq_len, seed=0),), check_trace=False)
    traced.save(str(out_path))
    loaded = torch.jit.load(str(out_path))
    ids = sample_ids(model, seq_len, seed=1)
    with torch.inference_mode():
        got = loaded(ids)
    return _compare("torchscript", out_path, wrapper, ids, got, atol)


def _compare(fmt: str, path: Path, wrapper: LogitsOnly, ids, got: torch.Tensor, atol: float) -> ExportReport:
    with torch.inference_mode():
        want = wrapper(ids)
    diff = float((got.float() - want.float()).abs().max())
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    return ExportReport(fmt, path, ids.shape[1], diff, agree, atol)
