"""Where the fast path reads weights from: a transformers model, or a GGUF file directly.

`LlamaFastModel` asks a source for each tensor by its Hugging Face name. A GGUF source
also hands out Q4_1 and Q8_0 blocks as they are in the file, so the packed modes
(`packed.py`) serve the file's codes without a float copy in between; everything else it
dequantizes with the `gguf` package (F32 norms are read as they are).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .packed import q4_1_unpack, q8_0_unpack


class ModuleWeights:
    """Float weights of a loaded transformers model."""

    def __init__(self, hf_model):
        self._params = dict(hf_model.named_parameters(remove_duplicate=False))
        self.tied = hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()

    def float(self, name: str) -> torch.Tensor:
        return self._params[name].detach()

    def has(self, name: str) -> bool:
        return name in self._params

    def q4_1(self, name: str):  # noqa: ARG002 - same interface as GGUFWeights
        return None

    def q8_0(self, name: str):  # noqa: ARG002
        return None


_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight$")
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


class GGUFWeights:
    """Tensors of a llama-architecture GGUF file, by Hugging Face name (memory-mapped)."""

    def __init__(self, path: str | Path, num_heads: int, num_kv_heads: int):
        import gguf

        self.path = Path(path)
        reader = gguf.GGUFReader(str(path))
        self._tensors = {t.name: t for t in reader.tensors}
        self._heads = {"attn_q": num_heads, "attn_k": num_kv_heads}
        self.tied = "output.weight" not in self._tensors

    def _gguf(self, name: str) -> tuple[str, str | None]:
        if self.tied and name == "lm_head.weight":
            name = "model.embed_tokens.weight"
        if name in _TOP_NAMES:
            return _TOP_NAMES[name], None
        match = _LAYER.match(name)
        if not match or match.group(2) not in _LAYER_NAMES:
            raise KeyError(name)
        kind = _LAYER_NAMES[match.group(2)]
        return f"blk.{match.group(1)}.{kind}.weight", kind

    def has(self, name: str) -> bool:
        try:
            return self._gguf(name)[0] in self._tensors
        except KeyError:
            return False

    def _rows(self, kind: str | None, rows: int) -> torch.Tensor | None:
        """llama.cpp's converter interleaves q and k rows for its rope; this undoes it (what
        transformers' GGUF loader does), as a row order that applies to blocks as well."""
        heads = self._heads.get(kind or "")
        if heads is None:
            return None
        idx = torch.arange(rows).view(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)
        return torch.argsort(idx)

    def _raw(self, name: str, qtype: str):
        gname, kind = self._gguf(name)
        tensor = self._tensors[gname]
        if tensor.tensor_type.name != qtype:
            return None, kind
        raw = torch.from_numpy(np.array(tensor.data))  # a copy: the mmap is read-only
        order = self._rows(kind, raw.shape[0])
        return (raw if order is None else raw.index_select(0, order)), kind

    def q4_1(self, name: str):
        """(codes, d, m) of a Q4_1 tensor, rows as transformers orders them; None if not Q4_1."""
        raw, _ = self._raw(name, "Q4_1")
        return None if raw is None else q4_1_unpack(raw)

    def q8_0(self, name: str):
        """(codes, d) of a Q8_0 tensor; None if it is stored otherwise."""
        raw, _ = self._raw(name, "Q8_0")
        return None if raw is None else q8_0_unpack(raw)

    def float(self, name: str) -> torch.Tensor:
        """The tensor dequantized to float32 by `gguf` itself, `[out, in]` as transformers has it."""
        from gguf import quants

        gname, kind = self._gguf(name)
        tensor = self._tensors[gname]
        values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        out = torch.from_numpy(np.array(values, dtype=np.float32))
        order = self._rows(kind, out.shape[0]) if out.dim() == 2 else None
        return out if order is None else out.index_select(0, order)
