"""GPTQ (Frantar et al., 2022): quantize a layer's columns one by one, pushing each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's inputs ``H = 2/n·XᵀX``.

``gptq_quantize_weight(W, H, ...)`` is the math (one layer, plain tensors). ``GPTQMethod`` is the
plumbing for ``calibrate.run_blockwise``: Hessians from the block's inputs (shared by linears that
read the same tensor: q/k/v, gate/up), then every selected linear of the block is quantized and
swapped for a ``QuantizedLinear``, so later blocks calibrate on the quantized model.

Details: dead inputs (``H_jj = 0``) are zeroed; dampening adds ``damp·mean(diag H)`` to the
diagonal; lazy batch updates in blocks of ``block_size`` columns (rounded to a multiple of the
group size, so a group never straddles two blocks); qparams of a group are chosen when its
first column is reached, from the error-updated weights. With ``act_order`` columns go by
decreasing ``diag(H)``; per-group grids then need ``static_groups`` (qparams fixed up front from
the original weights) so groups stay contiguous in the packed format.
Deliberately left out: per-linear "true sequential" re-runs inside a block.
"""

from __future__ import annotations

import contextlib

import torch

from ..calibrate import HessianStats, SharedInputs
from .primitives import QuantizedWeight, choose_qparams, effective_group, make_quantized_weight, n_groups
from .rtn import mse_shrink


def _qparams(W, bits, group_size, symmetric, mse_clip):
    shrink = mse_shrink(W, bits, group_size, symmetric) if mse_clip else 1.0
    return choose_qparams(W, bits, group_size, symmetric, shrink)


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                         damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                         static_groups: bool = False, mse_clip: bool = False) -> QuantizedWeight:
    """GPTQ-quantize ``W [out, in]`` given ``H [in, in]``; returns the packed-weight record.

    >>> X = torch.randn(256, 64); qw = gptq_quantize_weight(torch.randn(32, 64), 2 * X.T @ X / 256, 4, 32, True)
    >>> qw.codes.shape
    torch.Size([32, 64])
    """
    W = W.detach().float().clone()                       # W: [out, in]
    out_f, K = W.shape
    H = H.detach().float().clone()                       # H: [in, in]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    g = effective_group(K, group_size)
    grouped = group_size not in (None, -1) and g < K
    if act_order and grouped and not static_groups:
        raise ValueError("act_order with per-group grids needs static_groups")
    # per-channel / per-tensor grids (and static groups) are fixed up front, from the original weights
    scale = torch.empty(out_f, n_groups(K, g))
    zero = torch.empty(out_f, n_groups(K, g), dtype=torch.int32)
    if not grouped or static_groups:
        scale, zero = _qparams(W, bits, group_size, symmetric, mse_clip)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)   # Hinv: [in, in], upper Cholesky of H⁻¹
    codes = torch.zeros(out_f, K, dtype=torch.int32)
    qmax = 2 ** bits - 1
    with _one_thread():
        _gptq_columns(W, Hinv, codes, scale, zero, perm, g, grouped, static_groups, bits, symmetric, mse_clip,
                      block_size, qmax)
    inv = torch.argsort(perm)
    codes = codes[:, inv]
    return make_quantized_weight(W, codes, scale, zero, bits, group_size, symmetric)


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of small ops: on a busy 2-core machine, OpenMP's barriers made it
    8× slower with 2 threads than with 1 (43 s vs 5.5 s for a 1536×576 layer), so it runs on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _gptq_columns(W, Hinv, codes, scale, zero, perm, g, grouped, static_groups, bits, symmetric, mse_clip,
                  block_size, qmax):
    """The GPTQ sweep: quantize columns in order, spreading each column's error (lazy block updates)."""
    K = W.shape[1]
    B = max(g, (block_size // g) * g) if grouped else block_size
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            gi = col // g
            if grouped and not static_groups and col % g == 0:
                end = min(i + g, i2 - i1)
                s, z = _qparams(W1[:, i:end], bits, None, symmetric, mse_clip)
                scale[:, gi], zero[:, gi] = s[:, 0], z[:, 0]
            w = W1[:, i]
            s, z = scale[:, gi], zero[:, gi].float()
            q = (torch.round(w / s) + z).clamp_(0, qmax)
            codes[:, i1 + i] = q.to(torch.int32)
            err = (w - s * (q - z)) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]


class GPTQMethod:
    """``run_blockwise`` plug-in: Hessians per linear, then GPTQ and a swap to ``QuantizedLinear``."""

    def __init__(self, targets: dict, cfg, on_done):
        self.by_id = {id(m): name for name, m in targets.items()}
        self.cfg = cfg
        self.on_done = on_done          # on_done(full_name, block, local_name, QuantizedWeight, linear)
        self.shared = SharedInputs(lambda k: HessianStats(k))
        self.awq = None
        if cfg.awq_prescale:       # AWQ's scale search and fold first; its stats carry the Hessian too
            from .awq import AWQMethod

            self.awq = AWQMethod(targets, cfg, None, with_hessian=True)

    def new_stats(self, name, linear):
        if self.awq is not None:
            return self.awq.new_stats(name, linear)
        if id(linear) not in self.by_id:
            return None
        return self.shared.proxy(linear.in_features)

    def apply_block(self, index, block, stats, block_inputs):
        c = self.cfg
        applied = self.awq.scale_block(index, block, stats) if self.awq is not None else {}
        for local, (lin, proxy) in stats.items():
            st = proxy.stats
            st = getattr(st, "hessian", st)
            H = st.H if st is not None else torch.zeros(lin.in_features, lin.in_features)
            if local in applied:          # inputs are now X·diag(s)⁻¹, so H becomes diag(s)⁻¹ H diag(s)⁻¹
                s = applied[local]
                H = H / (s.view(-1, 1) * s.view(1, -1))
            qw = gptq_quantize_weight(lin.weight, H, c.bits, c.group_size, c.symmetric, damp=c.damp,
                                      block_size=c.block_size, act_order=c.act_order, static_groups=c.static_groups,
                                      mse_clip=c.mse_clip)
            self.on_done(self.by_id[id(lin)], block, local, qw, lin)
        self.shared.reset()
        if self.awq is not None:
            self.awq.shared.reset()
        return None
