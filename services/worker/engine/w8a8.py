"""W8A8 on CPU: int8 weights (per output channel) times int8 activations (per token).

Why per token: a per-tensor activation scale (what `quantize_dynamic` uses) lets one outlier
token or channel flatten every other value, and in a batch it makes a sequence's numbers
depend on its neighbours. A scale per token keeps each row exact to 8 bits on its own, so
the output of a request is the same alone and in any batch (int32 accumulation is exact).

Why SmoothQuant (Xiao et al., 2023): some input channels of the projections carry values
~100x the others, which an int8 activation cannot hold. Dividing those channels by
s_j = max|x_j|^a / max|W_j|^(1-a) and multiplying the weight's matching column by s_j leaves
the product unchanged but moves the range into the weights, which are quantized per output
channel. The divisions fold into the preceding RMSNorm weights (q/k/v, gate/up, lm_head), the
`up` projection (down) and the `v` projection (o), so the forward pays nothing for them.

Measured on SmolLM2-135M (bench/data/perplexity.txt): fp32 25.06; int8 weights with
per-tensor activations 83.3; per-token activations 26.3; per-token + smoothing (a=0.5) 25.3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SMOOTHING_ALPHA = 0.5

# Calibration only needs typical activation ranges: short, varied chat turns (not the
# perplexity text the quality benchmark scores).
CALIBRATION_PROMPTS = (
    "What is the capital of Japan, and what is it known for?",
    "Write a haiku about autumn leaves falling in a quiet park.",
    "Explain how a refrigerator keeps food cold, in simple terms.",
    "Give me three tips for learning a new programming language.",
    "What is 128 divided by 4? Show your working.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Summarize the plot of a detective story in two sentences.",
    "List the planets of the solar system in order from the sun.",
    "Why is the sky blue? Answer like a physics teacher.",
    "Draft a polite email asking a colleague to review a document by Friday.",
    "What are the health benefits of regular walking?",
    "Describe the water cycle for a ten-year-old.",
    "Write a Python function that returns the largest number in a list.",
    "Who invented the printing press, and why did it matter?",
    "Suggest a name for a bakery that sells sourdough bread.",
    "How do vaccines help the immune system?",
)


@dataclass
class Int8Weight:
    """A linear weight as int8 `[in, out]` (the right operand of `torch._int_mm`) with one
    fp32 scale per output channel, pre-divided by 127 (the activation's int8 range)."""

    qweight: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int8Weight:
        """Symmetric per-output-channel int8 of an `[out, in]` float weight."""
        w = weight.detach().float()
        amax = w.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8)
        q = torch.round(w * (127.0 / amax)).to(torch.int8)
        return cls(q.t().contiguous(), (amax.view(-1) / (127.0 * 127.0)).contiguous())

    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scale.nbytes


def int8_linear(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, in] float32 -> [T, out] float32, with x quantized per row (token)."""
    amax = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-8)
    xq = torch.round(x * (127.0 / amax)).to(torch.int8)
    out = torch._int_mm(xq, w.qweight) * (amax * w.scale)
    return out if bias is None else out.add_(bias)


@torch.inference_mode()
def calibrate(hf_model, tokenizer, prompts=CALIBRATION_PROMPTS) -> dict[str, torch.Tensor]:
    """Largest |activation| per input channel of every Linear, over the calibration prompts."""
    stats: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], x) if name in stats else x

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in hf_model.named_modules()
             if isinstance(m, torch.nn.Linear)]
    ids: list[int] = []
    for prompt in prompts:  # one forward over all turns back to back: ranges are what count
        turn = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True)
        ids += list(turn["input_ids"] if hasattr(turn, "keys") else turn)
    try:
        hf_model(input_ids=torch.tensor([ids], device=hf_model.device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _factors(x_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_max = torch.cat([w.abs() for w in weights]).amax(dim=0).float().clamp(min=1e-5)
    return (x_max.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth_(hf_model, stats: dict[str, torch.Tensor], alpha: float = SMOOTHING_ALPHA) -> None:
    """Fold SmoothQuant scales into a Llama-family transformers model, in place. The model
    computes the same function afterwards (up to float rounding); only ranges move."""
    cfg = hf_model.config
    if hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr():
        hf_model.lm_head.weight = torch.nn.Parameter(hf_model.lm_head.weight.clone())  # untie
    for i, layer in enumerate(hf_model.model.layers):
        at, mlp, pre = layer.self_attn, layer.mlp, f"model.layers.{i}."
        _into_norm(layer.input_layernorm, [at.q_proj, at.k_proj, at.v_proj], stats[pre + "self_attn.q_proj"], alpha)
        _into_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], stats[pre + "mlp.gate_proj"],
                   alpha)
        s = _factors(stats[pre + "mlp.down_proj"], [mlp.down_proj.weight], alpha)
        mlp.down_proj.weight.mul_(s)
        mlp.up_proj.weight.div_(s.unsqueeze(1))  # down's input is silu(gate) * up
        _into_v(at, stats[pre + "self_attn.o_proj"], cfg, alpha)
    _into_norm(hf_model.model.norm, [hf_model.lm_head], stats["lm_head"], alpha)


def calibrate_and_smooth_(hf_model, tokenizer) -> None:
    """Measure activation ranges on the calibration prompts and fold the smoothing in, in place:
    what every W8A8 model goes through before its Linears are quantized."""
    smooth_(hf_model, calibrate(hf_model, tokenizer))


def _into_norm(norm, linears, x_max, alpha) -> None:
    s = _factors(x_max, [lin.weight for lin in linears], alpha)
    for lin in linears:
        lin.weight.mul_(s)
    norm.weight.div_(s)


def _into_v(attn, x_max, cfg, alpha) -> None:
    """o_proj's input is attention-weighted v: a scale per v channel carries through. With
    grouped KV heads one v channel feeds several query heads, so they share its scale."""
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    s = _factors(x_max, [attn.o_proj.weight], alpha).view(kv_heads, heads // kv_heads, head_dim).amax(dim=1)
    attn.o_proj.weight.mul_(s.repeat_interleave(heads // kv_heads, dim=0).reshape(-1))
    attn.v_proj.weight.div_(s.reshape(-1, 1))
    if attn.v_proj.bias is not None:
        attn.v_proj.bias.div_(s.reshape(-1))


class W8A8Linear(torch.nn.Module):
    """A Linear computed as the engine's fast path computes it (`int8_linear`): lets the
    transformers model itself be scored (perplexity) with exactly the engine's numerics."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = Int8Weight.quantize(linear.weight)
        self.register_buffer("qweight", w.qweight)  # buffers: counted and moved with the model
        self.register_buffer("scale", w.scale)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = int8_linear(x.reshape(-1, shape[-1]).float(), Int8Weight(self.qweight, self.scale), self.bias)
        return out.view(*shape[:-1], -1)


def quantize_model_(hf_model, tokenizer) -> None:
    """Calibrate, smooth and swap every Linear for `W8A8Linear`, in place (evaluation)."""
    calibrate_and_smooth_(hf_model, tokenizer)
    for _name, module in list(hf_model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, W8A8Linear(child))
