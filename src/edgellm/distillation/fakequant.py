"""Straight-through fake quantization of Linear weights, for quantization-aware recovery.

Each ``nn.Linear`` weight is re-parametrized as ``W + (dequant(quant(W)) − W).detach()``: the
forward pass sees the quantized weights, the backward pass treats rounding as identity (the
straight-through estimator). Quantization is symmetric, b bits, per group of *group_size*
input columns (0 = per output row), on the grid of ``edgellm.quantization.primitives`` so the
quantizer packs the recovered weights without another rounding. ``keep_sparsity`` adds a fixed 0/1 mask so weights that
start at zero (a pruned or 2:4 model) stay zero. ``finalize`` bakes the quantized (and masked)
values into plain weights, ready for the quantizer to pack. Deliberately minimal: symmetric
weight grids only, no activation quantization.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..calibrate import find_blocks
from ..quantization.primitives import choose_qparams, effective_group, fake_quantize as quant_dequant


def fake_quantize(W: torch.Tensor, bits: int, group_size: int = 32) -> torch.Tensor:
    """Symmetric round-to-nearest on ``edgellm.quantization``'s grid (GGUF Q4_0's rule at 4 bits, g32):
    the dequantized values of *W* ``[out, in]``; *group_size* 0 = one group per output row.

    >>> fake_quantize(torch.tensor([[0.5, -1.0, 0.26, 0.0]]), 2, 0).tolist()
    [[0.5, -1.0, 0.5, 0.0]]
    """
    g = group_size or None
    scale, zero = choose_qparams(W, bits, g, symmetric=True)
    return quant_dequant(W, scale, zero, bits, effective_group(W.shape[1], g)).to(W.dtype)


class _STE(nn.Module):
    def __init__(self, bits: int, group_size: int, mask: torch.Tensor | None):
        super().__init__()
        self.bits, self.group_size = bits, group_size
        if mask is not None:
            self.register_buffer("mask", mask, persistent=False)
        else:
            self.mask = None

    def forward(self, W):
        if self.mask is not None:
            W = W * self.mask
        if self.bits:
            W = W + (fake_quantize(W.detach(), self.bits, self.group_size) - W).detach()
        return W


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers inside the repeated blocks (embeddings and heads are left alone)."""
    _, blocks = find_blocks(model)
    return [m for b in blocks for m in b.modules() if isinstance(m, nn.Linear)]


def attach(model: nn.Module, bits: int, group_size: int = 32, keep_sparsity: bool = False) -> int:
    """Re-parametrize every block Linear of *model* in place; returns how many were wrapped."""
    linears = block_linears(model)
    for lin in linears:
        mask = (lin.weight.detach() != 0).to(lin.weight.dtype) if keep_sparsity else None
        parametrize.register_parametrization(lin, "weight", _STE(bits, group_size, mask))
    return len(linears)


def finalize(model: nn.Module) -> None:
    """Replace the parametrizations by plain weights holding the quantized (masked) values."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
