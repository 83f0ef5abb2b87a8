"""Round-to-nearest (RTN) quantization, with an optional MSE-optimal clipping of the grid.

RTN is ``primitives.quantize_weight`` layer by layer: no calibration data. With
``mse_clip`` each group's range is shrunk by the factor in ``[1 − max_shrink, 1]`` that
minimises ``Σ|w − Q(w)|^2.4`` over the group (the GPTQ reference's MSE grid), which helps at
3-4 bits. Deliberately left out: any data-dependent rounding (that is GPTQ's and AWQ's job).
"""

from __future__ import annotations

import torch

from .primitives import QuantizedWeight, choose_qparams, effective_group, n_groups, quantize_weight


def grouped(W: torch.Tensor, group: int) -> torch.Tensor:
    """``W [out, in]`` as ``[out, n_groups, group]``, a ragged last group padded with zeros.

    >>> grouped(torch.ones(2, 5), 2).shape
    torch.Size([2, 3, 2])
    """
    out, k = W.shape
    pad = n_groups(k, group) * group - k
    return (torch.nn.functional.pad(W, (0, pad)) if pad else W).reshape(out, -1, group)


def shrink_search(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, steps: int,
                  max_shrink: float, group_error, chunk: int = 1 << 21) -> torch.Tensor:
    """Per-group range shrink ``[out, n_groups]`` from the grid ``1 − max_shrink·i/steps`` (i = 0..steps) that
    minimises ``group_error``; a shrink of 1 (no clipping) is on the grid and wins ties (the first minimum).

    Every candidate is tried at once, as batched tensor ops over row chunks of about *chunk* elements
    per candidate set: ``group_error(D, rows)`` gets the quantization residuals ``D = W − Q(W)`` of all
    candidates, grouped, ``[candidates, len(rows), n_groups, g]`` (a ragged last group zero-padded: a
    zero weight quantizes to exactly 0 on every grid, so padding adds no error), and returns
    ``[candidates, len(rows), n_groups]``. Shared by RTN's MSE clipping and AWQ's output-error clipping.

    >>> shrink_search(torch.randn(4, 64), 4, 32, True, 10, 0.5, lambda D, rows: D.pow(2).sum(-1)).shape
    torch.Size([4, 2])
    """
    W = W.float()
    out, k = W.shape
    if group_size == -1:
        return torch.ones(out, 1)
    g = effective_group(k, group_size)
    r = torch.tensor([1.0 - max_shrink * i / steps for i in range(steps + 1)])
    Wg = grouped(W, g)
    qmax = 2 ** bits - 1
    step = max(1, chunk // (r.numel() * Wg.shape[1] * g))
    best = []
    for a in range(0, out, step):
        rows = slice(a, min(a + step, out))
        s, z = choose_qparams(W[rows], bits, group_size, symmetric, shrink=r.view(-1, 1, 1))   # [R, rows, ng]
        S, Z = s.unsqueeze(-1), z.unsqueeze(-1).float()
        w = Wg[rows]
        D = (w / S).round_().add_(Z).clamp_(0, qmax).sub_(Z).mul_(S)      # the dequantized weight ...
        D = torch.sub(w, D, out=D)                                          # ... and its residual, in place
        best.append(r[group_error(D, rows).argmin(0)])
    return torch.cat(best)


def mse_shrink(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, grid: int = 20,
               max_shrink: float = 0.25, norm: float = 2.4) -> torch.Tensor:
    """Per-group range shrink factor ``[out, n_groups]`` minimising the weight error ``Σ|w − Q(w)|^norm``.

    >>> mse_shrink(torch.randn(4, 64), 3, 32, False).shape
    torch.Size([4, 2])
    """
    return shrink_search(W, bits, group_size, symmetric, grid, max_shrink,
                         lambda D, _rows: D.abs_().pow_(norm).sum(-1))


def rtn_quantize_weight(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                        mse_clip: bool = False) -> QuantizedWeight:
    """RTN on the chosen grid; with *mse_clip*, on the MSE-optimal shrunk grid.

    >>> rtn_quantize_weight(torch.randn(8, 64), 4, 32, True).codes.max() <= 15
    tensor(True)
    """
    shrink = mse_shrink(W, bits, group_size, symmetric) if mse_clip else 1.0
    return quantize_weight(W, bits, group_size, symmetric, shrink=shrink)
