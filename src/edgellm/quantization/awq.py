"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling before quantization.

For linears that read the same input X, a scale ``s = mean|x|^α`` per input channel (normalised
to geometric mean 1) makes salient channels' weights larger before rounding: ``W·diag(s)`` is
quantized and ``X·diag(s)⁻¹`` fed to it, with ``diag(s)⁻¹`` folded into the operation that
produces X (an RMSNorm/LayerNorm's weight and bias, or the rows of a preceding linear; a norm that
scales by ``1 + w``, as Gemma's does (``FamilySpec.norm_offset``), gets ``w ← (1 + w)/s − 1``), so the
float model is unchanged and inference costs nothing extra. α is searched on a grid in [0, 1)
to minimise the output error ``Σ‖X (W − Ŵ)ᵀ‖²``, computed from the covariance of a token
subsample of X (``calibrate.InputSampleStats``), or, before GPTQ, from the Hessian GPTQ accumulates
anyway (every token; ``H/2 = XᵀX/n``); only the symmetric covariance's block upper triangle is
multiplied. An optional clipping search then shrinks each group's range to minimise the same
output error, group by group (block-diagonal covariance), all shrink candidates at once.

Which operation produces which linears' input is model-family data (``FamilySpec.awq_folds`` in
the family registry, read through ``calibrate.current_family()``), checked against shapes;
linears with no foldable producer (e.g. BERT's post-LN q/k/v, GQA o_proj) get only the
clipping search. ``awq_search_scale`` and ``awq_clip`` are the math; ``AWQMethod`` the plumbing; the
fold itself is ``transforms.scalefold.fold_scale`` (shared with the GGUF exporter's prescale).
Deliberately left out: searching on the block's output (we use each linear group's own output).
"""

from __future__ import annotations

import torch

from ..calibrate import HessianStats, InputSampleStats, SharedInputs, current_family
from ..transforms.scalefold import can_fold, fold_scale
from .primitives import QuantizedWeight, _group_reduce, choose_qparams, effective_group, quantize_weight
from .rtn import grouped, shrink_search


def _triangle_error(dW: torch.Tensor, Ch: torch.Tensor, edges: list[int]) -> float:
    """``trace(ΔW C ΔWᵀ)`` from the block upper triangle of the symmetric C:
    ``2·Σ_j ⟨ΔW_{:, ≤j} Ch_{≤j, j}, ΔW_j⟩`` where *Ch* is C with its diagonal blocks halved (``_halved_diagonal``). With b column blocks that is
    (b+1)/2b of the full product's work (5/8 at b = 4). The products run in *Ch*'s dtype (bf16 in the
    search: 3× the fp32 speed on 2 cores; its rounding, about 2⁻⁹ per entry, only ranks the α grid)."""
    total = 0.0
    low = dW.to(Ch.dtype)
    for a, b in zip(edges[:-1], edges[1:]):
        total += ((low[:, :b] @ Ch[:b, a:b]).float() * dW[:, a:b]).sum().item()
    return 2.0 * total


def _halved_diagonal(C: torch.Tensor, blocks: int = 4, dtype=torch.bfloat16) -> tuple[torch.Tensor, list[int]]:
    k = C.shape[0]
    edges = sorted({round(k * j / blocks) for j in range(blocks + 1)})
    Ch = C.float().clone()
    for a, b in zip(edges[:-1], edges[1:]):
        Ch[a:b, a:b] *= 0.5
    return Ch.to(dtype), edges


@torch.no_grad()
def awq_search_scale(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                     grid: int = 20) -> tuple[torch.Tensor, float, float]:
    """Best per-input-channel scale for ``W [out, in]`` (stacked consumers) given inputs ``X [n, in]``.

    Returns ``(s, error_with_s, error_without)``; α = 0 (s = 1, plain RTN) is on the grid, so the
    search never increases the output error.

    >>> s, e1, e0 = awq_search_scale(torch.randn(16, 64), torch.randn(128, 64), 4, 32, True)
    >>> e1 <= e0
    True
    """
    X = X.float()
    C = X.t() @ X / max(X.shape[0], 1)
    return awq_search_scale_stats(W, C, X.abs().mean(0), bits, group_size, symmetric, grid)


@torch.no_grad()
def awq_search_scale_stats(W: torch.Tensor, C: torch.Tensor, x_mean: torch.Tensor, bits: int, group_size: int | None,
                           symmetric: bool, grid: int = 20) -> tuple[torch.Tensor, float, float]:
    """``awq_search_scale`` from the input statistics: ``C = XᵀX/n [in, in]`` and ``mean|x| [in]``.

    Each α costs one fake quantization of ``W·diag(s)`` (in its grouped layout) and the output
    error from C's block upper triangle, multiplied in bf16 (``_triangle_error``).

    >>> X = torch.randn(128, 64); C = X.T @ X / 128
    >>> awq_search_scale_stats(torch.randn(16, 64), C, X.abs().mean(0), 4, 32, True)[0].shape
    torch.Size([64])
    """
    W = W.float()
    out, k = W.shape
    x_mean = x_mean.float().clamp_min(1e-8)
    g = effective_group(k, group_size)
    Ch, edges = _halved_diagonal(C.float())
    qmax = 2 ** bits - 1
    best = (None, float("inf"))
    base = None
    for i in range(grid):
        alpha = i / grid
        s = x_mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        Ws = W * s
        sc, z = choose_qparams(Ws, bits, group_size, symmetric)
        S, Z = sc.unsqueeze(-1), z.unsqueeze(-1).float()
        Wg = grouped(Ws, g)
        Wq = (Wg / S).round_().add_(Z).clamp_(0, qmax).sub_(Z).mul_(S).reshape(out, -1)[:, :k] / s
        err = _triangle_error(W - Wq, Ch, edges)
        if i == 0:
            base = err
        if err < best[1]:
            best = (s, err)
    return best[0], best[1], base


@torch.no_grad()
def awq_clip(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
             steps: int = 10, max_shrink: float = 0.5) -> torch.Tensor:
    """Per-row, per-group range shrink ``[out, n_groups]`` minimising each group's output error.

    Uses the block-diagonal part of ``XᵀX/n`` (exact per group, cross-group terms ignored); a
    shrink of 1 (no clipping) is on the grid.
    """
    W, X = W.float(), X.float()
    if group_size == -1:
        return torch.ones(W.shape[0], 1)
    Xg = grouped(X, effective_group(W.shape[1], group_size)).transpose(0, 1)        # [n_groups, n, g]
    C = Xg.transpose(1, 2) @ Xg / max(X.shape[0], 1)                                  # [n_groups, g, g]

    def group_error(D, _rows):          # D: [candidates, rows, n_groups, g]
        return (torch.einsum("crng,ngh->crnh", D, C) * D).sum(-1)

    return shrink_search(W, bits, group_size, symmetric, steps, max_shrink, group_error)


class _Both:
    """GPTQ with AWQ pre-scaling: the Hessian GPTQ needs and each channel's Σ|x|, over every token.

    AWQ's covariance is then ``H/2`` (no token subsample, no second product)."""

    def __init__(self, k):
        self.hessian = HessianStats(k)
        self.abs_sum = torch.zeros(k, dtype=torch.float64)
        self.n = 0

    def add(self, x):
        self.hessian.add(x)
        self.abs_sum += x.abs().sum(0, dtype=torch.float64)
        self.n += x.shape[0]


class AWQMethod:
    """``run_blockwise`` plug-in: scale search + fold per producer group, clip search, RTN, swap.

    With ``quantize=False`` (GPTQ pre-scaling) it only searches and folds the scales and returns
    them per consumer (``scale_block``), leaving quantization to GPTQ.
    """

    def __init__(self, targets: dict, cfg, on_done, with_hessian: bool = False):
        self.by_id = {id(m): name for name, m in targets.items()}
        self.cfg, self.on_done = cfg, on_done
        make = _Both if with_hessian else (lambda k: InputSampleStats(k, cfg.awq_tokens, cfg.calib.seed))
        self.shared = SharedInputs(make)
        self.log: list[dict] = []

    def new_stats(self, name, linear):
        if id(linear) not in self.by_id:
            return None
        return self.shared.proxy(linear.in_features)

    @staticmethod
    def input_stats(proxy) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C = XᵀX/n, mean|x|)`` of a linear's inputs: from the Hessian (with GPTQ) or the token sample."""
        st = proxy.stats
        if isinstance(st, _Both):
            return st.hessian.H / 2, (st.abs_sum / max(st.n, 1)).float()
        X = st.x
        return X.t() @ X / max(X.shape[0], 1), X.abs().mean(0)

    @torch.no_grad()
    def scale_block(self, index, block, stats) -> dict[str, torch.Tensor]:
        """Search and fold scales for every foldable consumer group; returns {local name: s}."""
        c = self.cfg
        applied: dict[str, torch.Tensor] = {}
        family = current_family()
        for prod_name, cons_names in family.awq_folds:
            names = [n for n in cons_names if n in stats and n not in applied]
            if not names:
                continue
            try:
                producer = block.get_submodule(prod_name)
            except AttributeError:
                continue
            consumers = [stats[n][0] for n in names]
            if not can_fold(producer, consumers):
                continue
            C, x_mean = self.input_stats(stats[names[0]][1])
            W = torch.cat([lin.weight for lin in consumers])
            s, err, base = awq_search_scale_stats(W, C, x_mean, c.bits, c.group_size, c.symmetric, c.awq_grid)
            fold_scale(producer, consumers, s, family.norm_offset)
            self.log.append({"block": index, "producer": prod_name, "consumers": names, "error": err, "rtn_error": base})
            for n in names:
                applied[n] = s
        return applied

    def apply_block(self, index, block, stats, block_inputs):
        c = self.cfg
        applied = self.scale_block(index, block, stats)
        for local, (lin, proxy) in stats.items():
            X = proxy.stats.x
            if local in applied:
                X = X / applied[local]
            W = lin.weight.detach()
            shrink = awq_clip(W, X, c.bits, c.group_size, c.symmetric) if c.clip_search else 1.0
            qw: QuantizedWeight = quantize_weight(W, c.bits, c.group_size, c.symmetric, shrink=shrink)
            self.on_done(self.by_id[id(lin)], block, local, qw, lin)
        self.shared.reset()
        return None


__all__ = ["AWQMethod", "awq_search_scale", "awq_clip", "fold_scale", "_group_reduce"]
