"""Magnitude pruning of a causal LM's Linear layers, made permanent.

Only the transformer blocks' Linear layers are pruned (attention and MLP projections). The
embedding and the output head are left alone: with tied embeddings they are one matrix, and
zeroing vocabulary rows removes tokens outright rather than thinning the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils import prune


@dataclass
class PruneReport:
    """What pruning did: the layers touched and the resulting zero fraction."""

    amount: float
    structured: bool
    layers: int
    pruned_params: int
    zero_params: int

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over the pruned layers' weights."""
        return self.zero_params / self.pruned_params if self.pruned_params else 0.0


def prunable_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The Linear layers inside the decoder blocks (not the embedding or the output head)."""
    get_head = getattr(model, "get_output_embeddings", None)  # transformers models have it
    head = get_head() if callable(get_head) else None
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and ".layers." in f".{name}."
    ]


def prune_model(model: torch.nn.Module, amount: float, *, structured: bool = False) -> PruneReport:
    """Zero the smallest weights of each block Linear layer, in place, permanently.

    Unstructured: L1 magnitude per element, `amount` of each layer's weights. Structured:
    whole output rows (neurons) by L2 norm, `amount` of each layer's rows; the zeros then sit in
    rows a later step could slice away for real speed, where unstructured zeros only compress.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError("amount must be in [0, 1)")
    layers = prunable_linears(model)
    if not layers:
        raise ValueError("no Linear layers inside decoder blocks to prune")
    for _, module in layers:
        if structured:
            prune.ln_structured(module, name="weight", amount=amount, n=2, dim=0)
        else:
            prune.l1_unstructured(module, name="weight", amount=amount)
        # remove() folds the mask into the weight, so the zeros survive saving and no
        # forward pre-hook stays behind to slow inference.
        prune.remove(module, "weight")
    return measure(model, amount=amount, structured=structured)


def measure(model: torch.nn.Module, *, amount: float = 0.0, structured: bool = False) -> PruneReport:
    """Count zeros in the prunable layers (works on any model, pruned or not)."""
    layers = prunable_linears(model)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return PruneReport(amount, structured, len(layers), total, zeros)
