"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling before quantization.

For linears that read the same input X, a scale ``s = mean|x|^α`` per input channel (normalised
to geometric mean 1) makes salient channels' weights larger before rounding: ``W·diag(s)`` is
quantized and ``X·diag(s)⁻¹`` fed to it, with ``diag(s)⁻¹`` folded into the operation that
produces X (an RMSNorm/LayerNorm's weight and bias, or the rows of a preceding linear; a norm that
scales by ``1 + w``, as Gemma's does (``FamilySpec.norm_offset``), gets ``w ← (1 + w)/s − 1``), so the
float model is unchanged and inference costs nothing extra. α is searched on a grid in [0, 1)
to minimise the output error ``Σ‖X (W − Ŵ)ᵀ‖²``, computed from the covariance of a token
subsample of X (``calibrate.InputSampleStats``). An optional clipping search then shrinks each
group's range to minimise the same output error, group by group (block-diagonal covariance).

Which operation produces which linears' input is model-family data (``FamilySpec.awq_folds`` in
the family registry, read through ``calibrate.current_family()``), checked against shapes;
linears with no foldable producer (e.g. BERT's post-LN q/k/v, GQA o_proj) get only the
clipping search. ``awq_search_scale`` and ``awq_clip`` are the math; ``AWQMethod`` the plumbing.
Deliberately left out: searching on the block's output (we use each linear group's own output).
"""

from __future__ import annotations

import torch
from torch import nn

from ..calibrate import InputSampleStats, SharedInputs, current_family
from .primitives import QuantizedWeight, _group_reduce, choose_qparams, effective_group, fake_quantize, quantize_weight
from .rtn import grouped, shrink_search


def _output_error(dW: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``trace(ΔW C ΔWᵀ)`` = mean output error ‖X ΔWᵀ‖²/n for ``C = XᵀX/n``."""
    return ((dW @ C) * dW).sum()


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
    W, X = W.float(), X.float()
    C = X.t() @ X / max(X.shape[0], 1)
    x_mean = X.abs().mean(0).clamp_min(1e-8)
    g = effective_group(W.shape[1], group_size)
    best = (None, float("inf"))
    base = None
    for i in range(grid):
        alpha = i / grid
        s = x_mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        Ws = W * s
        sc, z = choose_qparams(Ws, bits, group_size, symmetric)
        Wq = fake_quantize(Ws, sc, z, bits, g) / s
        err = _output_error(W - Wq, C).item()
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


def fold_scale(producer: nn.Module, consumers: list[nn.Linear], s: torch.Tensor, norm_offset: float = 0.0) -> None:
    """Divide *producer*'s output channels by *s* and multiply the consumers' input columns by *s*.

    A norm producer that scales by ``norm_offset + w`` gets ``w ← (norm_offset + w)/s − norm_offset``.

    >>> norm, lin = torch.nn.RMSNorm(4), torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     fold_scale(norm, [lin], torch.tensor([1.0, 2.0, 4.0, 0.5]))
    >>> norm.weight.tolist()
    [1.0, 0.5, 0.25, 2.0]
    """
    s = s.to(consumers[0].weight.dtype)
    if isinstance(producer, nn.Linear):
        producer.weight.div_(s.view(-1, 1))
    else:
        producer.weight.add_(norm_offset).div_(s).sub_(norm_offset)
    if getattr(producer, "bias", None) is not None:
        producer.bias.div_(s)
    for lin in consumers:
        lin.weight.mul_(s.view(1, -1))


def _producer_ok(producer: nn.Module | None, consumers: list[nn.Linear]) -> bool:
    if producer is None or not consumers or getattr(producer, "weight", None) is None:
        return False
    k = consumers[0].in_features
    if any(c.in_features != k for c in consumers):
        return False
    if isinstance(producer, nn.Linear):
        return producer.out_features == k
    w = producer.weight
    return w.dim() == 1 and w.numel() == k          # a norm with an elementwise weight


class _Both:
    """Hessian and input sample together (GPTQ with AWQ pre-scaling)."""

    def __init__(self, k, max_rows, seed):
        from ..calibrate import HessianStats

        self.hessian, self.sample = HessianStats(k), InputSampleStats(k, max_rows, seed)

    def add(self, x):
        self.hessian.add(x)
        self.sample.add(x)


class AWQMethod:
    """``run_blockwise`` plug-in: scale search + fold per producer group, clip search, RTN, swap.

    With ``quantize=False`` (GPTQ pre-scaling) it only searches and folds the scales and returns
    them per consumer (``scale_block``), leaving quantization to GPTQ.
    """

    def __init__(self, targets: dict, cfg, on_done, with_hessian: bool = False):
        self.by_id = {id(m): name for name, m in targets.items()}
        self.cfg, self.on_done = cfg, on_done
        make = (lambda k: _Both(k, cfg.awq_tokens, cfg.calib.seed)) if with_hessian else \
            (lambda k: InputSampleStats(k, cfg.awq_tokens, cfg.calib.seed))
        self.shared = SharedInputs(make)
        self.log: list[dict] = []

    def new_stats(self, name, linear):
        if id(linear) not in self.by_id:
            return None
        return self.shared.proxy(linear.in_features)

    @staticmethod
    def sample_of(proxy) -> torch.Tensor:
        st = proxy.stats
        return st.sample.x if isinstance(st, _Both) else st.x

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
            if not _producer_ok(producer, consumers):
                continue
            X = self.sample_of(stats[names[0]][1])
            W = torch.cat([lin.weight for lin in consumers])
            s, err, base = awq_search_scale(W, X, c.bits, c.group_size, c.symmetric, c.awq_grid)
            fold_scale(producer, consumers, s, family.norm_offset)
            self.log.append({"block": index, "producer": prod_name, "consumers": names, "error": err, "rtn_error": base})
            for n in names:
                applied[n] = s
        return applied

    def apply_block(self, index, block, stats, block_inputs):
        c = self.cfg
        applied = self.scale_block(index, block, stats)
        for local, (lin, proxy) in stats.items():
            X = self.sample_of(proxy)
            if local in applied:
                X = X / applied[local]
            W = lin.weight.detach()
            shrink = awq_clip(W, X, c.bits, c.group_size, c.symmetric) if c.clip_search else 1.0
            qw: QuantizedWeight = quantize_weight(W, c.bits, c.group_size, c.symmetric, shrink=shrink)
            self.on_done(self.by_id[id(lin)], block, local, qw, lin)
        self.shared.reset()
        return None


__all__ = ["AWQMethod", "awq_search_scale", "awq_clip", "fold_scale", "_group_reduce"]
