"""Magnitude pruning (the no-data baseline) and the choice of which linears get pruned.

``magnitude_mask(W, sparsity, n, m)`` drops the smallest |W| of the whole matrix (or of every
M-wide group for N:M). ``target_linears`` walks the repeated blocks and applies the config's
include/exclude patterns; embeddings and the LM head are never pruned (they sit outside the
blocks, and the LM head is usually tied to the embedding).
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from ..calibrate import find_blocks, find_linears
from .config import PruneConfig
from .masks import check_nm_divides, mask_from_scores


def magnitude_mask(W: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """Keep-mask of the largest |W|: whole-matrix unstructured, or N:M along the input dimension.

    >>> magnitude_mask(torch.tensor([[1., -4.], [3., 2.]]), 0.5).tolist()
    [[False, True], [True, False]]
    """
    return mask_from_scores(W.abs().float(), sparsity, n, m)  # W: [out, in]


def selected(name: str, cfg: PruneConfig) -> bool:
    """Whether the linear with full dotted *name* is pruned under *cfg*'s include/exclude patterns."""
    if cfg.include and not any(fnmatch(name, p) for p in cfg.include):
        return False
    return not any(fnmatch(name, p) for p in cfg.exclude)


def target_linears(model: nn.Module, cfg: PruneConfig) -> dict[str, nn.Linear]:
    """Full dotted name -> Linear for every linear inside the blocks that *cfg* selects.

    Checks an N:M pattern against every selected shape first, so a bad pattern fails before
    any weight changes.
    """
    path, blocks = find_blocks(model)
    out = {}
    for i, block in enumerate(blocks):
        for name, lin in find_linears(block).items():
            full = f"{path}.{i}.{name}"
            if selected(full, cfg):
                out[full] = lin
    if cfg.nm:
        for full, lin in out.items():
            check_nm_divides(lin.weight.shape, cfg.nm[1], full)
    return out


@torch.no_grad()
def prune_magnitude(model: nn.Module, cfg: PruneConfig) -> dict[str, float]:
    """Zero the smallest weights of every selected linear in place; returns name -> achieved sparsity."""
    n, m = cfg.nm or (0, 0)
    done = {}
    for full, lin in target_linears(model, cfg).items():
        keep = magnitude_mask(lin.weight, cfg.effective_sparsity, n, m)
        lin.weight.mul_(keep)
        done[full] = 1.0 - float(keep.float().mean())
    return done


class CalibratedPruner:
    """Shared ``run_blockwise`` plumbing of Wanda and SparseGPT: which linears are observed (the
    include/exclude selection, N:M divisibility), with which statistics class (``STATS``), and the
    per-block loop; a subclass supplies ``prune(linear, stats, n, m) -> keep-mask``, which sets the
    linear's new weights in place."""

    STATS: type

    def __init__(self, cfg, block_path: str):
        self.cfg, self.path, self.block = cfg, block_path, 0
        self.sequential = cfg.sequential      # read by run_blockwise
        self.achieved: dict[str, float] = {}

    def start_block(self, index: int) -> None:
        self.block = index

    def new_stats(self, name: str, linear):
        full = f"{self.path}.{self.block}.{name}"
        if not selected(full, self.cfg):
            return None
        if self.cfg.nm:
            check_nm_divides(linear.weight.shape, self.cfg.nm[1], full)
        return self.STATS(linear.in_features, device=linear.weight.device)

    def prune(self, lin: nn.Linear, acc, n: int, m: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def apply_block(self, index, block, stats, block_inputs):
        n, m = self.cfg.nm or (0, 0)
        for name, (lin, acc) in stats.items():
            keep = self.prune(lin, acc, n, m)
            self.achieved[f"{self.path}.{index}.{name}"] = 1.0 - float(keep.float().mean())
        return None
