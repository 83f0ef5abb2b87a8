"""Structured pruning that physically removes parameters, so the result is a smaller, standard
HF model that loads with ``from_pretrained``.

Three kinds, each removed uniformly per layer so the config stays a standard one:

* **depth**: whole decoder layers, ranked by the angular distance between a block's input and
  output on calibration data (``arccos(cos)/π``, averaged over tokens; a block that barely turns
  the residual stream is the cheapest to drop). ``remove_layers`` is the one layer-dropping
  primitive (distillation builds its students with it).
* **width**: MLP intermediate channels, scored Wanda-style ``‖X_j‖₂ · ‖W_down[:, j]‖₂`` with X the
  input of ``down_proj`` (or weight norms only for ``method="magnitude"``).
* **heads**: attention query heads, GQA-aware: the same number of query heads is removed from
  every key/value group, so ``num_key_value_heads`` and the head size stay as they are (for plain
  multi-head attention, a head and its key/value head go together). Score: the same Wanda-style
  product on the ``o_proj`` input, summed over the head's channels.

All scores come from one calibration pass over the dense model (``run_blockwise`` from
``calibrate.py``). Which families qualify (``FamilySpec.structured``) and where each block keeps
its attention, MLP and q/k/v/o, gate/up/down projections come from the family registry
(``families.py``); no attribute path is spelled here. Deliberately absent: iterative re-scoring after each removal, non-uniform
per-layer widths, and any recovery training (that is distillation's job).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..calibrate import InputNormStats, find_blocks, run_blockwise
from ..errors import EdgeLLMError
from ..families import FamilySpec, get_path, projection, require, set_path


def check_supported(model: nn.Module) -> FamilySpec:
    """The model's family; raises for one that structured pruning does not support, listing those that are.

    >>> check_supported(load("smollm2-135m").model).attention       # doctest: +SKIP
    'self_attn'
    """
    return require(model, "structured", "structured pruning")


def remove_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """Remove the blocks at indices *drop* in place and fix the config; returns the model.

    >>> remove_layers(model, [3, 7]).config.num_hidden_layers     # doctest: +SKIP
    28
    """
    path, blocks = find_blocks(model)
    n = len(blocks)
    drop = sorted(set(int(i) for i in drop))
    if any(i < 0 or i >= n for i in drop):
        raise EdgeLLMError(f"layer indices {drop} out of range for a {n}-layer model", f"use indices 0..{n - 1}")
    if len(drop) >= n:
        raise EdgeLLMError(f"removing {len(drop)} of {n} layers would leave none", "keep at least one layer")
    keep = [b for i, b in enumerate(blocks) if i not in drop]
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    setattr(parent, path.rsplit(".", 1)[-1], nn.ModuleList(keep))
    for new_idx, block in enumerate(keep):  # attention modules index their KV-cache slot by layer_idx
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
    return model


# -- scores ----------------------------------------------------------------------------------------

def angular_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``arccos(cos(x_t, y_t)) / π``; x, y: [..., hidden].

    >>> float(angular_distance(torch.tensor([[1., 0.]]), torch.tensor([[0., 1.]])))
    0.5
    """
    cos = nn.functional.cosine_similarity(x.float().reshape(-1, x.shape[-1]), y.float().reshape(-1, y.shape[-1]), dim=-1)
    return (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean()


def channel_scores(block: nn.Module, spec: FamilySpec, act_norm: torch.Tensor | None) -> torch.Tensor:
    """Importance of each MLP intermediate channel: ``‖X_j‖₂ · ‖W_down[:, j]‖₂`` ([intermediate]).

    Without activations (``act_norm=None``): ``‖W_gate[j]‖ · ‖W_up[j]‖ · ‖W_down[:, j]‖``.
    """
    w = lambda role: projection(block, spec, role).weight.float()  # noqa: E731
    down = w("down").norm(dim=0)  # W_down: [hidden, intermediate]
    if act_norm is not None:
        return act_norm.float() * down
    return w("gate").norm(dim=1) * w("up").norm(dim=1) * down


def head_scores(block: nn.Module, spec: FamilySpec, act_norm: torch.Tensor | None) -> torch.Tensor:
    """Importance of each query head ([num_heads]) from the output-projection columns that read it."""
    col = projection(block, spec, "o").weight.float().norm(dim=0)  # W_o: [hidden, heads·head_dim]
    col = col * (act_norm.float() if act_norm is not None else projection(block, spec, "q").weight.float().norm(dim=1))
    return col.view(-1, _head_dim(block, spec)).sum(1)


class StructureScores:
    """A ``run_blockwise`` method that changes nothing and records layer, channel and head scores."""

    def __init__(self, spec: FamilySpec, mlp: bool, heads: bool):
        self.spec, self.want_mlp, self.want_heads = spec, mlp, heads
        self.layer: list[float] = []
        self.channels: list[torch.Tensor] = []
        self.heads: list[torch.Tensor] = []

    def new_stats(self, name: str, linear: nn.Linear):
        if (self.want_mlp and name == self.spec.down) or (self.want_heads and name == self.spec.o):
            return InputNormStats(linear.in_features, device=linear.weight.device)
        return None

    @torch.no_grad()
    def apply_block(self, index, block, stats, block_inputs):
        outs = block_inputs.run(block)
        d = torch.stack([angular_distance(h, o) for h, o in zip(block_inputs.hidden, outs)])
        self.layer.append(float(d.mean()))
        if self.want_mlp:
            self.channels.append(channel_scores(block, self.spec, stats[self.spec.down][1].l2))
        if self.want_heads:
            self.heads.append(head_scores(block, self.spec, stats[self.spec.o][1].l2))
        return outs  # unchanged block: the runner reuses these as the next block's inputs


def score_structure(model: nn.Module, calib: torch.Tensor | None, mlp: bool = True, heads: bool = True,
                    progress: bool = True) -> StructureScores:
    """Layer, channel and head scores in one calibration pass (weight norms only when *calib* is None).

    >>> s = score_structure(model, calib_ids)                # doctest: +SKIP
    >>> sorted(range(len(s.layer)), key=s.layer.__getitem__)[:3]   # the three cheapest layers  # doctest: +SKIP
    """
    spec = check_supported(model)
    scores = StructureScores(spec, mlp, heads)
    if calib is not None:
        run_blockwise(model, calib, scores, progress=progress, desc="score")
        return scores
    for block in find_blocks(model)[1]:
        if mlp:
            scores.channels.append(channel_scores(block, spec, None))
        if heads:
            scores.heads.append(head_scores(block, spec, None))
    return scores


def _head_dim(block: nn.Module, spec: FamilySpec) -> int:
    return int(get_path(block, spec.attention).head_dim)


def _slice(block: nn.Module, spec: FamilySpec, role: str, rows=None, cols=None) -> nn.Linear:
    """Replace the block's *role* projection by its rows/columns slice; returns the new linear."""
    new = _sliced_linear(projection(block, spec, role), rows=rows, cols=cols)
    set_path(block, spec.role(role), new)
    return new


# -- how many units a ratio or budget means --------------------------------------------------------

def units_to_remove(total: int, ratio: float | None, excess: float | None, unit_size: float, what: str,
                    step: int = 1) -> int:
    """Units (of *total*) to remove: ``round(ratio·total)``, or the fewest whose size covers *excess*.

    *step* is the granularity (heads come off in multiples of the number of KV groups).
    """
    if ratio is not None:
        k = int(round(ratio * total / step)) * step
        if k == 0:
            raise EdgeLLMError(f"ratio {ratio} removes no {what} (there are {total})", "use a larger ratio")
    else:
        k = 0 if excess <= 0 else int(math.ceil(excess / (unit_size * step) - 1e-9)) * step
    if k >= total:
        raise EdgeLLMError(f"this target would remove all {total} {what}", "use a smaller ratio or a larger budget")
    return k


# -- the removals ----------------------------------------------------------------------------------

def _sliced_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    W = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        W = W[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        W = W[:, cols]
    new = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, device=W.device, dtype=W.dtype)
    new.weight.data.copy_(W)
    if b is not None:
        new.bias.data.copy_(b)
    return new


@torch.no_grad()
def remove_channels(model: nn.Module, scores: list[torch.Tensor], k: int) -> dict[int, list[int]]:
    """Remove the *k* lowest-scoring MLP channels of every layer; returns layer -> removed channels."""
    spec = check_supported(model)
    removed = {}
    for i, block in enumerate(find_blocks(model)[1]):
        drop = torch.topk(scores[i], k, largest=False).indices.sort().values
        keep = torch.ones(scores[i].numel(), dtype=torch.bool)
        keep[drop] = False
        idx = keep.nonzero().flatten()
        for role in ("gate", "up"):
            _slice(block, spec, role, rows=idx)
        _slice(block, spec, "down", cols=idx)
        mlp = get_path(block, spec.mlp)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = idx.numel()
        removed[i] = drop.tolist()
    model.config.intermediate_size = model.config.intermediate_size - k
    return removed


@torch.no_grad()
def remove_heads(model: nn.Module, scores: list[torch.Tensor], per_group: int) -> dict[int, list[int]]:
    """Remove *per_group* query heads from every KV group of every layer (GQA-aware).

    For multi-head attention (one query head per KV head) whole heads go, key/value included,
    and *per_group* counts heads. Returns layer -> removed query-head indices.
    """
    spec = check_supported(model)
    cfg = model.config
    H, G = cfg.num_attention_heads, cfg.num_key_value_heads
    gs = H // G
    removed = {}
    for i, block in enumerate(find_blocks(model)[1]):
        attn = get_path(block, spec.attention)
        hd = _head_dim(block, spec)
        s = scores[i]
        if gs > 1:   # drop the weakest per_group heads inside each group; keep every KV head
            drop = [g * gs + int(j) for g in range(G)
                    for j in torch.topk(s[g * gs:(g + 1) * gs], per_group, largest=False).indices.sort().values]
        else:        # MHA: a head is its own group
            drop = torch.topk(s, per_group, largest=False).indices.sort().values.tolist()
        keep_heads = [h for h in range(H) if h not in set(drop)]
        ch = torch.tensor([h * hd + c for h in keep_heads for c in range(hd)])
        _slice(block, spec, "q", rows=ch)
        _slice(block, spec, "o", cols=ch)
        if gs == 1:
            _slice(block, spec, "k", rows=ch)
            _slice(block, spec, "v", rows=ch)
        attn.num_key_value_groups = gs - per_group if gs > 1 else 1
        for name in ("num_heads", "num_attention_heads"):
            if hasattr(attn, name):
                setattr(attn, name, len(keep_heads))
        if gs == 1 and hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = len(keep_heads)
        removed[i] = sorted(drop)
    head_dim = _head_dim(find_blocks(model)[1][0], spec)
    cfg.head_dim = head_dim  # no longer hidden_size // num_attention_heads
    cfg.num_attention_heads = H - (per_group * G if gs > 1 else per_group)
    if gs == 1:
        cfg.num_key_value_heads = cfg.num_attention_heads
    return removed
