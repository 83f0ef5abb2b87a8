"""SparseGPT (Frantar & Alistarh, 2023): prune with second-order weight reconstruction.

For each linear, ``H = 2/n · Σ xᵀx`` over the calibration inputs (``HessianStats`` from the
shared runner). Columns are visited left to right in blocks of ``blocksize``; in each block the
mask is chosen adaptively by ``w² / [H⁻¹]_jj²`` (or per M-group for N:M), and pruning column j's
weights is compensated on the not-yet-visited columns through the upper Cholesky factor of H⁻¹,
exactly as in the paper's reference code. Deliberately absent: joint quantization (GPTQ is the
quantization issue's job) and the paper's per-layer sparsity schedules.
"""

from __future__ import annotations

import torch

from ..calibrate import HessianStats
from ..errors import EdgeLLMError
from .magnitude import CalibratedPruner
from .masks import check_nm_divides, n_pruned


def inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with ``λ = damp · mean(diag H)``; H: [in, in]."""
    H = H.clone().double()
    lam = damp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0])
    H[idx, idx] += lam if lam > 0 else 1e-8
    for attempt in range(6):
        L, info = torch.linalg.cholesky_ex(H)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                return U.float()
        H[idx, idx] += max(float(lam), 1e-6) * 10 ** attempt  # not positive definite yet: damp more
    raise EdgeLLMError("the calibration Hessian is not positive definite even after dampening",
                       "use more calibration samples or a larger damp")


@torch.no_grad()
def sparsegpt_prune_weight(W: torch.Tensor, H: torch.Tensor, sparsity: float, n: int = 0, m: int = 0,
                           blocksize: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned weight, keep-mask) for ``W: [out, in]`` and ``H: [in, in]``.

    >>> Wp, keep = sparsegpt_prune_weight(W, hessian.H, 0.5)       # doctest: +SKIP
    """
    W = W.detach().clone().float()
    rows, cols = W.shape
    if n:
        check_nm_divides(W.shape, m)
        blocksize = max(m, blocksize - blocksize % m)  # N:M groups must not straddle blocks
    H = H.clone().float()
    dead = torch.diag(H) == 0  # inputs that were always zero carry no information
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hinv = inverse_hessian_factor(H, damp)  # upper factor U, H⁻¹ = UᵀU
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        if not n:
            k = n_pruned(W1.numel(), sparsity)
            if k:
                score = (W1 ** 2 / d.view(1, -1) ** 2).flatten()
                prune1.view(-1)[torch.topk(score, k, largest=False, sorted=False).indices] = True
        for i in range(count):
            w = W1[:, i]
            if n and i % m == 0:
                score = W1[:, i:i + m] ** 2 / d[i:i + m].view(1, -1) ** 2
                prune1.scatter_(1, i + torch.topk(score, m - n, dim=1, largest=False).indices, True)
            q = w.clone()
            q[prune1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~prune1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[~keep] = 0.0
    return W, keep


class SparseGPTMethod(CalibratedPruner):
    """Plugs SparseGPT into ``run_blockwise``: accumulates H per linear, then prunes and updates W."""

    STATS = HessianStats

    def prune(self, lin, acc, n, m):
        Wp, keep = sparsegpt_prune_weight(lin.weight, acc.H, self.cfg.effective_sparsity, n, m,
                                          self.cfg.blocksize, self.cfg.damp)
        lin.weight.copy_(Wp.to(lin.weight.dtype))
        acc.H = None  # free the Hessian now
        return keep
