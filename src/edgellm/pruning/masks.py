"""Pruning masks from importance scores: per-matrix, per-row and N:M, plus mask checks.

A mask is a bool tensor shaped like the weight, **True where the weight is kept**. Every
function picks exactly ``round(sparsity · count)`` weights to drop in its unit (matrix, row,
or M-wide group), breaking ties by position, so the achieved sparsity is exact.
Deliberately absent: any model walking (see ``magnitude.py``, ``wanda.py``, ``sparsegpt.py``).
"""

from __future__ import annotations

import torch

from ..errors import EdgeLLMError


def n_pruned(count: int, sparsity: float) -> int:
    """How many of *count* weights a *sparsity* prunes (rounded to the nearest integer).

    >>> n_pruned(10, 0.25)
    2
    """
    return int(round(count * float(sparsity)))


def check_nm_divides(shape, m: int, name: str = "weight") -> None:
    """Raise when an N:M pattern's M does not divide the input dimension of a ``[out, in]`` weight."""
    cols = shape[-1]
    if cols % m:
        raise EdgeLLMError(f"pattern with M={m} does not divide the input dimension {cols} of {name}",
                           f"use an M that divides {cols}, or exclude {name}")


def mask_lowest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask dropping the ``round(sparsity·numel)`` lowest *scores* of the whole matrix.

    >>> mask_lowest(torch.tensor([[1., 4.], [3., 2.]]), 0.5).tolist()
    [[False, True], [True, False]]
    """
    k = n_pruned(scores.numel(), sparsity)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        keep[torch.topk(scores.flatten(), k, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


def mask_lowest_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask dropping the ``round(sparsity·cols)`` lowest scores of every row (Wanda's comparison group).

    >>> mask_lowest_per_row(torch.tensor([[1., 4.], [3., 2.]]), 0.5).tolist()
    [[False, True], [True, False]]
    """
    k = n_pruned(scores.shape[-1], sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep.scatter_(-1, torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices, False)
    return keep


def mask_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the N highest scores of every M consecutive input weights of each row.

    >>> mask_nm(torch.tensor([[1., 4., 3., 2.]]), 2, 4).tolist()
    [[False, True, True, False]]
    """
    check_nm_divides(scores.shape, m)
    groups = scores.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return keep.view_as(scores)


def mask_from_scores(scores: torch.Tensor, sparsity: float, n: int = 0, m: int = 0, per_row: bool = False) -> torch.Tensor:
    """N:M when ``n`` is set, else per-row or whole-matrix unstructured."""
    if n:
        return mask_nm(scores, n, m)
    return mask_lowest_per_row(scores, sparsity) if per_row else mask_lowest(scores, sparsity)


def sparsity_of(t: torch.Tensor) -> float:
    """Fraction of exact zeros in *t*."""
    return float((t == 0).sum()) / max(t.numel(), 1)


def is_nm(t: torch.Tensor, n: int, m: int) -> bool:
    """True when every M consecutive entries of each row of *t* hold at most N non-zeros."""
    if t.shape[-1] % m:
        return False
    return bool(((t != 0).reshape(-1, m).sum(1) <= n).all())
