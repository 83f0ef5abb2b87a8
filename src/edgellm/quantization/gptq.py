"""GPTQ (Frantar et al., 2022): quantize a layer's columns one by one, pushing each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's inputs ``H = 2/n·XᵀX``.

``gptq_quantize_weight(W, H, ...)`` is the math (one layer, plain tensors). ``GPTQMethod`` is the
plumbing for ``calibrate.run_blockwise``: Hessians from the block's inputs (shared by linears that
read the same tensor: q/k/v, gate/up, which are then quantized as one stacked matrix, one column
sweep for all: rows are independent in GPTQ), then every selected linear of the block is quantized;
the block's outputs pass runs on the dequantized weights, after which each linear is swapped for a
``QuantizedLinear``, so later blocks calibrate on the quantized model.

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
import dataclasses

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
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)   # Hinv: [in, in], upper Cholesky of H⁻¹
    qmax = 2 ** bits - 1
    with _one_thread():
        Q = _gptq_columns(W.t().contiguous(), Hinv, scale, zero, perm, g, grouped and not static_groups, bits,
                          symmetric, mse_clip, block_size, qmax)
    codes = Q.t()[:, torch.argsort(perm)]
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


def _gptq_columns(Wt, Hinv, scale, zero, perm, g, dynamic_groups, bits, symmetric, mse_clip, block_size, qmax):
    """The GPTQ sweep over ``Wt = Wᵀ [in, out]`` (permuted; column i of W is the contiguous row ``Wt[i]``):
    quantize columns in order, spreading each one's error onto the rest (lazy block updates).

    Per column: ``q = clamp(round(w/s) + z)``, ``e = (w − s(q − z)) / Hinv[i, i]``, then the block's later
    columns take ``− e·Hinv[i, j]``; after a block, one product updates every later column. Grids fixed up
    front are gathered per column once (``S``, ``Z``); *dynamic_groups* fills each group's grid when its
    first column is reached. Returns the codes ``[in, out]`` (permuted order), float.
    """
    K = Wt.shape[0]
    B = max(g, (block_size // g) * g) if dynamic_groups else block_size
    cols = perm // g
    S = scale.t()[cols].contiguous()                    # [in, out]: the grid of each (permuted) column
    Z = zero.t()[cols].float().contiguous()
    Q = torch.empty_like(Wt)
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1, Err1, Hinv1 = Wt[i1:i2], torch.empty_like(Wt[i1:i2]), Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal().tolist()
        for i in range(i2 - i1):
            if dynamic_groups and (i1 + i) % g == 0:
                end = min(i + g, i2 - i1)
                s, z = _qparams(W1[i:end].t(), bits, None, symmetric, mse_clip)
                gi = (i1 + i) // g
                scale[:, gi], zero[:, gi] = s[:, 0], z[:, 0]
                S[i1 + i:i1 + i + end - i], Z[i1 + i:i1 + i + end - i] = s[:, 0], z[:, 0].float()
            w, s, z = W1[i], S[i1 + i], Z[i1 + i]
            q = torch.round(w / s).add_(z).clamp_(0, qmax)
            Q[i1 + i] = q
            err = torch.sub(w, q.sub_(z).mul_(s)).div_(d[i])
            Err1[i] = err
            if i + 1 < i2 - i1:
                W1[i + 1:] -= Hinv1[i, i + 1:].unsqueeze(1) * err.unsqueeze(0)
        Wt[i2:] -= Hinv[i1:i2, i2:].t() @ Err1
    return Q


def row_slice(qw: QuantizedWeight, a: int, b: int) -> QuantizedWeight:
    """Rows ``a:b`` of a packed-weight record (the output channels of one of several stacked linears)."""
    return dataclasses.replace(qw, codes=qw.codes[a:b].contiguous(), scale=qw.scale[a:b].contiguous(),
                               zero=qw.zero[a:b].contiguous())


class GPTQMethod:
    """``run_blockwise`` plug-in: Hessians per linear, then GPTQ and a swap to ``QuantizedLinear``.

    The block forwards run under bf16 autocast (``forward_dtype``: bf16 activations, as the int4
    kernels use, at about 1.6× the fp32 speed on 2 cores). The outputs pass sees each quantized
    linear as a float ``nn.Linear`` holding its dequantized weight; the swap follows it.
    """

    forward_dtype = torch.bfloat16

    def __init__(self, targets: dict, cfg, on_done):
        self.by_id = {id(m): name for name, m in targets.items()}
        self.cfg = cfg
        self.on_done = on_done          # on_done(full_name, block, local_name, QuantizedWeight, linear)
        self.pending: list[tuple] = []
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
        # linears with one Hessian (one input) and one AWQ scale are quantized as one stacked matrix:
        # GPTQ treats rows independently, so this is the per-linear result with one column sweep
        groups: dict[tuple, list[str]] = {}
        for local, (lin, proxy) in stats.items():
            st = proxy.stats
            groups.setdefault((id(st) if st is not None else id(lin), id(applied.get(local))), []).append(local)
        for names in groups.values():
            lins = [stats[n][0] for n in names]
            st = stats[names[0]][1].stats
            st = getattr(st, "hessian", st)
            H = st.H if st is not None else torch.zeros(lins[0].in_features, lins[0].in_features)
            if names[0] in applied:       # inputs are now X·diag(s)⁻¹, so H becomes diag(s)⁻¹ H diag(s)⁻¹
                s = applied[names[0]]
                H = H / (s.view(-1, 1) * s.view(1, -1))
            qw = gptq_quantize_weight(torch.cat([lin.weight for lin in lins]), H, c.bits, c.group_size, c.symmetric,
                                      damp=c.damp, block_size=c.block_size, act_order=c.act_order,
                                      static_groups=c.static_groups, mse_clip=c.mse_clip)
            start = 0
            for name, lin in zip(names, lins):
                part = qw if len(lins) == 1 else row_slice(qw, start, start + lin.out_features)
                start += lin.out_features
                lin.weight.copy_(part.dequantize())
                self.pending.append((self.by_id[id(lin)], block, name, part, lin))
        self.shared.reset()
        if self.awq is not None:
            self.awq.shared.reset()
        return None

    def finish_block(self, index):
        for args in self.pending:
            self.on_done(*args)
        self.pending.clear()
