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


def mse_shrink(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, grid: int = 20,
               max_shrink: float = 0.25, norm: float = 2.4) -> torch.Tensor:
    """Per-group range shrink factor ``[out, n_groups]`` minimising the weight error ``Σ|w − Q(w)|^norm``.

    >>> mse_shrink(torch.randn(4, 64), 3, 32, False).shape
    torch.Size([4, 2])
    """
    W = W.float()
    if group_size == -1:
        return torch.ones(W.shape[0], 1)
    g = effective_group(W.shape[1], group_size)
    best_err, best = None, None
    for i in range(grid + 1):
        r = 1.0 - max_shrink * i / grid
        s, z = choose_qparams(W, bits, group_size, symmetric, shrink=r)
        err = _group_reduce((fake_quantize(W, s, z, bits, g) - W).abs().pow(norm), g, lambda x, d: x.sum(d))
        if best_err is None:
            best_err, best = err, torch.full_like(err, r)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, r), best)
    return best


def rtn_quantize_weight(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                        mse_clip: bool = False) -> QuantizedWeight:
    """RTN on the chosen grid; with *mse_clip*, on the MSE-optimal shrunk grid.

    >>> rtn_quantize_weight(torch.randn(8, 64), 4, 32, True).codes.max() <= 15
    tensor(True)
    """
    shrink = mse_shrink(W, bits, group_size, symmetric) if mse_clip else 1.0
    return quantize_weight(W, bits, group_size, symmetric, shrink=shrink)
