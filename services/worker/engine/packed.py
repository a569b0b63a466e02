"""Packed low-bit weights on CPU: GGUF's Q4_1 blocks as torch's int4 layout, int8 weight-only.

Q4_1 (llama.cpp) stores 32 weights per block as 4-bit codes q with an fp16 scale d and
minimum m: w = d*q + m. torch's `_weight_int4pack_mm_for_cpu` dequantizes a group of 32 as
w = (q - 8)*scale + zero, so a Q4_1 block maps to it without re-quantizing: the same codes,
scale = d, zero = m + 8d (exact in float32: `test_packed.py` checks every block of the
bundled model against `gguf`'s own dequantization).

The kernels are only vectorized for bfloat16 activations in torch 2.13 (measured on an
AVX-512 Xeon, 576x3072, one row: int4 bf16 0.12 ms, int4 fp32 9.9 ms, int4 fp16 19 ms,
int8 weight-only bf16 0.11 ms, fp32 4.8 ms), so these modes run bf16 activations and keep
scale and zero in bf16: the served weight is the file's up to rounding d and m + 8d to
bf16 (2^-9 relative); `bench/results/quantization.md` reports what that costs in
perplexity.

The int4 kernel's cost grows with the number of rows about as fast as a dense bf16
matmul's, so for steps with many tokens `Int4Weight` keeps no second copy: the step runs
the packed kernel at every size (measured in the benchmark; see the default-mode note there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 32  # Q4_1 and Q8_0 block size; the int4 layout's group size
_INT4_ZERO_OFFSET = 8  # the int4 kernel computes (q - 8) * scale + zero


@dataclass
class Int4Weight:
    """An `[out, in]` weight as torch's packed int4 (`[out, in/2]` uint8) with a bfloat16
    (scale, zero) pair per group of 32 input columns (`[in/32, out, 2]`)."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor
    out_features: int

    @classmethod
    def from_codes(cls, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
                   dtype: torch.dtype = torch.bfloat16) -> Int4Weight:
        """codes `[out, in]` in 0..15, d and m `[out, in/32]` with w = d*codes + m."""
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        d32, m32 = d.float(), m.float()
        zero = m32 + _INT4_ZERO_OFFSET * d32
        sz = torch.stack([d32.t(), zero.t()], dim=-1).to(dtype).contiguous()
        return cls(packed, sz, codes.shape[0])

    @classmethod
    def quantize(cls, weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Int4Weight:
        """Q4_1-style quantization of a float `[out, in]` weight (min/max per 32 columns),
        for weights that do not come packed from a GGUF file."""
        codes, d, m = q4_1_quantize(weight)
        return cls.from_codes(codes, d, m, dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales_zeros)

    def dequantize(self) -> torch.Tensor:
        """The float32 `[out, in]` weight the kernel multiplies by (identity through the kernel)."""
        k = self.scales_zeros.shape[0] * GROUP
        eye = torch.eye(k, dtype=self.scales_zeros.dtype)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP, self.scales_zeros).t().float()

    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_zeros.nbytes


@dataclass
class Int8Weight:
    """Weight-only int8: `[out, in]` int8 with one bfloat16 scale per output channel
    (`_weight_int8pack_mm`); activations stay bfloat16."""

    qweight: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Int8Weight:
        w = weight.detach().float()
        amax = w.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8)
        q = torch.round(w * (127.0 / amax)).clamp_(-127, 127).to(torch.int8)
        return cls(q.contiguous(), (amax.view(-1) / 127.0).to(dtype).contiguous())

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scale)

    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scale.nbytes


@dataclass
class Q8Embedding:
    """An embedding table as Q8_0 blocks (int8 codes, one scale per 32): rows are dequantized
    on lookup, exactly (an fp16 scale times an int8 code is exact in float32)."""

    codes: torch.Tensor  # [vocab, hidden] int8
    scales: torch.Tensor  # [vocab, hidden/32] float16

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        rows = self.codes.index_select(0, ids).float().view(ids.shape[0], -1, GROUP)
        out = rows * self.scales.index_select(0, ids).float().unsqueeze(-1)
        return out.view(ids.shape[0], -1).to(dtype)

    def dequantize(self) -> torch.Tensor:
        v = self.codes.shape[0]
        return (self.codes.float().view(v, -1, GROUP) * self.scales.float().unsqueeze(-1)).view(v, -1)

    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


def q4_1_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, d, m) as llama.cpp's reference Q4_1 quantizer makes them: d = (max-min)/15,
    m = min, per 32 input columns (d and m rounded to fp16 as the file stores them)."""
    w = weight.detach().float()
    out, k = w.shape
    if k % GROUP:
        raise ValueError(f"in_features {k} is not a multiple of {GROUP}")
    g = w.view(out, k // GROUP, GROUP)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    d = ((hi - lo) / 15.0).half().float()
    m = lo.half().float()
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    codes = torch.round((g - m.unsqueeze(-1)) * inv.unsqueeze(-1)).clamp_(0, 15).to(torch.int32)
    return codes.view(out, k), d, m


def q4_1_unpack(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 bytes `[rows, blocks*20]` -> (codes `[rows, blocks*32]`, d, m `[rows, blocks]`).
    A block is d (fp16), m (fp16), then 16 bytes: element j in the low nibble of byte j,
    element j+16 in its high nibble."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 20)
    d = blocks[..., 0:2].contiguous().view(torch.float16).view(rows, -1)
    m = blocks[..., 2:4].contiguous().view(torch.float16).view(rows, -1)
    qs = blocks[..., 4:].to(torch.int32)
    codes = torch.cat([qs & 0xF, qs >> 4], dim=-1)  # [rows, blocks, 32]
    return codes.view(rows, -1), d, m


def q8_0_unpack(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q8_0 bytes `[rows, blocks*34]` -> (codes int8 `[rows, blocks*32]`, d fp16 `[rows, blocks]`)."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 34)
    d = blocks[..., 0:2].contiguous().view(torch.float16).view(rows, -1)
    codes = blocks[..., 2:].contiguous().view(torch.int8).view(rows, -1)
    return codes, d
