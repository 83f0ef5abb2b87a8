"""Wanda (Sun et al., 2023): prune by |W_ij| · ‖X_j‖₂, compared within each output row.

The score needs only the L2 norm of each input channel over the calibration tokens
(``InputNormStats`` from the shared runner); no weight update follows. Blocks are pruned in
order, and each later block calibrates on the already-pruned model's activations (the runner
does this). Deliberately absent: Wanda's optional per-layer sparsity search.
"""

from __future__ import annotations

import torch

from ..calibrate import InputNormStats
from .magnitude import CalibratedPruner
from .masks import mask_from_scores


def wanda_score(W: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| · ‖X_j‖₂``; W: [out, in], act_norm: [in].

    >>> wanda_score(torch.tensor([[1., -2.]]), torch.tensor([3., 1.])).tolist()
    [[3.0, 2.0]]
    """
    return W.abs().float() * act_norm.float().view(1, -1)


def wanda_mask(W: torch.Tensor, act_norm: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """Keep-mask: the lowest-scoring ``sparsity`` of every output row, or the top N of every M inputs.

    >>> wanda_mask(torch.tensor([[1., -2.], [4., 1.]]), torch.tensor([3., 1.]), 0.5).tolist()
    [[True, False], [True, False]]
    """
    return mask_from_scores(wanda_score(W, act_norm), sparsity, n, m, per_row=True)


class WandaMethod(CalibratedPruner):
    """Plugs Wanda into ``run_blockwise``: collects ‖X_j‖₂ per linear, then masks the block."""

    STATS = InputNormStats

    def prune(self, lin, acc, n, m):
        keep = wanda_mask(lin.weight, acc.l2, self.cfg.effective_sparsity, n, m)
        lin.weight.mul_(keep)
        return keep
