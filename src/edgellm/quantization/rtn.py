"""Round-to-nearest (RTN) quantization, with an optional MSE-optimal clipping of the grid.

RTN is ``primitives.quantize_weight`` layer by layer: no calibration data. With
``mse_clip`` each group's range is shrunk by the factor in ``[1 − max_shrink, 1]`` that
minimises ``Σ|w − Q(w)|^2.4`` over the group (the GPTQ reference's MSE grid), which helps at
3-4 bits. Deliberately left out: any data-dependent rounding (that is GPTQ's and AWQ's job).
"""

from __future__ import annotations

import torch

from .primitives import (QuantizedWeight, _group_reduce, choose_qparams, effective_group, fake_quantize,
                         quantize_weight)


def shrink_search(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, steps: int,
                  max_shrink: float, group_error) -> torch.Tensor:
    """Per-group range shrink ``[out, n_groups]`` from the grid ``1 − max_shrink·i/steps`` (i = 0..steps) that
    minimises ``group_error(D)``, the ``[out, n_groups]`` error of the quantization residual ``D = W − Q(W)``.

    Shared by RTN's MSE clipping and AWQ's output-error clipping; a shrink of 1 (no clipping) is on the grid.

    >>> shrink_search(torch.randn(4, 64), 4, 32, True, 10, 0.5, lambda D: D.pow(2).view(4, 2, 32).sum(-1)).shape
    torch.Size([4, 2])
    """
    W = W.float()
    if group_size == -1:
        return torch.ones(W.shape[0], 1)
    g = effective_group(W.shape[1], group_size)
    best_err, best = None, None
    for i in range(steps + 1):
        r = 1.0 - max_shrink * i / steps
        s, z = choose_qparams(W, bits, group_size, symmetric, shrink=r)
        err = group_error(W - fake_quantize(W, s, z, bits, g))
        if best_err is None:
            best_err, best = err, torch.full_like(err, r)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, r), best)
    return best


def mse_shrink(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, grid: int = 20,
               max_shrink: float = 0.25, norm: float = 2.4) -> torch.Tensor:
    """Per-group range shrink factor ``[out, n_groups]`` minimising the weight error ``Σ|w − Q(w)|^norm``.

    >>> mse_shrink(torch.randn(4, 64), 3, 32, False).shape
    torch.Size([4, 2])
    """
    g = effective_group(W.shape[1], group_size)
    return shrink_search(W, bits, group_size, symmetric, grid, max_shrink,
                         lambda D: _group_reduce(D.abs().pow(norm), g, lambda x, d: x.sum(d)))


def rtn_quantize_weight(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                        mse_clip: bool = False) -> QuantizedWeight:
    """RTN on the chosen grid; with *mse_clip*, on the MSE-optimal shrunk grid.

    >>> rtn_quantize_weight(torch.randn(8, 64), 4, 32, True).codes.max() <= 15
    tensor(True)
    """
    shrink = mse_shrink(W, bits, group_size, symmetric) if mse_clip else 1.0
    return quantize_weight(W, bits, group_size, symmetric, shrink=shrink)
